#include "core/experts.h"

#include <gtest/gtest.h>

#include "core/check.h"
#include "reference.h"
#include "testing.h"

namespace moe {
namespace {

struct Grads {
  at::Tensor y, dx, dw1, dw3, dw2;
};

Experts make_experts(ExpertType type, int64_t E = 4, int64_t D = 8, int64_t F = 12) {
  ExpertsOptions o;
  o.num_experts = E;
  o.hidden_size = D;
  o.ffn_hidden_size = F;
  o.type = type;
  o.init_std = 0.3;
  return Experts(o);
}

template <typename Fn>
Grads run(Experts& experts, const at::Tensor& x0, const at::Tensor& g, Fn fn) {
  experts->zero_grad();
  at::Tensor x = x0.clone().requires_grad_(true);
  at::Tensor y = fn(x);
  (y * g).sum().backward();
  Grads r{y.detach(), x.grad(), experts->w1.grad(), {}, experts->w2.grad()};
  if (experts->w3.defined()) r.dw3 = experts->w3.grad();
  for (auto& p : experts->parameters()) p.mutable_grad() = at::Tensor();
  return r;
}

// Float64 per-row loop, with autograd, independent of both Experts paths.
Grads naive(Experts& experts, const at::Tensor& x0, const at::Tensor& g, const std::vector<int64_t>& counts) {
  const bool swiglu = experts->options().type == ExpertType::kSwiGLU;
  ref::Weights w;
  w.w1 = experts->w1.detach().to(at::kDouble).requires_grad_(true);
  w.w2 = experts->w2.detach().to(at::kDouble).requires_grad_(true);
  if (swiglu) w.w3 = experts->w3.detach().to(at::kDouble).requires_grad_(true);
  at::Tensor x = x0.to(at::kDouble).requires_grad_(true);
  std::vector<at::Tensor> rows;
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    for (int64_t i = 0; i < counts[e]; ++i, ++row) rows.push_back(ref::expert_ffn(x[row], w, e, swiglu));
  }
  at::Tensor y = rows.empty() ? at::zeros({0, x.size(1)}, x.options()) : at::stack(rows);
  if (!rows.empty()) (y * g.to(at::kDouble)).sum().backward();
  const auto grad = [&](const at::Tensor& t) { return t.grad().defined() ? t.grad() : at::zeros_like(t); };
  return {y.detach(), grad(x), grad(w.w1), swiglu ? grad(w.w3) : at::Tensor(), grad(w.w2)};
}

void expect_same(const Grads& a, const Grads& b, double rtol) {
  EXPECT_TRUE(testing::close(a.y, b.y, rtol));
  EXPECT_TRUE(testing::close(a.dx, b.dx, rtol));
  EXPECT_TRUE(testing::close(a.dw1, b.dw1, rtol));
  EXPECT_TRUE(testing::close(a.dw2, b.dw2, rtol));
  if (b.dw3.defined()) {
    EXPECT_TRUE(testing::close(a.dw3, b.dw3, rtol));
  }
}

class ExpertsTest : public ::testing::TestWithParam<ExpertType> {};

TEST_P(ExpertsTest, GroupedMatchesLoopAndFloat64Reference) {
  at::manual_seed(1);
  Experts experts = make_experts(GetParam());
  const std::vector<int64_t> counts = {3, 0, 5, 1};  // an expert with no tokens
  const at::Tensor x = at::randn({9, 8});
  const at::Tensor g = at::randn({9, 8});
  const Grads grouped = run(experts, x, g, [&](const at::Tensor& t) { return experts->forward(t, counts); });
  const Grads loop = run(experts, x, g, [&](const at::Tensor& t) { return experts->forward_reference(t, counts); });
  const Grads exact = naive(experts, x, g, counts);
  expect_same(grouped, exact, 1e-5);
  expect_same(loop, exact, 1e-5);
  // The expert that saw no token gets exactly zero gradient.
  EXPECT_EQ(grouped.dw1[1].abs().max().item<double>(), 0.0);
  EXPECT_EQ(grouped.dw2[1].abs().max().item<double>(), 0.0);
}

TEST_P(ExpertsTest, NoTokensAtAll) {
  Experts experts = make_experts(GetParam());
  const std::vector<int64_t> counts = {0, 0, 0, 0};
  const at::Tensor x = at::zeros({0, 8});
  const Grads grouped =
      run(experts, x, at::zeros({0, 8}), [&](const at::Tensor& t) { return experts->forward(t, counts); });
  EXPECT_EQ(grouped.y.size(0), 0);
  EXPECT_EQ(grouped.dw1.abs().sum().item<double>(), 0.0);
}

TEST_P(ExpertsTest, AllTokensToOneExpert) {
  at::manual_seed(2);
  Experts experts = make_experts(GetParam());
  const std::vector<int64_t> counts = {0, 0, 7, 0};
  const at::Tensor x = at::randn({7, 8}), g = at::randn({7, 8});
  const Grads grouped = run(experts, x, g, [&](const at::Tensor& t) { return experts->forward(t, counts); });
  expect_same(grouped, naive(experts, x, g, counts), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Types, ExpertsTest, ::testing::Values(ExpertType::kSwiGLU, ExpertType::kGELU),
                         [](const auto& info) { return info.param == ExpertType::kSwiGLU ? "swiglu" : "gelu"; });

TEST(Experts, RejectsCountsThatDoNotMatchTheInput) {
  Experts experts = make_experts(ExpertType::kSwiGLU);
  EXPECT_THROW(experts->forward(at::randn({5, 8}), {1, 1, 1, 1}), Error);
  EXPECT_THROW(experts->forward(at::randn({4, 8}), {1, 1, 2}), Error);
}

}  // namespace
}  // namespace moe
