#pragma once
// The plain description of a model: what a config resolves to, what the modules are built from, and
// what `moe plan` counts without building anything. No tensors here, so that the light `moe` executable
// (plan, tokenize) does not load libtorch.
#include <cstdint>
#include <optional>

namespace moe {

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

// SwiGLU: w2(silu(x w1) * (x w3)), as Mixtral. GELU: w2(gelu(x w1)), as Switch and GShard.
enum class ExpertType { kSwiGLU, kGELU };

struct MoELayerOptions {
  RouterOptions router;  // hidden_size, num_experts, top_k, scores, capacity, losses, bias
  int64_t ffn_hidden_size = 0;
  ExpertType expert_type = ExpertType::kSwiGLU;
  // Shared experts run as one dense MLP of width num_shared_experts * ffn_hidden_size (DeepSeekMoE).
  int64_t num_shared_experts = 0;
  // Debug: cross-check split sizes between EP ranks before each exchange (TokenDispatcher).
  bool check_splits = false;
};

struct AttentionOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // grouped-query attention: each KV head serves num_heads / num_kv_heads
  double rope_theta = 10000.0;
  double init_std = 0.02;
};

// The whole decoder-only model. A dense model is one with moe.router.num_experts == 0.
struct TransformerOptions {
  int64_t vocab_size = 256;
  int64_t num_layers = 2;
  AttentionOptions attention;  // hidden_size, heads, KV heads, rope_theta
  double norm_eps = 1e-5;
  int64_t ffn_hidden_size = 0;  // width of the dense SwiGLU FFNs (dense layers and dense models)
  MoELayerOptions moe;          // the MoE FFNs; moe.router.hidden_size must equal attention.hidden_size
  // Layer i (from 0) is an MoE layer when i >= first_dense_layers and (i + 1) % moe_layer_freq == 0:
  // 1 everywhere (Mixtral), 2 every other layer starting with the second (GLaM, Llama 4); the first
  // first_dense_layers layers stay dense (DeepSeek-V3).
  int64_t moe_layer_freq = 1;
  int64_t first_dense_layers = 0;
  double init_std = 0.02;

  bool is_moe() const { return moe.router.num_experts > 0; }
  bool is_moe_layer(int64_t layer) const {
    return is_moe() && layer >= first_dense_layers && (layer + 1) % moe_layer_freq == 0;
  }
};

}  // namespace moe
