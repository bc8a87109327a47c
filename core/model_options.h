#pragma once
// The typed options of the model: what a config's `model` and `moe` sections are, what every module is
// built from, and what `moe plan` counts. One description: visit_model_options() names each key once with its
// field and its range, and validate() checks them; the YAML loader, the resolved-config printer, the
// docs test and the modules' constructors all go through these two. No tensors here, so that the light
// `moe` executable (plan, tokenize) does not load libtorch.
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "core/check.h"

namespace moe {

enum class ScoreFunction { kSoftmax, kSigmoid };
// Which assignments an expert over capacity keeps: `probability` keeps the highest gate weights
// (Megatron's default), `position` keeps the earliest tokens of the batch (GShard, Switch).
enum class DropPolicy { kProbability, kPosition };
// Over which tokens the balance loss counts assignments: this rank's micro-batch, or every rank's
// (counts all-reduced over the aux group; each rank's P_i stays local, so the mean of the ranks' losses
// is the loss of the global batch and each rank's gradient is its share of that loss's gradient), or
// each sequence on its own, the mean over the sequences (DeepSeek-V3's sequence-wise balance loss: no
// single sequence may lean on a few experts).
enum class AuxLossScope { kMicroBatch, kGlobal, kSequence };
// SwiGLU: w2(silu(x w1) * (x w3)), as Mixtral. GELU: w2(gelu(x w1)), as Switch and GShard.
enum class ExpertType { kSwiGLU, kGELU };

// What the backward recomputes instead of keeping (train.recompute; core/recompute.h): nothing; the
// expert FFNs of each MoE layer (routed and shared: the largest activations of an MoE block); or whole
// transformer blocks, keeping only each block's input.
enum class Recompute { kNone, kMoE, kFull };

inline const EnumNames<Recompute>& enum_names(Recompute) {
  static const EnumNames<Recompute> names = {{"none", Recompute::kNone}, {"moe", Recompute::kMoE},
                                             {"full", Recompute::kFull}};
  return names;
}
inline const EnumNames<ScoreFunction>& enum_names(ScoreFunction) {
  static const EnumNames<ScoreFunction> names = {{"softmax", ScoreFunction::kSoftmax},
                                                 {"sigmoid", ScoreFunction::kSigmoid}};
  return names;
}
inline const EnumNames<DropPolicy>& enum_names(DropPolicy) {
  static const EnumNames<DropPolicy> names = {{"probability", DropPolicy::kProbability},
                                              {"position", DropPolicy::kPosition}};
  return names;
}
inline const EnumNames<AuxLossScope>& enum_names(AuxLossScope) {
  static const EnumNames<AuxLossScope> names = {{"micro_batch", AuxLossScope::kMicroBatch},
                                                {"global", AuxLossScope::kGlobal},
                                                {"sequence", AuxLossScope::kSequence}};
  return names;
}
inline const EnumNames<ExpertType>& enum_names(ExpertType) {
  static const EnumNames<ExpertType> names = {{"swiglu", ExpertType::kSwiGLU}, {"gelu", ExpertType::kGELU}};
  return names;
}
// The routing half of the `moe` section.
struct RouterOptions {
  int64_t num_experts = 0;  // 0: a dense model, and the other moe keys are ignored
  int64_t top_k = 2;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  // Rescale the k chosen weights to sum to 1 (Mixtral, DeepSeek-V3). Off: the raw scores (Switch).
  bool normalize_topk = true;
  // Node-limited routing (DeepSeek-V3): the experts are num_groups equal groups of consecutive ids; a
  // token first picks its group_topk groups by the sum of each group's two highest scores, then its
  // top_k experts inside them. Under expert parallelism the groups' edges must be ranks' edges, so that a
  // token's experts sit on at most group_topk ranks (num_groups = EP size: a group is a rank) or groups
  // of consecutive ranks (num_groups dividing the EP size: a node). 0: no groups.
  int64_t num_groups = 0;
  int64_t group_topk = 0;
  // Multiplies the gate weights after normalisation (DeepSeek-V3: 2.5), so that normalised weights
  // summing to 1 do not shrink the routed experts' share beside the shared expert.
  double routed_scaling_factor = 1.0;
  // capacity = ceil(factor * tokens * top_k / num_experts); nullopt means dropless, 0 drops everything.
  std::optional<double> capacity_factor;
  std::optional<double> eval_capacity_factor;
  DropPolicy drop_policy = DropPolicy::kProbability;
  // Multiplicative input noise U(1-eps, 1+eps) in training only (Switch Transformer); 0 switches it off.
  double jitter_eps = 0.0;
  double aux_loss_coeff = 0.01;
  AuxLossScope aux_loss_scope = AuxLossScope::kMicroBatch;
  double z_loss_coeff = 0.0;
  // Aux-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores for selection only,
  // moved by rate * sign(mean load - load) after each optimizer step. 0 switches it off.
  double bias_update_rate = 0.0;
};

// The `moe` section: the router, the experts, and which layers are MoE layers.
struct MoEOptions {
  RouterOptions router;
  int64_t ffn_hidden_size = 512;  // width of each routed expert
  ExpertType expert_type = ExpertType::kSwiGLU;
  // Shared experts run as one dense MLP beside the routed ones, of width num_shared_experts *
  // ffn_hidden_size (DeepSeekMoE), or shared_expert_ffn_hidden_size when set (Megatron's
  // moe_shared_expert_intermediate_size; Snowflake Arctic's dense residual MLP is as wide as the model).
  int64_t num_shared_experts = 0;
  int64_t shared_expert_ffn_hidden_size = 0;
  int64_t shared_ffn_width() const {
    if (num_shared_experts == 0) return 0;
    return shared_expert_ffn_hidden_size > 0 ? shared_expert_ffn_hidden_size : num_shared_experts * ffn_hidden_size;
  }
  // Layer i (from 0) is an MoE layer when i >= first_dense_layers and (i + 1) % layer_freq == 0:
  // 1 everywhere (Mixtral), 2 every other layer starting with the second (GLaM, Llama 4); the first
  // first_dense_layers layers stay dense (DeepSeek-V3).
  int64_t layer_freq = 1;
  int64_t first_dense_layers = 0;
  // Under expert parallelism: the tokens of a micro-batch are exchanged in this many slices, each
  // slice's experts computing while the next slices travel (Tutel's a2a_ffn_overlap_degree). 1: one
  // exchange each way.
  int64_t a2a_overlap_degree = 1;
  // Under expert parallelism: up to this many experts a layer and step are copied to every EP rank, each
  // rank running its own tokens for them (FasterMoE's shadowing, core/shadow_experts.h), when that takes
  // at least shadow_min_rows rows off the busiest rank. 0: off.
  int64_t shadow_experts = 0;
  int64_t shadow_min_rows = 64;
  // Under expert parallelism: dispatch sends a token once to each rank holding any of its experts, not
  // once per expert (TokenDispatcher), so a token's experts on one rank cost one row of the exchange.
  bool dispatch_once_per_rank = true;
  // Debug: cross-check split sizes between EP ranks before each exchange (TokenDispatcher).
  bool check_splits = false;
};

// The `model` section and, in `moe`, its MoE layers: the whole decoder-only model. Every module takes
// this struct and reads what it needs (as Megatron's modules take the TransformerConfig), so that a value
// shared by several modules (hidden_size, init_std) exists once.
struct TransformerOptions {
  int64_t vocab_size = 256;
  int64_t hidden_size = 256;
  int64_t num_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_kv_heads = 0;  // 0: as many as num_attention_heads; fewer: grouped-query attention
  int64_t ffn_hidden_size = 1024;  // width of the dense SwiGLU FFNs (dense layers and dense models)
  int64_t max_seq_len = 256;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  MoEOptions moe;

