#pragma once
// `moe plan`: what a config costs, from its shapes alone (nothing is allocated), so that full-size
// configs can be sized on this machine: parameters, per-rank memory and all-to-all traffic.
#include <nlohmann/json.hpp>

#include <string>

#include "train/cli/config.h"

namespace moe {

// N: int64_t for the plan itself; long double to bound it first, so that no size of a config can
// overflow the integer arithmetic.
template <typename N>
struct PlanOf {
  N total_params = 0;   // every parameter once (all experts)
  N active_params = 0;  // what one token runs through: top_k routed experts (plus shared ones)
  N params_per_rank = 0;
  // Bytes per rank: float32 weights (and in bfloat16 their bf16 copies) and gradients, AdamW's two
  // float32 moments (sharded: those and the reduced gradient of this rank's part), and the peak of
  // activations over one micro-batch's forward and backward, all-to-all send buffer included (an
  // estimate, measured against by scripts/bench_memory.sh: docs/performance.md), by train.dtype,
  // train.recompute and train.shard_optimizer.
  N param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  // The buffer gradients are reduced through, one bucket at a time (32 MiB, or the largest tensor), and
  // the weight gradients of one layer that backward makes before adding them in.
  N buffer_bytes = 0;
  // Bytes each rank sends through all-to-all per optimizer step: dispatch and combine, forward and
  // backward, every MoE layer and micro-batch, with tokens routed uniformly over the experts: a row per
  // assignment on another rank, or with moe.dispatch_once_per_rank a row per other rank a token's experts
  // sit on (the expected number), with the gate weights and mask that go with it.
  N a2a_bytes_per_step = 0;
  N num_moe_layers = 0;
  // Model FLOPs per token of a training step, forward and backward: 6 per matrix weight a token passes
  // through (attention projections, router, top_k experts and the shared ones or the dense FFN, the
  // head) plus 12 x heads x head_dim x seq_len a layer for attention (PaLM's count, the one MFU is
  // reported by). Recomputation is not counted: it is overhead, not model FLOPs.
  N flops_per_token = 0;
  // FLOPs per token that train.recompute runs again (not model FLOPs: they count in time, not in MFU).
  N recompute_flops_per_token = 0;
  // Of params_per_rank, those outside the routed experts (replicated on every rank).
  N dense_params_per_rank = 0;
  // What one rank holds at its peak: weights, gradients, optimizer state, activations and buffers.
  N total_bytes() const { return param_bytes + grad_bytes + optimizer_bytes + activation_bytes + buffer_bytes; }
};
using Plan = PlanOf<int64_t>;

// Throws moe::Error (bad input) when the config's sizes give more than 2^62 parameters or bytes per
// rank, beyond any machine, naming the largest figure.
Plan make_plan(const Config& config, int world_size);
// gpu_memory > 0: also whether total_bytes() fits in that many bytes.
nlohmann::json to_json(const Plan& plan, int64_t gpu_memory = 0);
// The human-readable table.
std::string describe(const Plan& plan, const Config& config, int world_size, int64_t gpu_memory = 0);

}  // namespace moe
