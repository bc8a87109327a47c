#include "core/vector_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace moe {
namespace {

// Every step of 1/64 from -100 to 80, against float64's exp: within 2 ulp where the result is a
// normal float, 0 or a denormal below it; row sums within float32 summation's error.
TEST(VectorMath, ExpShiftedWithinTwoUlpOfFloat64) {
  for (const float shift : {0.0f, 3.5f}) {
    std::vector<float> x;
    for (float v = -100; v < 80; v += 1.0f / 64) x.push_back(v + shift);
    std::vector<float> y = x;
    const float sum = vec::exp_shifted(y.data(), static_cast<int64_t>(y.size()), shift);
    double want_sum = 0, worst_ulps = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double e = std::exp(static_cast<double>(x[i]) - shift);
      want_sum += e;
      if (e < std::numeric_limits<float>::min()) {
        EXPECT_LE(y[i], std::numeric_limits<float>::min()) << "exp(" << x[i] - shift << ")";
        continue;
      }
      worst_ulps = std::max(worst_ulps, std::abs(y[i] - e) / (e * std::ldexp(1.0, -23)));
    }
    EXPECT_LE(worst_ulps, 2.0) << "shift " << shift;
    EXPECT_NEAR(sum, want_sum, want_sum * 1e-5);
  }
}

TEST(VectorMath, ExpOfMinusInfinityIsZeroAndNaNPropagates) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const int64_t n : {3, 8, 11}) {  // a partial vector alone, a whole one, one of each
    std::vector<float> x(n, 1.0f);
    x[0] = -inf;
    EXPECT_FLOAT_EQ(vec::exp_shifted(x.data(), n, 1.0f), static_cast<float>(n - 1));
    EXPECT_EQ(x[0], 0.0f);
    EXPECT_EQ(x[n - 1], 1.0f);
    x[n - 1] = std::nanf("");
    EXPECT_TRUE(std::isnan(vec::exp_shifted(x.data(), n, 0.0f)));
    EXPECT_TRUE(std::isnan(x[n - 1]));
  }
}

TEST(VectorMath, MaxOverWholeAndPartialVectors) {
  std::vector<float> x(19);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -static_cast<float>((i * 7) % 19);
  for (size_t at : {0u, 7u, 8u, 18u}) {
    std::vector<float> y = x;
    y[at] = 5.0f;
    EXPECT_EQ(vec::max(y.data(), static_cast<int64_t>(y.size())), 5.0f) << at;
    EXPECT_EQ(vec::max(y.data(), static_cast<int64_t>(at + 1)), 5.0f) << at;
  }
  EXPECT_EQ(vec::max(x.data(), 1), 0.0f);
}

// Every step of 1/256 from -12 to 12, and the far tails, against float64's erfc: the value within
// 1.5e-7 |a| plus an ulp, the slope within 2.5e-7 (ATen's own erf GELU and gelu_backward, on the same
// grid: 3.7e-7 at a = 3.1 and 2.1e-7). Far below zero both are zero, far above the value is a, the slope 1.
TEST(VectorMath, GeluAndItsSlopeMatchFloat64) {
  std::vector<float> a;
  for (float v = -12; v <= 12; v += 1.0f / 256) a.push_back(v);
  for (const float v : {-100.0f, -20.0f, 20.0f, 100.0f}) a.push_back(v);
  a.push_back(0.5f);  // a partial vector at the end, for either width
  std::vector<float> slope = a, h(a.size());
  vec::gelu(slope.data(), h.data(), static_cast<int64_t>(a.size()));
  double worst_h = 0, worst_slope = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], cdf = 0.5 * std::erfc(-x / std::sqrt(2.0));
    const double want_h = x * cdf, want_slope = cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    worst_h = std::max(worst_h, std::abs(h[i] - want_h) / (std::abs(x) * 1.5e-7 + std::abs(want_h) * 0x1p-23 + 1e-30));
    worst_slope = std::max(worst_slope, std::abs(slope[i] - want_slope) / 2.5e-7);
  }
  EXPECT_LE(worst_h, 1.0);
  EXPECT_LE(worst_slope, 1.0);
  EXPECT_EQ(h[a.size() - 2], 100.0f);
  EXPECT_EQ(slope[a.size() - 2], 1.0f);
  EXPECT_EQ(h[a.size() - 5], 0.0f);
  EXPECT_EQ(slope[a.size() - 5], 0.0f);
  std::vector<float> nan = {std::nanf("")}, nan_h(1);
  vec::gelu(nan.data(), nan_h.data(), 1);
  EXPECT_TRUE(std::isnan(nan_h[0]) && std::isnan(nan[0]));
}

}  // namespace
}  // namespace moe
