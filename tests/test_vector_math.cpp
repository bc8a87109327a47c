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

}  // namespace
}  // namespace moe
