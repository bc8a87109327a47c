#pragma once
// Named GPU systems for `moe plan --hardware`, and the step-time estimate made from them: the plan's
// counted FLOPs and bytes over the hardware's GEMM rate and link bandwidths. A first-order model, checked
// against published points in docs/performance.md: compute at a stated fraction of the datasheet's dense
// peak, the all-to-all over NVLink inside a node and InfiniBand between nodes, the gradient reduction as a
// ring over the group's slowest link, one after the other (moe overlaps none of them yet).
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "train/cli/config.h"
#include "train/cli/plan.h"

namespace moe {

struct Hardware {
  std::string name;         // as --hardware names it: "h100-sxm"
  std::string description;
  double bf16_tflops;       // dense peak, no sparsity
  double fp32_tflops;       // plain float32 (moe does not enable TF32)
  double memory_gb;         // 10^9 bytes, as datasheets give it
  double nvlink_gbps;       // GB/s per GPU and direction inside a node
  int gpus_per_node;
  double network_gbps;      // GB/s per GPU and direction between nodes (one NIC a GPU)
  std::string source;
};

// The table: h100-sxm, h200, a100-sxm.
const std::vector<Hardware>& hardware_table();
// By name; an unknown name is bad input naming the known ones.
const Hardware& find_hardware(const std::string& name);

struct StepEstimate {
  double tokens_per_rank = 0;  // per optimizer step
  double compute_s = 0;        // model FLOPs and recomputation at gemm_efficiency x peak
  double a2a_s = 0;
  double grad_sync_s = 0;
  double step_s = 0;
  double tokens_per_s = 0;     // the whole job's
  double mfu = 0;              // model FLOPs over step time and the dtype's peak
  double a2a_share = 0;        // a2a_s / step_s
  bool a2a_inside_node = true;
  bool fits = true;            // the plan's memory per rank within the GPU's
};

// `gemm_efficiency`: the fraction of the dense peak the GEMMs are taken to reach (0, 1].
StepEstimate estimate_step(const Config& config, int world_size, const Plan& plan, const Hardware& hardware,
                           double gemm_efficiency);
nlohmann::json to_json(const StepEstimate& estimate, const Hardware& hardware, double gemm_efficiency);
std::string describe(const StepEstimate& estimate, const Hardware& hardware, double gemm_efficiency, int world_size);

}  // namespace moe
