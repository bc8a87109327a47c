#pragma once
// TokenDispatcher: takes a rank's tokens to the experts that routing chose and brings the results back.
// dispatch() groups the kept assignments by expert and returns, with that buffer, a DispatchHandle that
// combine() requires (as DeepEP does): the permutation and the gate weights to undo and apply.
#include <ATen/ATen.h>

#include <vector>

#include "core/permute.h"
#include "core/router.h"

namespace moe {

struct DispatchHandle {
  Permutation permutation;
  at::Tensor probs_TK;
};

struct Dispatched {
  at::Tensor x_ND;                               // rows grouped by local expert
  std::vector<int64_t> tokens_per_local_expert;  // rows per local expert, in order
  DispatchHandle handle;
};

class TokenDispatcher {
 public:
  explicit TokenDispatcher(int64_t num_experts);

  Dispatched dispatch(const at::Tensor& x_TD, const Routing& routing) const;
  // y_ND in the order dispatch() produced -> y_TD, weighted by the gates and summed over k.
  at::Tensor combine(const at::Tensor& y_ND, const DispatchHandle& handle) const;

 private:
  int64_t num_experts_;
};

}  // namespace moe
