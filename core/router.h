#pragma once
// Router (the gate of an MoE layer): which experts each token goes to, with what weight, and what it
// costs in auxiliary losses. Scores are computed in float32 whatever the activation dtype, as
// Megatron-Core and Mixtral do: routing decisions are too sensitive for bfloat16.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <optional>

namespace moe {

class Communicator;

enum class ScoreFunction { kSoftmax, kSigmoid };
// Which assignments an expert over capacity keeps: `probability` keeps the highest gate weights
// (Megatron's default), `position` keeps the earliest tokens of the batch (GShard, Switch).
enum class DropPolicy { kProbability, kPosition };
// Over which tokens the balance loss counts assignments: this rank's micro-batch, or every rank's
// (counts all-reduced over the aux group; each rank's P_i stays local, so the mean of the ranks' losses
// is the loss of the global batch and each rank's gradient is its share of that loss's gradient).
enum class AuxLossScope { kMicroBatch, kGlobal };

struct RouterOptions {
  int64_t hidden_size = 0;
  int64_t num_experts = 8;
  int64_t top_k = 2;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  // Rescale the k chosen weights to sum to 1 (Mixtral, DeepSeek-V3). Off: the raw scores (Switch).
  bool normalize_topk = true;
  // capacity = ceil(factor * tokens * top_k / num_experts); nullopt means dropless.
  std::optional<double> capacity_factor;
  std::optional<double> eval_capacity_factor;
  DropPolicy drop_policy = DropPolicy::kProbability;
  // Multiplicative input noise U(1-eps, 1+eps) in training only (Switch Transformer); 0 switches it off.
  double jitter_eps = 0.0;
  double aux_loss_coeff = 0.0;
  AuxLossScope aux_loss_scope = AuxLossScope::kMicroBatch;
  double z_loss_coeff = 0.0;
  // Aux-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores for selection only,
  // moved by rate * sign(mean load - load) after each optimizer step. 0 switches it off.
  double bias_update_rate = 0.0;
  double init_std = 0.02;
};

// What route() decided for T tokens. Dropped assignments keep their expert id, carry weight 0 and are
// marked false in keep_TK; the token then keeps only its residual.
struct Routing {
  at::Tensor probs_TK;              // float32 gate weights, 0 where dropped
  at::Tensor expert_ids_TK;         // int64 global expert ids
  at::Tensor keep_TK;               // bool
  at::Tensor routed_per_expert_E;   // int64 assignments per expert before capacity (balance statistics)
  at::Tensor tokens_per_expert_E;   // int64 assignments per expert after capacity (what experts run)
  int64_t num_dropped = 0;
  int64_t capacity = -1;            // -1: dropless
  at::Tensor aux_loss;              // float32 scalar, unscaled: num_experts * sum_i f_i * P_i
  at::Tensor z_loss;                // float32 scalar, unscaled: mean over tokens of logsumexp(logits)^2
  at::Tensor loss;                  // aux_loss_coeff * aux_loss + z_loss_coeff * z_loss, to add to the loss
};

class RouterImpl : public torch::nn::Module {
 public:
  // aux_group: the ranks over which a global-scope balance loss counts assignments (all data-parallel
  // ranks); required by AuxLossScope::kGlobal with more than one rank, ignored otherwise.
  explicit RouterImpl(const RouterOptions& options, Communicator* aux_group = nullptr);

  // x_TD (any float dtype) -> logits_TE in float32. Applies input jitter when training.
  at::Tensor gate(const at::Tensor& x_TD);
  // logits_TE -> the routing. `training` picks the capacity factor. Throws moe::Error on NaN or Inf
  // logits: a non-finite score has no top-k, and routing it anywhere would hide the bug upstream.
  Routing route(const at::Tensor& logits_TE, bool training) const;
  Routing forward(const at::Tensor& x_TD) { return route(gate(x_TD), is_training()); }

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
