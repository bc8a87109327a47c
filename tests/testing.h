#pragma once
// Comparison helpers shared by the tests.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>

namespace moe::testing {

// The device the tests that can run on a GPU put the code under test on: MOE_TEST_DEVICE (cpu when
// unset; scripts/gpu_check.sh sets cuda). References stay on the CPU, in float64.
inline at::Device device() {
  const char* env = std::getenv("MOE_TEST_DEVICE");
  return at::Device(env && *env ? env : "cpu");
}

// |actual - expected| <= rtol * max|expected| + atol, elementwise; reports the worst element.
inline ::testing::AssertionResult close(const at::Tensor& actual, const at::Tensor& expected, double rtol,
                                        double atol = 1e-7) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor (actual " << actual.defined() << ", expected "
                                         << expected.defined() << ")";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != " << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  const at::Tensor a = actual.detach().cpu().to(at::kDouble), e = expected.detach().cpu().to(at::kDouble);
  const double scale = e.abs().max().item<double>();
  const double err = (a - e).abs().max().item<double>();
  if (err <= rtol * scale + atol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << rtol << " * " << scale << " + "
                                       << atol;
}

}  // namespace moe::testing
