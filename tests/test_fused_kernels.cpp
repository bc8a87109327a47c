#include "core/fused_kernels.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/check.h"
#include "testing.h"

namespace moe {
namespace {

at::Tensor leaf(const at::Tensor& t) { return t.detach().clone().requires_grad_(true); }

// RMSNorm row by row in float64.
at::Tensor naive_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  std::vector<at::Tensor> rows;
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  for (int64_t r = 0; r < x2.size(0); ++r) {
    at::Tensor ss = at::zeros({}, x.options());
    for (int64_t i = 0; i < x2.size(1); ++i) ss = ss + x2[r][i] * x2[r][i];
    rows.push_back(x2[r] / at::sqrt(ss / static_cast<double>(x2.size(1)) + eps) * w);
  }
  return at::stack(rows).view(x.sizes());
}

TEST(FusedRMSNorm, MatchesFloat64LoopWithGradients) {
  at::manual_seed(21);
  const at::Tensor x0 = at::randn({3, 5, 12}) * 3, w0 = at::rand({12}) + 0.5, g = at::randn({3, 5, 12});
  at::Tensor x = leaf(x0), w = leaf(w0);
  const at::Tensor y = rms_norm(x, w, 1e-5);
  (y * g).sum().backward();
  at::Tensor xd = leaf(x0.to(at::kDouble)), wd = leaf(w0.to(at::kDouble));
  const at::Tensor want = naive_rms_norm(xd, wd, 1e-5);
  (want * g.to(at::kDouble)).sum().backward();
  EXPECT_TRUE(testing::close(y, want, 1e-6));
  EXPECT_TRUE(testing::close(x.grad(), xd.grad(), 1e-6));
  EXPECT_TRUE(testing::close(w.grad(), wd.grad(), 1e-6));
}

TEST(FusedRMSNorm, TheATenFormulaForOtherLayoutsAgrees) {
  at::manual_seed(22);
  const at::Tensor x0 = at::randn({12, 6}), w0 = at::rand({12}) + 0.5, g = at::randn({6, 12});
  at::Tensor a = leaf(x0), b = leaf(x0), wa = leaf(w0), wb = leaf(w0);
  (rms_norm(a.t(), wa, 1e-5) * g).sum().backward();              // transposed: the ATen formula
  (rms_norm(b.t().contiguous(), wb, 1e-5) * g).sum().backward();  // contiguous: the fused kernel
  EXPECT_TRUE(testing::close(a.grad(), b.grad(), 1e-6));
  EXPECT_TRUE(testing::close(wa.grad(), wb.grad(), 1e-6));
}

TEST(FusedRMSNorm, BFloat16ComputesInFloat32) {
  at::manual_seed(23);
  const at::Tensor xb = at::randn({4, 16}).to(at::kBFloat16), w = at::rand({16}) + 0.5;
  const at::Tensor got = rms_norm(xb, w, 1e-5);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  // Against float64 of the rounded input, then rounded: at most one bf16 step apart.
  const at::Tensor want = naive_rms_norm(xb.to(at::kDouble), w.to(at::kDouble), 1e-5);
  EXPECT_TRUE(testing::close(got, want, 1.0 / 128));
}

TEST(FusedRotateHalf, MatchesFloat64WithGradient) {
  at::manual_seed(24);
  const int64_t B = 2, S = 5, H = 3, half = 4;
  const at::Tensor x0 = at::randn({B, S, H, 2 * half}), g = at::randn({B, S, H, 2 * half});
  const at::Tensor angles = at::rand({S, half}) * 6;
  at::Tensor x = leaf(x0);
  const at::Tensor y = rotate_half(x, angles.cos(), angles.sin());
  (y * g).sum().backward();
  // In float64, element by element: a rotation of each (x_i, x_{half+i}) pair by its angle.
  at::Tensor want = at::empty({B, S, H, 2 * half}, at::kDouble), grad = at::empty_like(want);
  const auto xa = x0.to(at::kDouble), ga = g.to(at::kDouble), an = angles.to(at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double c = std::cos(an[s][i].item<double>()), n = std::sin(an[s][i].item<double>());
          const double x1 = xa[b][s][h][i].item<double>(), x2 = xa[b][s][h][half + i].item<double>();
          const double g1 = ga[b][s][h][i].item<double>(), g2 = ga[b][s][h][half + i].item<double>();
          want[b][s][h][i] = x1 * c - x2 * n;
          want[b][s][h][half + i] = x2 * c + x1 * n;
          grad[b][s][h][i] = g1 * c + g2 * n;  // the transposed rotation
          grad[b][s][h][half + i] = g2 * c - g1 * n;
        }
  EXPECT_TRUE(testing::close(y, want, 1e-6));
  EXPECT_TRUE(testing::close(x.grad(), grad, 1e-6));
}

// Element by element in float64: h = a / (1 + e^-a) * b and its two partial derivatives, by hand. The
// sizes leave a partial vector at the end; the range reaches where e^-a overflows a float. Transposed
// (non-contiguous) tensors take ATen's formula, which must agree.
TEST(FusedSwiGLU, MatchesFloat64ElementwiseWithGradients) {
  at::manual_seed(24);
  const at::Tensor a = at::cat({at::randn({5, 37}) * 4, at::linspace(-95, 95, 37).view({1, 37})}),
                   b = at::randn({6, 37}), dh = at::randn({6, 37});
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble), gd = dh.to(at::kDouble);
  at::Tensor want = at::empty_like(ad), want_da = at::empty_like(ad), want_db = at::empty_like(ad);
  const double *ap = ad.data_ptr<double>(), *bp = bd.data_ptr<double>(), *gp = gd.data_ptr<double>();
  for (int64_t i = 0; i < ad.numel(); ++i) {
    const double s = 1 / (1 + std::exp(-ap[i]));
    want.data_ptr<double>()[i] = ap[i] * s * bp[i];
    want_db.data_ptr<double>()[i] = gp[i] * ap[i] * s;
    want_da.data_ptr<double>()[i] = gp[i] * bp[i] * (s + ap[i] * s * (1 - s));
  }
  for (const bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "ATen's formula" : "the fused kernel");
    const auto lay = [transposed](const at::Tensor& t) { return transposed ? t.t().contiguous().t() : t; };
    at::Tensor h = lay(at::empty_like(a)), da = lay(at::empty_like(a)), db = lay(at::empty_like(a));
    swiglu_out(h, lay(a), lay(b));
    swiglu_backward_out(da, db, lay(a), lay(b), lay(dh));
    EXPECT_EQ(h.is_contiguous(), !transposed);
    EXPECT_TRUE(testing::close(h, want, 1e-6));
    EXPECT_TRUE(testing::close(da, want_da, 1e-6));
    EXPECT_TRUE(testing::close(db, want_db, 1e-6));
  }
}

