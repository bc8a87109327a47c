#include "core/model_options.h"

namespace moe {
namespace {

[[noreturn]] void fail(const char* key, const std::string& detail) { throw OptionError(key, detail); }

std::string n(int64_t v) { return "(" + std::to_string(v) + ")"; }

}  // namespace

void validate(const TransformerOptions& o) {
  RangeCheck check;
  visit_model_options(o, check);
  if (o.hidden_size % o.num_attention_heads != 0) {
    fail("model.num_attention_heads", n(o.num_attention_heads) + " must divide model.hidden_size " + n(o.hidden_size));
  }
  if (o.num_attention_heads % o.kv_heads() != 0) {
    fail("model.num_kv_heads", n(o.kv_heads()) + " must divide model.num_attention_heads " + n(o.num_attention_heads));
  }
  if (o.head_dim() % 2 != 0) {
    fail("model.num_attention_heads",
         "gives an odd head dimension " + n(o.head_dim()) + "; rotary embeddings need an even one");
  }
  if (!o.is_moe()) return;
  const auto& e = o.moe;
  if (e.router.top_k > e.router.num_experts) {
    fail("moe.top_k", n(e.router.top_k) + " must not exceed moe.num_experts " + n(e.router.num_experts));
  }
  const RouterOptions& r = e.router;
  if (r.num_groups == 0 && r.group_topk != 0) {
    fail("moe.group_topk", n(r.group_topk) + " limits the groups of a token, but moe.num_groups is 0");
  }
  if (r.num_groups > 0) {
    if (r.num_experts % r.num_groups != 0) {
      fail("moe.num_groups", n(r.num_groups) + " must divide moe.num_experts " + n(r.num_experts));
    }
    if (r.group_topk < 1 || r.group_topk > r.num_groups) {
      fail("moe.group_topk", n(r.group_topk) + " must be between 1 and moe.num_groups " + n(r.num_groups));
    }
    const int64_t reachable = r.group_topk * (r.num_experts / r.num_groups);
    if (r.top_k > reachable) {
      fail("moe.top_k", n(r.top_k) + " exceeds the " + std::to_string(reachable) +
                            " experts of moe.group_topk groups of moe.num_experts / moe.num_groups");
    }
  }
  if (e.shared_expert_ffn_hidden_size > 0 && e.num_shared_experts == 0) {
    fail("moe.shared_expert_ffn_hidden_size", n(e.shared_expert_ffn_hidden_size) +
                                                  " sizes shared experts, but moe.num_shared_experts is 0");
  }
  if (e.first_dense_layers >= o.num_layers) {
    fail("moe.first_dense_layers", n(e.first_dense_layers) + " leaves no MoE layer in a model of " +
                                       std::to_string(o.num_layers) + " layers");
  }
  if (o.num_layers / e.layer_freq <= e.first_dense_layers / e.layer_freq) {  // no multiple in (first, layers]
    fail("moe.layer_freq",
         n(e.layer_freq) + " leaves no MoE layer in a model of " + std::to_string(o.num_layers) + " layers");
  }
}

std::string groups_misfit_ranks(const RouterOptions& r, int64_t ep_size) {
  if (r.num_groups == 0 || ep_size <= 1 || r.num_groups % ep_size == 0 || ep_size % r.num_groups == 0) return "";
  return n(r.num_groups) + " groups straddle the edges of " + std::to_string(ep_size) +
         " expert-parallel ranks; under expert parallelism moe.num_groups must be a multiple or a divisor of "
         "parallel.expert_parallel_size, so that a token's groups bound its ranks";
}

}  // namespace moe
