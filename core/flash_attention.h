#pragma once
// Causal scaled dot-product attention by FlashAttention's algorithm (Dao et al. 2022; FlashAttention-2's
// loop order), on tiles of whatever device the tensors live on. The [S, S] score matrix is never formed:
// each block of queries meets the keys in chunks, with an online softmax carried from chunk to chunk, and
// chunks wholly above the diagonal are skipped, so the causal half costs nothing. The backward recomputes
// each tile's probabilities from the saved log-sum-exp instead of keeping them. On the CPU a kernel of its
// own runs the tiles head by head through BLAS directly; elsewhere the tiles are ATen ops.
#include <ATen/ATen.h>

namespace moe {

struct FlashBlocks {
  int64_t query = 64;  // query rows per tile
  int64_t key = 256;   // keys per chunk, at least `query`: the last chunk ends with the diagonal block
  // On the CPU: the tiles in ATen ops, as on a GPU, instead of the CPU kernel (for the tests and the
  // benchmark, which hold the two to each other).
  bool generic = false;
};

// softmax(q k^T / sqrt(head_dim) + causal mask) v for q, k, v of [N, S, head_dim] (N: batch x heads),
// differentiable in all three. The arithmetic is float32 whatever the inputs' dtype; the result has q's.
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, FlashBlocks blocks = {});

}  // namespace moe
