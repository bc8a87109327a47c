#pragma once
// Float32 loops over contiguous rows for the CPU kernels (attention's softmax tiles, SwiGLU), with the
// exponential vectorised. ATen's own exp is vectorised too, but only inside its kernels: our kernels run
// their row passes on tiles that stay in cache, where a call into ATen per row would cost more than the
// row. On x86-64 the loops run 16 lanes wide with AVX-512, 8 with AVX2 and FMA (chosen at run time, so
// the build needs no -march; ATEN_CPU_CAPABILITY=avx2 caps them at 8, as it caps ATen); elsewhere they
// run scalar std::exp. The vector exp is Cephes' expf (a degree-6 polynomial after range reduction by
// ln 2), within 2 ulp of the true value; it returns 0 below -87.33 (where expf turns denormal) and
// propagates NaN.
#include <cstdint>

namespace moe::vec {

// max(x[0..n)), n >= 1.
float max(const float* x, int64_t n);

// x[i] = exp(x[i] - shift) in place; returns the sum of the results.
float exp_shifted(float* x, int64_t n, float shift);

// SwiGLU's gate: h[i] = silu(a[i]) * b[i], silu(a) = a / (1 + exp(-a)).
void swiglu(const float* a, const float* b, float* h, int64_t n);

// Its backward from dh: da[i] = dh[i] b[i] s (1 + a (1 - s)), db[i] = dh[i] a s, with s = sigmoid(a[i]).
void swiglu_backward(const float* a, const float* b, const float* dh, float* da, float* db, int64_t n);

// Exact (erf) GELU: h[i] = a[i] Φ(a[i]), and a[i] becomes its slope Φ(a[i]) + a[i] φ(a[i]), what the
// backward multiplies the incoming gradient by. Φ within 1e-7 absolute of the true value.
void gelu(float* a, float* h, int64_t n);

}  // namespace moe::vec