// Exact GELU element by element in float64, and its backward through what gelu_out leaves in its input:
// the fused kernel (contiguous), ATen's gelu and gelu_backward (transposed), and the fused kernel writing
// into a transposed output.
TEST(FusedGELU, MatchesFloat64ElementwiseWithGradients) {
  at::manual_seed(25);
  const at::Tensor a = at::cat({at::randn({5, 37}) * 4, at::linspace(-95, 95, 37).view({1, 37})}),
                   dh = at::randn({6, 37});
  const at::Tensor ad = a.to(at::kDouble), cdf = 0.5 * at::erfc(-ad / std::sqrt(2.0));
  const at::Tensor want = ad * cdf, want_da = dh.to(at::kDouble) * (cdf + ad * at::exp(-0.5 * ad * ad) / std::sqrt(2 * M_PI));
  for (const int layout : {0, 1, 2}) {
    SCOPED_TRACE(layout == 0 ? "the fused kernel" : layout == 1 ? "ATen's formula" : "a transposed output");
    const auto lay = [](const at::Tensor& t) { return t.t().contiguous().t(); };
    at::Tensor saved = layout == 1 ? lay(a) : a.clone(), h = layout == 0 ? at::empty_like(a) : lay(at::empty_like(a));
    gelu_out(h, saved);
    at::Tensor da = layout == 1 ? lay(dh) : dh.clone();
    gelu_backward_(da, saved);
    EXPECT_TRUE(testing::close(h, want, 1e-6));
    EXPECT_TRUE(testing::close(da, want_da, 1e-6));
  }
}

TEST(FusedKernels, RefuseMismatchedShapes) {
  EXPECT_THROW(rms_norm(at::randn({2, 5}), at::ones({4}), 1e-5), Error);
  at::Tensor h = at::empty({2, 5});
  EXPECT_THROW(swiglu_out(h, at::randn({2, 5}), at::randn({5, 2})), Error);
  at::Tensor a = at::randn({5, 2});
  EXPECT_THROW(gelu_out(h, a), Error);
  EXPECT_THROW(rotate_half(at::randn({1, 3, 1, 8}), at::ones({2, 4}), at::ones({2, 4})), Error);
}

}  // namespace
}  // namespace moe
