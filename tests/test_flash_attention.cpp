#include "core/flash_attention.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/check.h"
#include "testing.h"

namespace moe {
namespace {

// Causal attention as a loop over rows and the keys up to each, in float64.
at::Tensor naive_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t N = q.size(0), S = q.size(1), d = q.size(2);
  std::vector<at::Tensor> rows;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < S; ++i) {
      std::vector<at::Tensor> s;
      for (int64_t j = 0; j <= i; ++j) s.push_back((q[n][i] * k[n][j]).sum() / std::sqrt(double(d)));
      const at::Tensor e = at::exp(at::stack(s) - at::stack(s).max().detach());
      at::Tensor acc = at::zeros({d}, q.options());
      for (int64_t j = 0; j <= i; ++j) acc = acc + e[j] / e.sum() * v[n][j];
      rows.push_back(acc);
    }
  }
  return at::stack(rows).view({N, S, d});
}

struct Case {
  FlashBlocks blocks;
  double q_scale;  // large scores test the online softmax's rescaling
};

class FlashAttentionTest : public ::testing::TestWithParam<Case> {};

// Both kernels on the CPU (its own and the ATen tiles a GPU runs), each against float64.
TEST_P(FlashAttentionTest, MatchesFloat64LoopWithGradients) {
  const Case c = GetParam();
  at::manual_seed(11);
  const int64_t N = 3, S = 13, d = 8;
  const at::Tensor q0 = at::randn({N, S, d}) * c.q_scale, k0 = at::randn({N, S, d}), v0 = at::randn({N, S, d});
  const at::Tensor g = at::randn({N, S, d});
  const auto d64 = [](const at::Tensor& t) { return t.to(at::kDouble).requires_grad_(true); };
  at::Tensor qd = d64(q0), kd = d64(k0), vd = d64(v0);
  const at::Tensor want = naive_causal(qd, kd, vd);
  (want * g.to(at::kDouble)).sum().backward();

  // Float32 scores carry their own rounding, |s| 2^-24, into the exponent: at large scores (q_scale 30,
  // |s| ~ 100) that is the error of any float32 attention, whatever its order of operations.
  const double max_score = (at::bmm(q0, k0.transpose(1, 2)).abs().max().item<double>() / std::sqrt(double(d)));
  const double rtol = 2e-6 + 2 * max_score * std::ldexp(1.0, -24);
  const auto dev = testing::device();
  const auto leaf = [&dev](const at::Tensor& t) { return t.to(dev).clone().requires_grad_(true); };
  for (bool generic : {false, true}) {
    SCOPED_TRACE(generic ? "ATen tiles" : "default kernel");
    at::Tensor q = leaf(q0), k = leaf(k0), v = leaf(v0);
    FlashBlocks blocks = c.blocks;
    blocks.generic = generic;
    const at::Tensor out = causal_attention(q, k, v, blocks);
    (out * g.to(dev)).sum().backward();
    EXPECT_TRUE(testing::close(out, want, rtol));
    EXPECT_TRUE(testing::close(q.grad(), qd.grad(), rtol));
    EXPECT_TRUE(testing::close(k.grad(), kd.grad(), rtol));
    EXPECT_TRUE(testing::close(v.grad(), vd.grad(), rtol));
  }
}

// Blocks that divide S, blocks that do not, single rows, and blocks larger than the sequence.
INSTANTIATE_TEST_SUITE_P(Blocks, FlashAttentionTest,
                         ::testing::Values(Case{{4, 4}, 1.0}, Case{{5, 3}, 1.0}, Case{{1, 1}, 1.0},
                                           Case{{64, 256}, 1.0}, Case{{3, 7}, 1.0}, Case{{4, 2}, 30.0},
                                           Case{{2, 5}, 30.0}, Case{{4, 6}, 1.0}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& c = info.param;
                           return "q" + std::to_string(c.blocks.query) + "_k" + std::to_string(c.blocks.key) +
                                  "_scale" + std::to_string(static_cast<int>(c.q_scale));
                         });

TEST(FlashAttention, BFloat16InputsComputeInFloat32AndKeepTheirDtype) {
  at::manual_seed(12);
  const auto dev = testing::device();
  const auto bf = [&dev](const at::Tensor& t) { return t.to(dev).to(at::kBFloat16).requires_grad_(true); };
  at::Tensor qb = bf(at::randn({2, 9, 8})), kb = bf(at::randn({2, 9, 8})), vb = bf(at::randn({2, 9, 8}));
  const at::Tensor g = at::randn({2, 9, 8}, dev).to(at::kBFloat16);
  const at::Tensor out = causal_attention(qb, kb, vb, {4, 4});
  (out * g).sum().backward();
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  // The inputs' own rounding is all that separates it from float32 attention of the rounded inputs, in
  // the forward and in every gradient.
  const auto f = [](const at::Tensor& t) { return t.detach().to(at::kFloat).requires_grad_(true); };
  at::Tensor q = f(qb), k = f(kb), v = f(vb);
  const at::Tensor want = causal_attention(q, k, v, {4, 4});
  (want * g.to(at::kFloat)).sum().backward();
  EXPECT_TRUE(testing::close(out, want.to(at::kBFloat16), 0, 0));
  for (const auto& [b, w] : {std::pair{qb, q}, {kb, k}, {vb, v}}) {
    EXPECT_EQ(b.grad().scalar_type(), at::kBFloat16);
    EXPECT_TRUE(testing::close(b.grad(), w.grad().to(at::kBFloat16), 0, 0));
  }
}

TEST(FlashAttention, RejectsMismatchedShapesAndEmptyBlocks) {
  const at::Tensor a = at::randn({2, 5, 4}), b = at::randn({2, 6, 4});
  EXPECT_THROW(causal_attention(a, b, b), Error);
  EXPECT_THROW(causal_attention(a, a, a, {0, 4}), Error);
}

}  // namespace
}  // namespace moe
