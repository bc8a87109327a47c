#pragma once
// `moe plan`: what a config costs, from its shapes alone (nothing is allocated), so that full-size
// configs can be sized on this machine: parameters, per-rank memory and all-to-all traffic.
#include <nlohmann/json.hpp>

#include <string>

#include "train/cli/config.h"

namespace moe {

struct Plan {
  int64_t total_params = 0;   // every parameter once (all experts)
  int64_t active_params = 0;  // what one token runs through: top_k routed experts (plus shared ones)
  int64_t params_per_rank = 0;
  // Bytes per rank: float32 weights and gradients, AdamW's two float32 moments, and the activations
  // one micro-batch keeps for backward (an estimate, see docs/performance.md).
  int64_t param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  // Bytes each rank sends through all-to-all per optimizer step: dispatch and combine, forward and
  // backward, every MoE layer and micro-batch, with tokens spread evenly over the experts.
  int64_t a2a_bytes_per_step = 0;
  int64_t num_moe_layers = 0;
};

Plan make_plan(const Config& config, int world_size);
nlohmann::json to_json(const Plan& plan);
// The human-readable table.
std::string describe(const Plan& plan, const Config& config, int world_size);

}  // namespace moe
