#include "core/permute.h"

#include "core/check.h"

namespace moe {

Permutation make_permutation(const at::Tensor& expert_ids_TK, const at::Tensor& keep_TK, int64_t num_experts,
                             std::optional<int64_t> num_kept) {
  MOE_CHECK(expert_ids_TK.sizes() == keep_TK.sizes(), "permute: expert ids ", expert_ids_TK.sizes(),
            " and keep mask ", keep_TK.sizes(), " differ in shape");
  at::NoGradGuard no_grad;
  const int64_t K = expert_ids_TK.size(1);
  // Dropped assignments sort after every expert (key num_experts) and are cut off.
  const at::Tensor keys = expert_ids_TK.reshape({-1}).masked_fill(keep_TK.reshape({-1}).logical_not(), num_experts);
  const at::Tensor order = std::get<1>(at::sort(keys, /*stable=*/true, 0, false));
  Permutation p;
  p.num_tokens = expert_ids_TK.size(0);
  p.tokens_per_expert_E = at::bincount(keys, {}, num_experts + 1).narrow(0, 0, num_experts);
  p.slot_idx_N = order.narrow(0, 0, num_kept ? *num_kept : p.tokens_per_expert_E.sum().item<int64_t>());
  p.token_idx_N = p.slot_idx_N.div(K, "floor");
  return p;
}

at::Tensor permute(const at::Tensor& x_TD, const Permutation& perm) {
  return x_TD.index_select(0, perm.token_idx_N);
}

at::Tensor unpermute(const at::Tensor& y_ND, const Permutation& perm, const at::Tensor& probs_TK) {
  const at::Tensor weights = probs_TK.reshape({-1}).index_select(0, perm.slot_idx_N).to(y_ND.scalar_type());
  return at::zeros({perm.num_tokens, y_ND.size(1)}, y_ND.options())
      .index_add(0, perm.token_idx_N, y_ND * weights.unsqueeze(1));
}

}  // namespace moe
