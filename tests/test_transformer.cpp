#include "core/transformer.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/check.h"
#include "testing.h"

namespace moe {
namespace {

TEST(RMSNorm, MatchesFloat64Loop) {
  at::manual_seed(1);
  RMSNorm norm(6, 1e-5);
  {
    at::NoGradGuard no_grad;
    norm->weight.copy_(at::rand({6}) + 0.5);
  }
  const at::Tensor x = at::randn({3, 6});
  at::Tensor want = at::empty({3, 6}, at::kDouble);
  for (int64_t t = 0; t < 3; ++t) {
    double ms = 0;
    for (int64_t i = 0; i < 6; ++i) ms += std::pow(x[t][i].item<double>(), 2) / 6;
    for (int64_t i = 0; i < 6; ++i)
      want[t][i] = x[t][i].item<double>() / std::sqrt(ms + 1e-5) * norm->weight[i].item<double>();
  }
  EXPECT_TRUE(testing::close(norm->forward(x), want, 1e-6));
}

// Rotate-half rotary embedding, element by element, in float64.
at::Tensor naive_rope(const at::Tensor& x, double theta) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), hd = x.size(3), half = hd / 2;
  // Elements are written into a fresh tensor by copy_, which autograd records, so gradients flow.
  at::Tensor xd = x.to(at::kDouble), out = at::zeros_like(xd);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = s * std::pow(theta, -2.0 * i / hd);
          const at::Tensor a = xd[b][s][h][i], c = xd[b][s][h][i + half];
          out[b][s][h][i] = a * std::cos(angle) - c * std::sin(angle);
          out[b][s][h][i + half] = c * std::cos(angle) + a * std::sin(angle);
        }
  return out;
}

TEST(Rope, MatchesElementwiseRotationAndKeepsNorms) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({2, 5, 3, 8});
  const at::Tensor y = apply_rope(x, 500.0);
  EXPECT_TRUE(testing::close(y, naive_rope(x, 500.0), 1e-6));
  EXPECT_TRUE(testing::close(y.norm(2, -1), x.norm(2, -1), 1e-6));
  // Position 0 is not rotated.
  EXPECT_TRUE(testing::close(y.select(1, 0), x.select(1, 0), 0, 0));
}

TEST(Rope, DotProductsDependOnlyOnRelativePosition) {
  at::manual_seed(3);
  const at::Tensor q = at::randn({1, 1, 1, 8}).expand({1, 6, 1, 8}).contiguous();
  const at::Tensor k = at::randn({1, 1, 1, 8}).expand({1, 6, 1, 8}).contiguous();
  const at::Tensor rq = apply_rope(q, 10000.0), rk = apply_rope(k, 10000.0);
  const auto dot = [&](int64_t i, int64_t j) { return (rq[0][i][0] * rk[0][j][0]).sum().item<double>(); };
  EXPECT_NEAR(dot(3, 1), dot(5, 3), 1e-5);
  EXPECT_NEAR(dot(2, 2), dot(0, 0), 1e-5);
}

// Causal grouped-query attention as a loop over batch, head and query position, in float64.
at::Tensor naive_attention(const at::Tensor& x, Attention& attn, const at::Tensor& wq, const at::Tensor& wk,
                           const at::Tensor& wv, const at::Tensor& wo) {
  const auto& o = attn->options();
  const int64_t B = x.size(0), S = x.size(1), H = o.num_attention_heads, KV = o.kv_heads(), hd = attn->head_dim();
  const at::Tensor q = naive_rope(at::matmul(x, wq.t()).view({B, S, H, hd}), o.rope_theta);
  const at::Tensor k = naive_rope(at::matmul(x, wk.t()).view({B, S, KV, hd}), o.rope_theta);
  const at::Tensor v = at::matmul(x, wv.t()).view({B, S, KV, hd});
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < S; ++i) {
      std::vector<at::Tensor> heads;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t g = h / (H / KV);
        std::vector<at::Tensor> scores;
        for (int64_t j = 0; j <= i; ++j) scores.push_back((q[b][i][h] * k[b][j][g]).sum() / std::sqrt(double(hd)));
        const at::Tensor s = at::stack(scores);
        const at::Tensor p = at::exp(s - s.max().detach());
        at::Tensor acc = at::zeros({hd}, x.options());
        for (int64_t j = 0; j <= i; ++j) acc = acc + p[j] / p.sum() * v[b][j][g];
        heads.push_back(acc);
      }
      rows.push_back(at::matmul(wo, at::cat(heads)));
    }
  }
  return at::stack(rows).view({B, S, -1});
}

TEST(Attention, CausalGqaMatchesFloat64LoopWithGradients) {
  at::manual_seed(4);
  TransformerOptions o;
  o.hidden_size = 16;
  o.num_attention_heads = 4;
  o.num_kv_heads = 2;
  o.rope_theta = 1000.0;
  o.init_std = 0.3;
  Attention attn(o);
  const at::Tensor x0 = at::randn({2, 5, 16}), g = at::randn({2, 5, 16});
  at::Tensor x = x0.clone().requires_grad_(true);
  (attn->forward(x) * g).sum().backward();

  const auto d = [](const at::Tensor& t) { return t.detach().to(at::kDouble).requires_grad_(true); };
  at::Tensor xd = d(x0), wq = d(attn->q_proj), wk = d(attn->k_proj), wv = d(attn->v_proj), wo = d(attn->o_proj);
  const at::Tensor want = naive_attention(xd, attn, wq, wk, wv, wo);
  (want * g.to(at::kDouble)).sum().backward();

  EXPECT_TRUE(testing::close(attn->forward(x0), want, 1e-5));
  EXPECT_TRUE(testing::close(x.grad(), xd.grad(), 1e-5));
  EXPECT_TRUE(testing::close(attn->q_proj.grad(), wq.grad(), 1e-5));
  EXPECT_TRUE(testing::close(attn->k_proj.grad(), wk.grad(), 1e-5));
  EXPECT_TRUE(testing::close(attn->v_proj.grad(), wv.grad(), 1e-5));
  EXPECT_TRUE(testing::close(attn->o_proj.grad(), wo.grad(), 1e-5));
}

TEST(Attention, FutureTokensDoNotChangeThePast) {
  at::manual_seed(5);
  TransformerOptions o;
  o.hidden_size = 8;
  o.num_attention_heads = 2;
  o.num_kv_heads = 1;
  Attention attn(o);
  at::Tensor x = at::randn({1, 6, 8});
  const at::Tensor before = attn->forward(x);
  x[0][5] = at::randn({8}) * 10;
  EXPECT_TRUE(testing::close(attn->forward(x).narrow(1, 0, 5), before.narrow(1, 0, 5), 0, 0));
}

TEST(Attention, RejectsHeadsThatDoNotDivide) {
  TransformerOptions o;
  o.hidden_size = 16;
  o.num_attention_heads = 3;
  o.num_kv_heads = 1;
  EXPECT_THROW(Attention{o}, Error);
  o.num_attention_heads = 4;
  o.num_kv_heads = 3;
  EXPECT_THROW(Attention{o}, Error);
}

}  // namespace
}  // namespace moe
