#include "core/vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // GCC's target pragma
#include <immintrin.h>
#define MOE_VECTOR_MATH_X86 1
#endif

namespace moe::vec {
namespace {

float exp_scalar(float x) { return std::exp(x); }

#if MOE_VECTOR_MATH_X86
// Each instruction set's operations, then the loops of vector_math_kernels.inc over them, compiled for
// that set alone (the target pragma) and called only where the CPU has it.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = __m256;
constexpr int64_t kLanes = 8;
inline V vset(float x) { return _mm256_set1_ps(x); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }  // b when either is NaN
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
inline V vfmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vfnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
inline V vfloor(V x) { return _mm256_floor_ps(x); }
inline V vabs(V x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
// if_negative where x < 0, else if_not.
inline V vselect_negative(V x, V if_negative, V if_not) {
  return _mm256_blendv_ps(if_not, if_negative, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}
// 2^n for integral n with n + 127 in [0, 255].
inline V pow2(V n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23));
}
// Lanes [0, n) of a partial vector, n < kLanes; the rest filled with `fill`.
inline V load_partial(const float* x, int64_t n, float fill) {
  alignas(32) float buf[kLanes];
  for (int64_t i = 0; i < kLanes; ++i) buf[i] = i < n ? x[i] : fill;
  return _mm256_load_ps(buf);
}
inline void store_partial(float* x, int64_t n, V v) {
  alignas(32) float buf[kLanes];
  _mm256_store_ps(buf, v);
  for (int64_t i = 0; i < n; ++i) x[i] = buf[i];
}
inline float hsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
#include "core/vector_math_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's own avx512fintrin.h passes _mm512_undefined_*() through its intrinsics and then warns about
// them at every call (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {
using V = __m512;
constexpr int64_t kLanes = 16;
inline V vset(float x) { return _mm512_set1_ps(x); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }  // b when either is NaN
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline V vfmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V vfnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
inline V vfloor(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline V vabs(V x) { return _mm512_abs_ps(x); }
inline V vselect_negative(V x, V if_negative, V if_not) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), if_not, if_negative);
}
inline V pow2(V n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23));
}
inline __mmask16 first(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
inline V load_partial(const float* x, int64_t n, float fill) { return _mm512_mask_loadu_ps(vset(fill), first(n), x); }
inline void store_partial(float* x, int64_t n, V v) { _mm512_mask_storeu_ps(x, first(n), v); }
inline float hsum(V v) { return _mm512_reduce_add_ps(v); }
inline float hmax(V v) { return _mm512_reduce_max_ps(v); }
#include "core/vector_math_kernels.inc"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options

enum class Isa { kScalar, kAvx2, kAvx512 };

// The widest the CPU has, capped by ATen's own ATEN_CPU_CAPABILITY (avx2, or default for scalar): row
// sums over 16 lanes round differently from sums over 8, so a run pinned to AVX2 (tests/train/golden.sh)
// computes the same bits on every machine.
Isa isa() {
  static const Isa chosen = [] {
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    const std::string cap_s = cap ? cap : "";
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cap_s != "default";
    if (avx2 && __builtin_cpu_supports("avx512f") && cap_s != "avx2") return Isa::kAvx512;
    return avx2 ? Isa::kAvx2 : Isa::kScalar;
  }();
  return chosen;
}

// Returns the chosen instruction set's f; on a CPU with neither, falls through to the scalar loop after it.
#define MOE_VECTOR_DISPATCH(f, ...)                                \
  switch (isa()) {                                                 \
    case Isa::kAvx512: return avx512::f(__VA_ARGS__);              \
    case Isa::kAvx2: return avx2::f(__VA_ARGS__);                  \
    case Isa::kScalar: break;                                      \
  }
#else
#define MOE_VECTOR_DISPATCH(f, ...)
#endif

float sigmoid_scalar(float a) { return 1.0f / (1.0f + exp_scalar(-a)); }

// The scalar form of vector_math_kernels.inc's gelu, with float64's erfc.
void gelu_scalar(float a, float* h, float* slope) {
  const double x = a, cdf = 0.5 * std::erfc(-x * M_SQRT1_2);
  *h = static_cast<float>(x * cdf);
  *slope = static_cast<float>(cdf + x * std::exp(-0.5 * x * x) * 0.5 * M_2_SQRTPI * M_SQRT1_2);
}

}  // namespace

float max(const float* x, int64_t n) {
  MOE_VECTOR_DISPATCH(max, x, n)
  return *std::max_element(x, x + n);
}

float exp_shifted(float* x, int64_t n, float shift) {
  MOE_VECTOR_DISPATCH(exp_shifted, x, n, shift)
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = exp_scalar(x[i] - shift));
  return sum;
}

void swiglu(const float* a, const float* b, float* h, int64_t n) {
  MOE_VECTOR_DISPATCH(swiglu, a, b, h, n)
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * sigmoid_scalar(a[i]) * b[i];
}

void swiglu_backward(const float* a, const float* b, const float* dh, float* da, float* db, int64_t n) {
  MOE_VECTOR_DISPATCH(swiglu_backward, a, b, dh, da, db, n)
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid_scalar(a[i]);
    db[i] = dh[i] * a[i] * s;
    da[i] = dh[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
  }
}

void gelu(float* a, float* h, int64_t n) {
  MOE_VECTOR_DISPATCH(gelu, a, h, n)
  for (int64_t i = 0; i < n; ++i) gelu_scalar(a[i], h + i, a + i);
}

}  // namespace moe::vec
