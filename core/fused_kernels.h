#pragma once
// RMSNorm, rotary embedding, SwiGLU's gate and GELU as single passes over memory. In ATen's terms each is
// 5-14 kernels, every one a pass over the activations and a fresh tensor (measured 6 ms per RMSNorm and
// 5 ms per rotation, forward and backward, at brown-moe's shapes on one core). On the CPU, for contiguous
// activations (float32 or bf16; SwiGLU and GELU float32 only), these compute forward in one pass and backward in
// one (float arithmetic, RMSNorm's row sums in double). Elsewhere (a GPU, other layouts) they run the
// same formula in ATen ops.
#include <ATen/ATen.h>

namespace moe {

// SwiGLU's gate, h = silu(a) * b (a = x w1, b = x w3), into h; and its backward from dh, da and db.
// Not differentiable themselves: the experts' FFN (core/experts.cpp) calls them per expert inside its
// own autograd function. On the CPU, for contiguous float32, one vectorised pass each
// (core/vector_math.h); elsewhere ATen's ops.
void swiglu_out(at::Tensor& h, const at::Tensor& a, const at::Tensor& b);
void swiglu_backward_out(at::Tensor& da, at::Tensor& db, const at::Tensor& a, const at::Tensor& b, const at::Tensor& dh);

// Exact (erf) GELU, h = gelu(a), for the experts' FFN like SwiGLU's gate above. On the CPU, for
// contiguous float32, one pass that also writes the slope gelu'(a) over a, so that the backward is one
// multiply instead of a second evaluation of erf and exp; elsewhere ATen's gelu, a kept. gelu_backward_
// takes what gelu_out left in a and turns dh into da in place.
void gelu_out(at::Tensor& h, at::Tensor& a);
void gelu_backward_(at::Tensor& dh, const at::Tensor& a);

// x / sqrt(mean(x^2, last dim) + eps) * weight, computed in float32, returned in x's dtype. weight:
// float32 [x.size(-1)].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The rotate-half rotation of x [B, S, H, head_dim] by angles [S, head_dim / 2] (float32): the first
// half becomes x1 cos - x2 sin, the second x2 cos + x1 sin. Float32 arithmetic, x's dtype out.
at::Tensor rotate_half(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace moe
