#pragma once
// Router (the gate of an MoE layer): which experts each token goes to, with what weight, and what it
// costs in auxiliary losses. Scores are computed in float32 whatever the activation dtype, as
// Megatron-Core and Mixtral do: routing decisions are too sensitive for bfloat16.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <vector>

#include "core/model_options.h"

namespace moe {

class Communicator;

// What route() decided for T tokens. Dropped assignments keep their expert id, carry weight 0 and are
// marked false in keep_TK; the token then keeps only its residual.
struct Routing {
  at::Tensor probs_TK;              // float32 gate weights, 0 where dropped
  at::Tensor expert_ids_TK;         // int64 global expert ids
  at::Tensor keep_TK;               // bool
  at::Tensor routed_per_expert_E;   // int64 assignments per expert before capacity (balance statistics)
  at::Tensor tokens_per_expert_E;   // int64 assignments per expert after capacity (what experts run)
  std::vector<int64_t> tokens_per_expert;  // the same on the host: the permutation's and GEMMs' sizes
  int64_t num_dropped = 0;
  int64_t capacity = -1;            // -1: dropless
  at::Tensor aux_loss;              // float32 scalar, unscaled: num_experts * sum_i f_i * P_i (per sequence,
                                    // averaged, under the sequence scope)
  at::Tensor z_loss;                // float32 scalar, unscaled: mean over tokens of logsumexp(logits)^2
  at::Tensor loss;                  // aux_loss_coeff * aux_loss + z_loss_coeff * z_loss, to add to the loss
  at::Tensor entropy;               // float32 scalar, no gradient: mean over tokens of the entropy (nats) of the
                                    // score distribution over the experts (telemetry: near 0 is a router
                                    // that has collapsed onto its choices, ln E one that cannot choose)
};

class RouterImpl : public torch::nn::Module {
 public:
  // Reads hidden_size, init_std and moe.router of the model's options (moe.router.num_experts > 0).
  // aux_group: the ranks over which a global-scope balance loss counts assignments (all data-parallel
  // ranks); required by AuxLossScope::kGlobal with more than one rank, ignored otherwise.
  explicit RouterImpl(const TransformerOptions& options, Communicator* aux_group = nullptr);

  // x_TD (any float dtype) -> logits_TE in float32. Applies input jitter when training.
  at::Tensor gate(const at::Tensor& x_TD);
  // logits_TE -> the routing. `training` picks the capacity factor. The T tokens are sequences of
  // tokens_per_sequence (0: one sequence), which only the sequence-scope balance loss reads. Throws
  // moe::Error on NaN or Inf logits: a non-finite score has no top-k, and routing it anywhere would
  // hide the bug upstream.
  Routing route(const at::Tensor& logits_TE, bool training, int64_t tokens_per_sequence = 0) const;
  Routing forward(const at::Tensor& x_TD, int64_t tokens_per_sequence = 0) {
    return route(gate(x_TD), is_training(), tokens_per_sequence);
  }

  // The capacity of each expert for `num_tokens` tokens under `factor` (nullopt: dropless, -1).
  int64_t capacity(int64_t num_tokens, std::optional<double> factor) const;

  // Aux-loss-free balancing step; `load_E` is the assignments per expert seen since the last update.
  void update_expert_bias(const at::Tensor& load_E);

  const RouterOptions& options() const { return options_; }
  at::Tensor weight;       // [E, D] float32
  at::Tensor expert_bias;  // [E] float32 buffer; never trained by the optimizer

 private:
  RouterOptions options_;
  Communicator* aux_group_;
};
TORCH_MODULE(Router);

// Which assignments survive a per-expert capacity, in tensor ops. Exposed for the tests.
at::Tensor capacity_keep_mask(const at::Tensor& expert_ids_TK, const at::Tensor& probs_TK,
                              int64_t num_experts, int64_t capacity, DropPolicy policy);

}  // namespace moe
