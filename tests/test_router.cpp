#include "core/router.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/check.h"
#include "testing.h"

namespace moe {
namespace {

TransformerOptions tiny_options(int64_t E, int64_t K) {
  TransformerOptions o;
  o.hidden_size = 4;
  o.num_attention_heads = 2;
  o.moe.router.num_experts = E;
  o.moe.router.top_k = K;
  o.moe.router.aux_loss_coeff = 0.0;
  return o;
}

at::Tensor ids_of(const Routing& r) { return r.expert_ids_TK; }

TEST(Router, AuxAndZLossMatchHandComputedValues) {
  // Two tokens, both with softmax scores [0.25, 0.75]: both go to expert 1 (top-1).
  // f = [0, 1], P = [0.25, 0.75] -> aux = 2 * (0 * 0.25 + 1 * 0.75) = 1.5; z = ln(4)^2.
  Router router(tiny_options(2, 1));
  const double l3 = std::log(3.0);
  const at::Tensor logits = at::tensor({0.0, l3, 0.0, l3}, at::kFloat).view({2, 2});
  const Routing r = router->route(logits, /*training=*/true);
  EXPECT_NEAR(r.aux_loss.item<double>(), 1.5, 1e-6);
  EXPECT_NEAR(r.z_loss.item<double>(), std::pow(std::log(4.0), 2), 1e-6);
  EXPECT_NEAR(r.entropy.item<double>(), -(0.25 * std::log(0.25) + 0.75 * std::log(0.75)), 1e-6);
  EXPECT_EQ(ids_of(r)[0][0].item<int64_t>(), 1);
  EXPECT_EQ(ids_of(r)[1][0].item<int64_t>(), 1);
  EXPECT_EQ(r.tokens_per_expert_E[1].item<int64_t>(), 2);
  // normalize_topk with k=1 makes the weight 1; without, it is the raw score 0.75.
  EXPECT_NEAR(r.probs_TK[0][0].item<double>(), 1.0, 1e-7);
  auto o = tiny_options(2, 1);
  o.moe.router.normalize_topk = false;
  EXPECT_NEAR(Router(o)->route(logits, true).probs_TK[0][0].item<double>(), 0.75, 1e-7);
}

TEST(Router, BalancedRoutingGivesAuxLossOne) {
  Router router(tiny_options(2, 1));
  const double l3 = std::log(3.0);
  const at::Tensor logits = at::tensor({0.0, l3, l3, 0.0}, at::kFloat).view({2, 2});
  EXPECT_NEAR(router->route(logits, true).aux_loss.item<double>(), 1.0, 1e-6);
}

TEST(Router, SequenceScopeAveragesTheLossOfEachSequence) {
  // Sequence 1: both tokens to expert 1 with scores [0.25, 0.75]: 2 * (1 * 0.75) = 1.5. Sequence 2: one
  // token each way, P = [0.5, 0.5]: 1. Their mean: 1.25. Over the micro-batch instead: f = [1/4, 3/4],
  // P = [0.375, 0.625]: 2 * (0.09375 + 0.46875) = 1.125.
  auto o = tiny_options(2, 1);
  const double l3 = std::log(3.0);
  const at::Tensor logits = at::tensor({0.0, l3, 0.0, l3, l3, 0.0, 0.0, l3}, at::kFloat).view({4, 2});
  EXPECT_NEAR(Router(o)->route(logits, true, 2).aux_loss.item<double>(), 1.125, 1e-6);
  o.moe.router.aux_loss_scope = AuxLossScope::kSequence;
  EXPECT_NEAR(Router(o)->route(logits, true, 2).aux_loss.item<double>(), 1.25, 1e-6);
  EXPECT_NEAR(Router(o)->route(logits, true, 0).aux_loss.item<double>(), 1.125, 1e-6);  // one sequence
  EXPECT_THROW(Router(o)->route(logits, true, 3), Error);
}

TEST(Router, ScalingFactorMultipliesTheNormalisedWeights) {
  auto o = tiny_options(4, 2);
  o.moe.router.routed_scaling_factor = 2.5;
  const at::Tensor logits = at::tensor({3.0f, 1.0f, 0.0f, -1.0f}).view({1, 4});
  const Routing r = Router(o)->route(logits, true);
  EXPECT_NEAR(r.probs_TK.sum().item<double>(), 2.5, 1e-6);
  EXPECT_NEAR(r.probs_TK[0][0].item<double>(), 2.5 * std::exp(3.0) / (std::exp(3.0) + std::exp(1.0)), 1e-5);
}

TEST(Router, GroupsPickTheBestTwoSumsThenExperts) {
  // Groups {0,1}, {2,3}, {4,5}. Expert 4 scores highest, but its group's two best sum to less than
  // group {0,1}'s: with one group, top-2 is experts 0 and 1.
  auto o = tiny_options(6, 2);
  o.moe.router.num_groups = 3;
  o.moe.router.group_topk = 1;
  o.moe.router.score_function = ScoreFunction::kSigmoid;
  const at::Tensor logits = at::tensor({2.0f, 1.8f, -3.0f, -3.0f, 2.5f, -2.0f}).view({1, 6});
  const Routing r = Router(o)->route(logits, true);
  EXPECT_EQ(r.expert_ids_TK[0][0].item<int64_t>(), 0);
  EXPECT_EQ(r.expert_ids_TK[0][1].item<int64_t>(), 1);
  o.moe.router.group_topk = 2;  // groups {0,1} and {4,5}: experts 4 and 0
  const Routing r2 = Router(o)->route(logits, true);
  EXPECT_EQ(r2.expert_ids_TK[0][0].item<int64_t>(), 4);
  EXPECT_EQ(r2.expert_ids_TK[0][1].item<int64_t>(), 0);
}

TEST(Router, LossIsCoefficientWeightedSum) {
  auto o = tiny_options(2, 1);
  o.moe.router.aux_loss_coeff = 0.01;
  o.moe.router.z_loss_coeff = 0.001;
  const double l3 = std::log(3.0);
  const at::Tensor logits = at::tensor({0.0, l3, 0.0, l3}, at::kFloat).view({2, 2});
  const Routing r = Router(o)->route(logits, true);
  EXPECT_NEAR(r.loss.item<double>(), 0.01 * 1.5 + 0.001 * std::pow(std::log(4.0), 2), 1e-7);
}

TEST(Router, CapacityFormula) {
  auto o = tiny_options(8, 2);
  Router r(o);
  EXPECT_EQ(r->capacity(4096, 1.25), 1280);  // ceil(1.25 * 4096 * 2 / 8)
  EXPECT_EQ(r->capacity(10, 1.0), 3);        // ceil(2.5)
  EXPECT_EQ(r->capacity(10, 0.0), 0);
  EXPECT_EQ(r->capacity(10, std::nullopt), -1);
  Router r3(tiny_options(3, 1));
  EXPECT_EQ(r3->capacity(10, 1.0), 4);  // ceil(3.33)
}

TEST(Router, DropPoliciesKeepHighestGatesOrEarliestTokens) {
  const at::Tensor ids = at::tensor({0, 0, 0, 1}, at::kLong).view({4, 1});
  const at::Tensor probs = at::tensor({0.2, 0.9, 0.5, 0.7}, at::kFloat).view({4, 1});
  const at::Tensor by_prob = capacity_keep_mask(ids, probs, 2, 2, DropPolicy::kProbability);
  const at::Tensor by_pos = capacity_keep_mask(ids, probs, 2, 2, DropPolicy::kPosition);
  EXPECT_TRUE(at::equal(by_prob.view(-1), at::tensor({0, 1, 1, 1}, at::kLong).to(at::kBool)));
  EXPECT_TRUE(at::equal(by_pos.view(-1), at::tensor({1, 1, 0, 1}, at::kLong).to(at::kBool)));
  const at::Tensor none = capacity_keep_mask(ids, probs, 2, 0, DropPolicy::kPosition);
  EXPECT_EQ(none.sum().item<int64_t>(), 0);
}

TEST(Router, TrainAndEvalCapacityFactorsAreSeparate) {
  auto o = tiny_options(2, 1);
  o.moe.router.capacity_factor = 0.5;         // capacity 1 of 4 tokens
  o.moe.router.eval_capacity_factor = std::nullopt;  // dropless
  o.moe.router.normalize_topk = false;               // raw scores, so that the gates differ
  Router router(o);
  const at::Tensor logits = at::tensor({0.f, 1.f, 0.f, 2.f, 0.f, 3.f, 0.f, 4.f}).view({4, 2});
  const Routing train = router->route(logits, true);
  EXPECT_EQ(train.capacity, 1);
  EXPECT_EQ(train.num_dropped, 3);
  EXPECT_EQ(train.probs_TK.nonzero().size(0), 1);
  EXPECT_GT(train.probs_TK[3][0].item<double>(), 0.98);  // the highest gate (softmax of [0, 4]) survives
  const Routing eval = router->route(logits, false);
  EXPECT_EQ(eval.capacity, -1);
  EXPECT_EQ(eval.num_dropped, 0);
}

TEST(Router, ExpertBiasSteersSelectionButNotWeights) {
  auto o = tiny_options(3, 1);
  o.moe.router.bias_update_rate = 0.1;
  o.moe.router.normalize_topk = false;
  o.moe.router.score_function = ScoreFunction::kSigmoid;
  Router router(o);
  const at::Tensor logits = at::tensor({2.0f, 1.0f, 0.0f}).view({1, 3});
  EXPECT_EQ(router->route(logits, true).expert_ids_TK.item<int64_t>(), 0);
  router->expert_bias.copy_(at::tensor({0.0f, 0.5f, 0.0f}));
  const Routing r = router->route(logits, true);
  EXPECT_EQ(r.expert_ids_TK.item<int64_t>(), 1);
  EXPECT_NEAR(r.probs_TK.item<double>(), 1.0 / (1.0 + std::exp(-1.0)), 1e-6);  // sigmoid(1), no bias
}

TEST(Router, BiasUpdateMovesAgainstLoadBySignTimesRate) {
  auto o = tiny_options(3, 1);
  o.moe.router.bias_update_rate = 0.001;
  Router router(o);
  router->update_expert_bias(at::tensor({10, 2, 6}, at::kLong));  // mean 6
  EXPECT_NEAR(router->expert_bias[0].item<double>(), -0.001, 1e-9);  // overloaded: down
  EXPECT_NEAR(router->expert_bias[1].item<double>(), 0.001, 1e-9);   // underloaded: up
  EXPECT_NEAR(router->expert_bias[2].item<double>(), 0.0, 1e-12);    // at the mean: still
  router->update_expert_bias(at::tensor({10, 2, 6}, at::kLong));
  EXPECT_NEAR(router->expert_bias[0].item<double>(), -0.002, 1e-9);
  EXPECT_FALSE(router->expert_bias.requires_grad());
  for (const auto& p : router->parameters()) EXPECT_NE(p.data_ptr(), router->expert_bias.data_ptr());
}

TEST(Router, NonFiniteLogitsAreAClearError) {
  Router router(tiny_options(4, 2));
  at::Tensor x = at::randn({5, 4});
  x[2][1] = std::nanf("");
  try {
    router->forward(x);
    FAIL() << "expected moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 of 5 tokens have NaN or Inf"), std::string::npos) << e.what();
  }
}

