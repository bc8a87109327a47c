#include "train/cli/hardware.h"

#include <algorithm>
#include <cstdio>

#include "core/check.h"

namespace moe {

const std::vector<Hardware>& hardware_table() {
  // Unidirectional bandwidths: NVLink's datasheet figure is both directions together; InfiniBand's is the
  // link rate of the one NIC each GPU has in NVIDIA's HGX/DGX systems.
  static const std::vector<Hardware> table = {
      {"h100-sxm", "NVIDIA H100 SXM5 80GB, 8 per node, NVLink 4, 400 Gb/s InfiniBand NDR per GPU", 989, 67, 80, 450, 8,
       50, "NVIDIA H100 Tensor Core GPU datasheet (BF16 dense 989 TFLOPS, FP32 67 TFLOPS, NVLink 900 GB/s); DGX H100 "
       "user guide (8 x ConnectX-7 400 Gb/s)"},
      {"h200", "NVIDIA H200 SXM 141GB, 8 per node, NVLink 4, 400 Gb/s InfiniBand NDR per GPU", 989, 67, 141, 450, 8, 50,
       "NVIDIA H200 Tensor Core GPU datasheet (BF16 dense 989 TFLOPS, FP32 67 TFLOPS, 141 GB, NVLink 900 GB/s); "
       "HGX H200 with 8 x 400 Gb/s NDR"},
      {"a100-sxm", "NVIDIA A100 SXM4 80GB, 8 per node, NVLink 3, 200 Gb/s InfiniBand HDR per GPU", 312, 19.5, 80, 300, 8,
       25, "NVIDIA A100 Tensor Core GPU datasheet (BF16 dense 312 TFLOPS, FP32 19.5 TFLOPS, NVLink 600 GB/s); DGX "
       "A100 user guide (8 x ConnectX-6 200 Gb/s)"},
  };
  return table;
}

const Hardware& find_hardware(const std::string& name) {
  std::string known;
  for (const Hardware& h : hardware_table()) {
    if (h.name == name) return h;
    known += (known.empty() ? "" : ", ") + h.name;
  }
  throw Error("--hardware " + name + ": not a known system (" + known + ")", /*bad_input=*/true);
}

StepEstimate estimate_step(const Config& c, int world_size, const Plan& plan, const Hardware& hw,
                           double gemm_efficiency) {
  MOE_INPUT_CHECK(gemm_efficiency > 0 && gemm_efficiency <= 1, "--gemm-efficiency must be in (0, 1], got ",
                  gemm_efficiency);
  StepEstimate e;
  const double W = world_size, EP = static_cast<double>(c.parallel.expert_parallel_size), node = hw.gpus_per_node;
  const double peak = 1e12 * (c.train.dtype == TrainDtype::kBFloat16 ? hw.bf16_tflops : hw.fp32_tflops);
  e.tokens_per_rank = static_cast<double>(c.train.global_batch_size) * static_cast<double>(c.data.seq_len) / W;
  const double model_flops = static_cast<double>(plan.flops_per_token) * e.tokens_per_rank;
  e.compute_s = (model_flops + static_cast<double>(plan.recompute_flops_per_token) * e.tokens_per_rank) /
                (gemm_efficiency * peak);
  // EP groups are consecutive ranks: inside one node when EP divides the node's GPUs. Otherwise the share
  // of each rank's peers in other nodes goes over InfiniBand while the rest crosses NVLink.
  const double a2a = static_cast<double>(plan.a2a_bytes_per_step);
  e.a2a_inside_node = EP <= node;
  if (e.a2a_inside_node) {
    e.a2a_s = a2a / (1e9 * hw.nvlink_gbps);
  } else {
    const double outside = (EP - node) / (EP - 1);
    e.a2a_s = std::max(a2a * outside / (1e9 * hw.network_gbps), a2a * (1 - outside) / (1e9 * hw.nvlink_gbps));
  }
  // Float32 gradients, reduced as a ring (all-reduce, or reduce-scatter then all-gather: the same bytes):
  // the dense ones over the world, each rank's experts over its EDP group, over InfiniBand once the group
  // leaves the node.
  const double edp = W / EP, link = 1e9 * (W > node ? hw.network_gbps : hw.nvlink_gbps);
  const double routed = static_cast<double>(plan.params_per_rank - plan.dense_params_per_rank);
  const double dense = static_cast<double>(plan.dense_params_per_rank);
  e.grad_sync_s = (2 * (W - 1) / W * 4 * dense + 2 * (edp - 1) / edp * 4 * routed) / link;
  e.step_s = e.compute_s + e.a2a_s + e.grad_sync_s;
  e.tokens_per_s = e.tokens_per_rank * W / e.step_s;
  e.mfu = model_flops / e.step_s / peak;
  e.a2a_share = e.a2a_s / e.step_s;
  e.fits = static_cast<double>(plan.total_bytes()) <= 1e9 * hw.memory_gb;
  return e;
}

nlohmann::json to_json(const StepEstimate& e, const Hardware& hw, double gemm_efficiency) {
  return {{"hardware", hw.name},     {"gemm_efficiency", gemm_efficiency}, {"compute_s", e.compute_s},
          {"a2a_s", e.a2a_s},        {"grad_sync_s", e.grad_sync_s},       {"step_s", e.step_s},
          {"tokens_per_s", e.tokens_per_s}, {"mfu", e.mfu},                {"a2a_share", e.a2a_share},
          {"a2a_inside_node", e.a2a_inside_node}, {"fits", e.fits}};
}

std::string describe(const StepEstimate& e, const Hardware& hw, double gemm_efficiency, int world_size) {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "step on %d x %s (%d nodes; estimate, see docs/performance.md):\n"
                "  compute           %8.3f s  (model FLOPs and recomputation at %.0f%% of the dense peak)\n"
                "  all-to-all        %8.3f s  (%s)\n"
                "  gradient sync     %8.3f s  (float32 ring over %s)\n"
                "  step              %8.3f s  (the three in turn: NCCL shares the compute stream)\n"
                "  %.0f tokens/s, MFU %.1f%%, all-to-all %.1f%% of the step; memory %s %.0f GB\n",
                world_size, hw.name.c_str(), (world_size + hw.gpus_per_node - 1) / hw.gpus_per_node, e.compute_s,
                100 * gemm_efficiency, e.a2a_s, e.a2a_inside_node ? "NVLink, inside a node" : "InfiniBand between nodes",
                e.grad_sync_s, world_size > hw.gpus_per_node ? "InfiniBand" : "NVLink", e.step_s, e.tokens_per_s,
                100 * e.mfu, 100 * e.a2a_share, e.fits ? "fits in" : "does not fit in", hw.memory_gb);
  return buf;
}

}  // namespace moe
