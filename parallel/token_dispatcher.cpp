#include "parallel/token_dispatcher.h"

namespace moe {

TokenDispatcher::TokenDispatcher(int64_t num_experts) : num_experts_(num_experts) {}

Dispatched TokenDispatcher::dispatch(const at::Tensor& x_TD, const Routing& routing) const {
  Dispatched d;
  d.handle.permutation = make_permutation(routing.expert_ids_TK, routing.keep_TK, num_experts_);
  d.handle.probs_TK = routing.probs_TK;
  d.x_ND = permute(x_TD, d.handle.permutation);
  const at::Tensor counts = d.handle.permutation.tokens_per_expert_E.contiguous();
  d.tokens_per_local_expert.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  return d;
}

at::Tensor TokenDispatcher::combine(const at::Tensor& y_ND, const DispatchHandle& handle) const {
  return unpermute(y_ND, handle.permutation, handle.probs_TK);
}

}  // namespace moe
