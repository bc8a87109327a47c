#pragma once
// Token permutation: gather the kept (token, expert) assignments into one buffer grouped by expert, and
// the inverse that weights each row by its gate and sums the k rows of a token back in place. Tensor ops
// only: a stable sort and an index_select forward, a weighted index_add back.
#include <ATen/ATen.h>

#include <optional>

namespace moe {

struct Permutation {
  at::Tensor token_idx_N;          // source token of each row, rows sorted by expert then token
  at::Tensor slot_idx_N;           // flat index t*K+k of each row's assignment in probs_TK
  at::Tensor tokens_per_expert_E;  // int64 rows per expert
  int64_t num_tokens = 0;          // T
};

// keep_TK (bool) masks out dropped assignments; experts are numbered 0..num_experts-1. `num_kept`, the
// number of kept assignments, when the caller already holds it on the host (Routing::tokens_per_expert);
// otherwise it is read back from the device (a host sync).
Permutation make_permutation(const at::Tensor& expert_ids_TK, const at::Tensor& keep_TK, int64_t num_experts,
                             std::optional<int64_t> num_kept = std::nullopt);
// x_TD -> x_ND (rows grouped by expert).
at::Tensor permute(const at::Tensor& x_TD, const Permutation& perm);
// y_ND -> y_TD: y_TD[t] = sum over kept k of probs_TK[t, k] * y row of (t, k); dropped ones add nothing.
at::Tensor unpermute(const at::Tensor& y_ND, const Permutation& perm, const at::Tensor& probs_TK);

}  // namespace moe
