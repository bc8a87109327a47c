#include "core/vector_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOE_VECTOR_MATH_AVX2 1
#endif

namespace moe::vec {
namespace {

float exp_scalar(float x) { return std::exp(x); }

#if MOE_VECTOR_MATH_AVX2
#define MOE_AVX2 __attribute__((target("avx2,fma")))

// Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln 2 split in two for an exact n ln2), e^r by its
// minimax polynomial, 2^n built in the exponent bits. The clamp keeps n in float's exponent range: at
// the bottom n + 127 = 0 gives exactly 0, and min/max take x second so that NaN passes through.
MOE_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), x);
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

MOE_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

MOE_AVX2 inline float horizontal_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// Lanes [0, n) of a partial vector, n < 8; the rest filled with `fill`.
MOE_AVX2 inline __m256 load_partial(const float* x, int64_t n, float fill) {
  alignas(32) float buf[8];
  std::fill(buf, buf + 8, fill);
  std::copy(x, x + n, buf);
  return _mm256_load_ps(buf);
}

MOE_AVX2 inline void store_partial(float* x, int64_t n, __m256 v) {
  alignas(32) float buf[8];
  _mm256_store_ps(buf, v);
  std::copy(buf, buf + n, x);
}

MOE_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  if (i < n) m = _mm256_max_ps(m, load_partial(x + i, n - i, -std::numeric_limits<float>::infinity()));
  return horizontal_max(m);
}

MOE_AVX2 float exp_shifted_avx2(float* x, int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {  // the missing lanes are -inf: exp gives 0, nothing added
    const __m256 e = exp8(_mm256_sub_ps(load_partial(x + i, n - i, -std::numeric_limits<float>::infinity()), s));
    store_partial(x + i, n - i, e);
    sum = _mm256_add_ps(sum, e);
  }
  return horizontal_sum(sum);
}

MOE_AVX2 inline __m256 sigmoid8(__m256 a) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
}

MOE_AVX2 inline __m256 swiglu8(__m256 a, __m256 b) { return _mm256_mul_ps(_mm256_mul_ps(a, sigmoid8(a)), b); }

MOE_AVX2 void swiglu_avx2(const float* a, const float* b, float* h, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(h + i, swiglu8(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  if (i < n) store_partial(h + i, n - i, swiglu8(load_partial(a + i, n - i, 0), load_partial(b + i, n - i, 0)));
}

// da = dh b s (1 + a (1 - s)) = dh b (s + a s - a s s), db = dh a s.
MOE_AVX2 inline void swiglu_backward8(__m256 a, __m256 b, __m256 dh, __m256* da, __m256* db) {
  const __m256 s = sigmoid8(a);
  const __m256 as = _mm256_mul_ps(a, s);
  *db = _mm256_mul_ps(dh, as);
  *da = _mm256_mul_ps(_mm256_mul_ps(dh, b), _mm256_fnmadd_ps(as, s, _mm256_add_ps(s, as)));
}

MOE_AVX2 void swiglu_backward_avx2(const float* a, const float* b, const float* dh, float* da, float* db, int64_t n) {
  __m256 va, vb;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    swiglu_backward8(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), _mm256_loadu_ps(dh + i), &va, &vb);
    _mm256_storeu_ps(da + i, va);
    _mm256_storeu_ps(db + i, vb);
  }
  if (i < n) {
    swiglu_backward8(load_partial(a + i, n - i, 0), load_partial(b + i, n - i, 0), load_partial(dh + i, n - i, 0),
                     &va, &vb);
    store_partial(da + i, n - i, va);
    store_partial(db + i, n - i, vb);
  }
}
#endif

float sigmoid_scalar(float a) { return 1.0f / (1.0f + exp_scalar(-a)); }

}  // namespace

bool wide() {
#if MOE_VECTOR_MATH_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2;
#else
  return false;
#endif
}

float max(const float* x, int64_t n) {
#if MOE_VECTOR_MATH_AVX2
  if (wide()) return max_avx2(x, n);
#endif
  return *std::max_element(x, x + n);
}

float exp_shifted(float* x, int64_t n, float shift) {
#if MOE_VECTOR_MATH_AVX2
  if (wide()) return exp_shifted_avx2(x, n, shift);
#endif
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = exp_scalar(x[i] - shift));
  return sum;
}

void swiglu(const float* a, const float* b, float* h, int64_t n) {
#if MOE_VECTOR_MATH_AVX2
  if (wide()) return swiglu_avx2(a, b, h, n);
#endif
  for (int64_t i = 0; i < n; ++i) h[i] = a[i] * sigmoid_scalar(a[i]) * b[i];
}

void swiglu_backward(const float* a, const float* b, const float* dh, float* da, float* db, int64_t n) {
#if MOE_VECTOR_MATH_AVX2
  if (wide()) return swiglu_backward_avx2(a, b, dh, da, db, n);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid_scalar(a[i]);
    db[i] = dh[i] * a[i] * s;
    da[i] = dh[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
  }
}

}  // namespace moe::vec
