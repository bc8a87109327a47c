#include "train/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "testing.h"

namespace moe {
namespace {

TEST(AdamW, MatchesTheFormulaInFloat64) {
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  at::Tensor w = at::tensor({0.5f, -1.0f, 2.0f, 0.25f}).view({2, 2}).requires_grad_(true);
  at::Tensor norm = at::tensor({1.0f, 3.0f}).requires_grad_(true);  // 1-D: no weight decay
  AdamW adam({{"w", w}, {"norm", norm}}, o);
  std::vector<double> pw = {0.5, -1.0, 2.0, 0.25}, pn = {1.0, 3.0}, mw(4), vw(4), mn(2), vn(2);
  const double lrs[2] = {0.01, 0.005};
  for (int t = 1; t <= 2; ++t) {
    const std::vector<double> gw = {0.1 * t, -0.2, 0.3, 0.05 * t}, gn = {-0.5, 0.7 * t};
    w.mutable_grad() = at::tensor(std::vector<float>(gw.begin(), gw.end())).view({2, 2});
    norm.mutable_grad() = at::tensor(std::vector<float>(gn.begin(), gn.end()));
    adam.step(lrs[t - 1]);
    const auto update = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                            const std::vector<double>& g, bool decay) {
      for (size_t i = 0; i < p.size(); ++i) {
        if (decay) p[i] *= 1 - lrs[t - 1] * o.weight_decay;
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
        const double mhat = m[i] / (1 - std::pow(o.beta1, t)), vhat = v[i] / (1 - std::pow(o.beta2, t));
        p[i] -= lrs[t - 1] * mhat / (std::sqrt(vhat) + o.eps);
      }
    };
    update(pw, mw, vw, gw, true);
    update(pn, mn, vn, gn, false);
  }
  EXPECT_TRUE(testing::close(w, at::tensor(pw, at::kDouble).view({2, 2}), 1e-6));
  EXPECT_TRUE(testing::close(norm, at::tensor(pn, at::kDouble), 1e-6));
  EXPECT_EQ(adam.steps(), 2);
}

TEST(AdamW, TheFusedLoopAgreesWithTheATenFormula) {
  // adamw_update runs one fused loop on contiguous float32 CPU tensors and ATen's ops otherwise (a
  // GPU, or here a transposed view): the two must agree to float32 rounding, step after step.
  at::manual_seed(31);
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  const at::Tensor p0 = at::randn({40, 30});
  at::Tensor p = p0.clone(), m = at::zeros_like(p), v = at::zeros_like(p);
  at::Tensor pt = p0.t().contiguous().t(), mt = at::zeros_like(pt).t().contiguous().t(), vt = mt.clone();
  ASSERT_FALSE(pt.is_contiguous());
  for (int step = 1; step <= 5; ++step) {
    const at::Tensor g = at::randn({40, 30}) * (step % 2 ? 1e-3 : 10.0);
    adamw_update(p, g, m, v, true, 1e-2, step, o);
    adamw_update(pt, g, mt, vt, true, 1e-2, step, o);
  }
  EXPECT_TRUE(testing::close(p, pt, 1e-6));
  EXPECT_TRUE(testing::close(m, mt, 1e-6));
  EXPECT_TRUE(testing::close(v, vt, 1e-6));
}

TEST(LearningRate, WarmupThenCosine) {
  EXPECT_DOUBLE_EQ(learning_rate(1, 100, 10, 1e-3, 1e-4), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(10, 100, 10, 1e-3, 1e-4), 1e-3);
  EXPECT_NEAR(learning_rate(55, 100, 10, 1e-3, 1e-4), 5.5e-4, 1e-12);  // half-way: the mean
  EXPECT_NEAR(learning_rate(100, 100, 10, 1e-3, 1e-4), 1e-4, 1e-12);
  EXPECT_DOUBLE_EQ(learning_rate(5, 100, 0, 1e-3, 1e-4), 1e-4 + 0.5 * 9e-4 * (1 + std::cos(M_PI * 5 / 100)));
}

// A replicated parameter and an expert shard, as the model's records.
ParameterList records(const at::Tensor& replicated, const at::Tensor& expert) {
  return {{"dense", replicated}, {"experts", expert, Placement::kExpertSharded, 0, 0}};
}

TEST(GradNorm, CountsEveryParameterAndClipsToTheMaximum) {
  at::Tensor a = at::zeros({2}).requires_grad_(true), b = at::zeros({1}).requires_grad_(true);
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  const at::Tensor norm = global_grad_norm(records(a, b), nullptr);
  EXPECT_DOUBLE_EQ(norm.item<double>(), 5.0);
  clip_grads(records(a, b), norm, 1.0);
  EXPECT_NEAR(global_grad_norm(records(a, b), nullptr).item<double>(), 1.0, 1e-6);
  clip_grads(records(a, b), at::tensor(1.0, at::kDouble), 2.0);  // under the maximum: untouched
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-6);
}

TEST(GradNorm, MatchesAFloat64SumOverMillionsOfElements) {
  // Float32 accumulation over tensors this size is off by ~1e-6 (one sdot over them: 1.4e-6).
  at::manual_seed(7);
  at::Tensor a = at::zeros({1000, 1537}).requires_grad_(true), b = at::zeros({3, 70001}).requires_grad_(true);
  a.mutable_grad() = at::randn({1000, 1537});
  b.mutable_grad() = at::randn({3, 70001}) * 3;
  double expected = 0;
  for (const at::Tensor& g : {a.grad(), b.grad()}) {
    const at::Tensor flat = g.contiguous().view({-1});
    const float* v = flat.data_ptr<float>();
    for (int64_t i = 0; i < flat.numel(); ++i) expected += static_cast<double>(v[i]) * v[i];
  }
  EXPECT_NEAR(global_grad_norm(records(a, b), nullptr).item<double>() / std::sqrt(expected), 1.0, 1e-7);
}

}  // namespace
}  // namespace moe