TEST(Router, GateIsLinearInFloat32AndJitterOnlyInTraining) {
  auto o = tiny_options(3, 1);
  o.moe.router.jitter_eps = 0.1;
  Router router(o);
  const at::Tensor x = at::randn({6, 4}, at::kDouble);
  const at::Tensor expected = at::matmul(x, router->weight.to(at::kDouble).t());
  router->eval();
  const at::Tensor logits = router->gate(x);
  EXPECT_EQ(logits.scalar_type(), at::kFloat);
  EXPECT_TRUE(testing::close(logits, expected, 1e-6));
  router->train();
  EXPECT_FALSE(testing::close(router->gate(x), expected, 1e-6));
}

TEST(Router, RejectsInvalidOptions) {
  auto o = tiny_options(4, 5);
  EXPECT_THROW(Router{o}, Error);
  o = tiny_options(4, 0);
  EXPECT_THROW(Router{o}, Error);
  o = tiny_options(4, 2);
  o.moe.router.capacity_factor = -1.0;
  EXPECT_THROW(Router{o}, Error);
  o = tiny_options(8, 2);
  o.moe.router.num_groups = 3;  // does not divide 8 experts
  o.moe.router.group_topk = 1;
  EXPECT_THROW(Router{o}, Error);
  o.moe.router.num_groups = 4;
  o.moe.router.group_topk = 5;  // more groups than there are
  EXPECT_THROW(Router{o}, Error);
  o.moe.router.group_topk = 0;
  EXPECT_THROW(Router{o}, Error);
  o.moe.router.num_groups = 8;  // one group of one expert cannot hold top-2
  o.moe.router.group_topk = 1;
  EXPECT_THROW(Router{o}, Error);
  o.moe.router.num_groups = 0;  // group_topk without groups
  EXPECT_THROW(Router{o}, Error);
  o.moe.router.group_topk = 0;
  o.moe.router.routed_scaling_factor = 0;
  EXPECT_THROW(Router{o}, Error);
  EXPECT_EQ(groups_misfit_ranks(o.moe.router, 4), "");
  o.moe.router.num_groups = 4;
  o.moe.router.group_topk = 2;
  o.moe.router.routed_scaling_factor = 1;
  EXPECT_EQ(groups_misfit_ranks(o.moe.router, 2), "");  // 2 groups a rank
  EXPECT_EQ(groups_misfit_ranks(o.moe.router, 8), "");  // 2 ranks a group (a node)
  EXPECT_NE(groups_misfit_ranks(o.moe.router, 3), "");  // 3 ranks: edges cross
}

}  // namespace
}  // namespace moe
