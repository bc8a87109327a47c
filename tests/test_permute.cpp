#include "core/permute.h"

#include <gtest/gtest.h>

#include "testing.h"

namespace moe {
namespace {

at::Tensor longs(std::vector<int64_t> v) { return at::tensor(v, at::kLong); }

TEST(Permute, GroupsAssignmentsByExpertThenToken) {
  // token 0 -> experts (1, 0), token 1 -> experts (0, 2)
  const at::Tensor ids = longs({1, 0, 0, 2}).view({2, 2});
  const Permutation p = make_permutation(ids, at::ones({2, 2}, at::kBool), 3);
  EXPECT_TRUE(at::equal(p.token_idx_N, longs({0, 1, 0, 1})));
  EXPECT_TRUE(at::equal(p.slot_idx_N, longs({1, 2, 0, 3})));
  EXPECT_TRUE(at::equal(p.tokens_per_expert_E, longs({2, 1, 1})));
}

TEST(Permute, DroppedAssignmentsAreLeftOut) {
  const at::Tensor ids = longs({1, 0, 0, 2}).view({2, 2});
  const at::Tensor keep = longs({1, 1, 0, 1}).to(at::kBool).view({2, 2});
  const Permutation p = make_permutation(ids, keep, 3);
  EXPECT_TRUE(at::equal(p.token_idx_N, longs({0, 0, 1})));
  EXPECT_TRUE(at::equal(p.slot_idx_N, longs({1, 0, 3})));
  EXPECT_TRUE(at::equal(p.tokens_per_expert_E, longs({1, 1, 1})));
}

TEST(Permute, UnpermuteWeightsAndSumsLikeANaiveLoop) {
  at::manual_seed(3);
  const int64_t T = 6, K = 2, E = 4, D = 5;
  const at::Tensor ids = longs({0, 3, 3, 1, 2, 0, 1, 2, 3, 0, 0, 1}).view({T, K});
  const at::Tensor keep = at::rand({T, K}) > 0.25;
  const at::Tensor probs0 = at::rand({T, K});
  const at::Tensor x0 = at::randn({T, D}), g = at::randn({T, D});
  const Permutation perm = make_permutation(ids, keep, E);

  // Each row passes through a per-expert scale so that the order of rows matters.
  const at::Tensor scale0 = at::rand({E}) + 0.5;
  at::Tensor x = x0.clone().requires_grad_(true), probs = probs0.clone().requires_grad_(true);
  const at::Tensor rows = permute(x, perm);
  const at::Tensor expert_of_row = ids.reshape(-1).index_select(0, perm.slot_idx_N);
  const at::Tensor y = unpermute(rows * scale0.index_select(0, expert_of_row).unsqueeze(1), perm, probs);
  (y * g).sum().backward();

  at::Tensor y_ref = at::zeros({T, D}, at::kDouble), dx_ref = at::zeros({T, D}, at::kDouble);
  at::Tensor dp_ref = at::zeros({T, K}, at::kDouble);
  const at::Tensor xd = x0.to(at::kDouble), gd = g.to(at::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < K; ++k) {
      if (!keep[t][k].item<bool>()) continue;
      const double s = scale0[ids[t][k].item<int64_t>()].item<double>(), p = probs0[t][k].item<double>();
      y_ref[t] += p * s * xd[t];
      dx_ref[t] += p * s * gd[t];
      dp_ref[t][k] = s * (xd[t] * gd[t]).sum().item<double>();
    }
  }
  EXPECT_TRUE(testing::close(y, y_ref, 1e-6));
  EXPECT_TRUE(testing::close(x.grad(), dx_ref, 1e-6));
  EXPECT_TRUE(testing::close(probs.grad(), dp_ref, 1e-6));
}

TEST(Permute, EverythingDropped) {
  const at::Tensor ids = longs({0, 1, 1, 0}).view({2, 2});
  const Permutation p = make_permutation(ids, at::zeros({2, 2}, at::kBool), 2);
  EXPECT_EQ(p.token_idx_N.numel(), 0);
  const at::Tensor y = unpermute(permute(at::randn({2, 3}), p), p, at::rand({2, 2}));
  EXPECT_EQ(y.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(y.size(0), 2);
}

}  // namespace
}  // namespace moe