  int64_t kv_heads() const { return num_kv_heads == 0 ? num_attention_heads : num_kv_heads; }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  bool is_moe() const { return moe.router.num_experts > 0; }
  bool is_moe_layer(int64_t layer) const {
    return is_moe() && layer >= moe.first_dense_layers && (layer + 1) % moe.layer_freq == 0;
  }
};

// Every key of the model with its field and its range, in the order the resolved config prints them.
// A visitor (RangeCheck, the config's YAML binding) has integer(key, field, min), real(key, field, min,
// min_inclusive, max_exclusive), optional_real(key, field, min), boolean(key, field) and choice(key,
// field) for enums named by enum_names().
template <typename Options, typename Visitor>
void visit_model_options(Options& o, Visitor& v) {  // Options: TransformerOptions, const or not
  constexpr double kInf = std::numeric_limits<double>::infinity();
  v.integer("model.vocab_size", o.vocab_size, 1);
  v.integer("model.hidden_size", o.hidden_size, 1);
  v.integer("model.num_layers", o.num_layers, 1);
  v.integer("model.num_attention_heads", o.num_attention_heads, 1);
  v.integer("model.num_kv_heads", o.num_kv_heads, 0);
  v.integer("model.ffn_hidden_size", o.ffn_hidden_size, 1);
  v.integer("model.max_seq_len", o.max_seq_len, 1);
  v.real("model.rope_theta", o.rope_theta, 0, false, kInf);
  v.real("model.norm_eps", o.norm_eps, 0, false, kInf);
  v.real("model.init_std", o.init_std, 0, false, kInf);
  auto& e = o.moe;
  auto& r = o.moe.router;
  v.integer("moe.num_experts", r.num_experts, 0);
  v.integer("moe.top_k", r.top_k, 1);
  v.integer("moe.ffn_hidden_size", e.ffn_hidden_size, 1);
  v.integer("moe.layer_freq", e.layer_freq, 1);
  v.integer("moe.first_dense_layers", e.first_dense_layers, 0);
  v.integer("moe.num_shared_experts", e.num_shared_experts, 0);
  v.integer("moe.shared_expert_ffn_hidden_size", e.shared_expert_ffn_hidden_size, 0);
  v.choice("moe.expert_type", e.expert_type);
  v.choice("moe.score_function", r.score_function);
  v.boolean("moe.normalize_topk", r.normalize_topk);
  v.integer("moe.num_groups", r.num_groups, 0);
  v.integer("moe.group_topk", r.group_topk, 0);
  v.real("moe.routed_scaling_factor", r.routed_scaling_factor, 0, false, kInf);
  v.optional_real("moe.capacity_factor", r.capacity_factor, 0);
  v.optional_real("moe.eval_capacity_factor", r.eval_capacity_factor, 0);
  v.choice("moe.drop_policy", r.drop_policy);
  v.real("moe.jitter_eps", r.jitter_eps, 0, true, 1);
  v.real("moe.aux_loss_coeff", r.aux_loss_coeff, 0, true, kInf);
  v.choice("moe.aux_loss_scope", r.aux_loss_scope);
  v.real("moe.z_loss_coeff", r.z_loss_coeff, 0, true, kInf);
  v.real("moe.bias_update_rate", r.bias_update_rate, 0, true, kInf);
  v.integer("moe.a2a_overlap_degree", e.a2a_overlap_degree, 1);
  v.integer("moe.shadow_experts", e.shadow_experts, 0);
  v.integer("moe.shadow_min_rows", e.shadow_min_rows, 1);
  v.boolean("moe.dispatch_once_per_rank", e.dispatch_once_per_rank);
  v.boolean("moe.check_splits", e.check_splits);
}

// Checks every range of visit_model_options() and the rules between keys (heads dividing the hidden size,
// top_k within the experts, at least one MoE layer, ...); throws OptionError. The config loader runs it
// on what a file set, and every module's constructor on what it is given.
void validate(const TransformerOptions& o);

// Why the router's groups do not fit an expert-parallel group of ep_size ranks (a group straddling two
// ranks' edges, so that node-limited routing would not limit ranks), or "" when they fit or are off.
std::string groups_misfit_ranks(const RouterOptions& r, int64_t ep_size);

}  // namespace moe
