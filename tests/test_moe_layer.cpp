#include "core/moe_layer.h"

#include <gtest/gtest.h>

#include <sstream>
#include <tuple>

#include "core/check.h"
#include "core/shadow_experts.h"
#include "reference.h"
#include "testing.h"

namespace moe {
namespace {

// Capacity settings under test: dropless, and a capacity below the mean load with each drop policy.
enum class Capacity { kDropless, kProbability, kPosition };

struct Case {
  int64_t T = 24, D = 16, F = 32, E = 8, K = 2;
  ScoreFunction score = ScoreFunction::kSoftmax;
  bool normalize = true;
  Capacity capacity = Capacity::kDropless;
  double capacity_factor = 0.75;
  int64_t num_shared = 0;
  int64_t shared_width = 0;  // moe.shared_expert_ffn_hidden_size
  bool bias = false;
  ExpertType type = ExpertType::kSwiGLU;
  int64_t groups = 0, group_topk = 0;  // node-limited routing
  double scaling = 1.0;                // moe.routed_scaling_factor
  AuxLossScope scope = AuxLossScope::kMicroBatch;
};

TransformerOptions options_for(const Case& c) {
  TransformerOptions o;
  o.hidden_size = c.D;
  o.num_attention_heads = 1;
  o.init_std = 0.5;  // confident, well-separated routing: no near-ties between float32 and float64
  RouterOptions& r = o.moe.router;
  r.num_experts = c.E;
  r.top_k = c.K;
  r.score_function = c.score;
  r.normalize_topk = c.normalize;
  if (c.capacity != Capacity::kDropless) r.capacity_factor = c.capacity_factor;
  r.drop_policy = c.capacity == Capacity::kPosition ? DropPolicy::kPosition : DropPolicy::kProbability;
  r.aux_loss_coeff = 0.01;
  r.z_loss_coeff = 0.001;
  r.bias_update_rate = c.bias ? 0.01 : 0.0;
  r.num_groups = c.groups;
  r.group_topk = c.group_topk;
  r.routed_scaling_factor = c.scaling;
  r.aux_loss_scope = c.scope;
  o.moe.ffn_hidden_size = c.F;
  o.moe.expert_type = c.type;
  o.moe.num_shared_experts = c.num_shared;
  o.moe.shared_expert_ffn_hidden_size = c.shared_width;
  return o;
}

struct Observed {
  at::Tensor y, aux, z, dx, dgate, dw1, dw3, dw2, tokens_per_expert;
  int64_t dropped = 0;
};

// Runs the layer, or the float64 reference on the same weights, and backpropagates
// sum(y * g) + aux_coeff * aux + z_coeff * z.
// On testing::device(); what it observed comes back to the CPU.
Observed run_layer(MoELayer& layer, const at::Tensor& x0, const at::Tensor& g) {
  const at::Device device = testing::device();
  layer->to(device);
  layer->zero_grad();
  at::Tensor x = x0.clone().to(device).requires_grad_(true);
  MoEOutput out = layer->forward(x);
  ((out.y * g.to(device)).sum() + out.routing.loss).backward();
  const at::Tensor& w3 = layer->experts->w3;
  const auto cpu = [](const at::Tensor& t) { return t.defined() ? t.detach().cpu() : t; };
  Observed o{cpu(out.y), cpu(out.routing.aux_loss), cpu(out.routing.z_loss), cpu(x.grad()),
             cpu(layer->router->weight.grad()), cpu(layer->experts->w1.grad()),
             w3.defined() ? cpu(w3.grad()) : at::Tensor(), cpu(layer->experts->w2.grad()),
             cpu(out.routing.tokens_per_expert_E), out.routing.num_dropped};
  return o;
}

Observed run_reference(MoELayer& layer, const at::Tensor& x0, const at::Tensor& g, bool training) {
  const auto& opt = layer->options();
  const auto d = [](const at::Tensor& t) { return t.detach().cpu().to(at::kDouble).requires_grad_(true); };
  ref::Weights w{d(layer->router->weight), d(layer->experts->w1),
                 opt.expert_type == ExpertType::kSwiGLU ? d(layer->experts->w3) : at::Tensor(),
                 d(layer->experts->w2), layer->router->expert_bias.cpu().to(at::kDouble)};
  // A [B, S, D] input is B sequences of S tokens (for the sequence-scope balance loss).
  const int64_t S = x0.dim() == 3 ? x0.size(1) : 0;
  at::Tensor x = d(x0.reshape({-1, x0.size(-1)}));
  ref::Result r = ref::moe_layer(x, w, opt.router,
                                 training ? opt.router.capacity_factor : opt.router.eval_capacity_factor,
                                 opt.expert_type == ExpertType::kSwiGLU, S);
  at::Tensor y = r.y;
  if (layer->shared_experts) {
    ref::Weights s{at::Tensor(), d(layer->shared_experts->w1), d(layer->shared_experts->w3),
                   d(layer->shared_experts->w2), at::Tensor()};
    std::vector<at::Tensor> rows;
    for (int64_t t = 0; t < x.size(0); ++t) rows.push_back(ref::expert_ffn(x[t], s, 0, true));
    y = y + at::stack(rows);
  }
  ((y * g.reshape(y.sizes()).to(at::kDouble)).sum() + opt.router.aux_loss_coeff * r.aux_loss + opt.router.z_loss_coeff * r.z_loss)
      .backward();
  Observed o{y.detach(), r.aux_loss.detach(), r.z_loss.detach(), x.grad(), w.gate.grad(), w.w1.grad(),
             w.w3.defined() ? w.w3.grad() : at::Tensor(), w.w2.grad(),
             at::tensor(r.tokens_per_expert, at::kLong), r.num_dropped};
  const auto zero_if_undef = [](at::Tensor& grad, const at::Tensor& like) {
    if (like.defined() && !grad.defined()) grad = at::zeros_like(like);
  };
  zero_if_undef(o.dw1, w.w1);
  zero_if_undef(o.dw2, w.w2);
  zero_if_undef(o.dw3, w.w3);
  return o;
}

void expect_matches_reference(const Case& c, MoELayer& layer, const at::Tensor& x, bool training = true,
                              double rtol = 2e-5) {
  const at::Tensor g = at::randn(x.sizes());
  Observed got = run_layer(layer, x, g);
  got.y = got.y.reshape({-1, c.D});
  got.dx = got.dx.reshape({-1, c.D});
  const Observed want = run_reference(layer, x.to(at::kFloat), g, training);
  EXPECT_TRUE(at::equal(got.tokens_per_expert, want.tokens_per_expert))
      << got.tokens_per_expert << " vs " << want.tokens_per_expert;
  EXPECT_EQ(got.dropped, want.dropped);
  EXPECT_TRUE(testing::close(got.y, want.y, rtol)) << "output";
  EXPECT_TRUE(testing::close(got.aux, want.aux, rtol)) << "aux loss";
  EXPECT_TRUE(testing::close(got.z, want.z, rtol)) << "z loss";
  EXPECT_TRUE(testing::close(got.dx, want.dx, rtol)) << "input gradient";
  EXPECT_TRUE(testing::close(got.dgate, want.dgate, rtol)) << "router gradient";
  EXPECT_TRUE(testing::close(got.dw1, want.dw1, rtol)) << "w1 gradient";
  EXPECT_TRUE(testing::close(got.dw2, want.dw2, rtol)) << "w2 gradient";
  if (c.type == ExpertType::kSwiGLU) {
    EXPECT_TRUE(testing::close(got.dw3, want.dw3, rtol)) << "w3 gradient";
  }
}

using Params = std::tuple<int64_t, ScoreFunction, bool, Capacity>;
class MoELayerReferenceTest : public ::testing::TestWithParam<Params> {};

TEST_P(MoELayerReferenceTest, OutputsAndGradientsMatchFloat64Reference) {
  Case c;
  std::tie(c.K, c.score, c.normalize, c.capacity) = GetParam();
  at::manual_seed(42 + c.K);
  MoELayer layer(options_for(c));
  const at::Tensor x = at::randn({c.T, c.D});
  expect_matches_reference(c, layer, x);
  if (c.capacity != Capacity::kDropless) {
    // A capacity below the mean load must actually drop something, or the test proves nothing.
    EXPECT_GT(run_layer(layer, x, at::randn({c.T, c.D})).dropped, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllRouterModes, MoELayerReferenceTest,
    ::testing::Combine(::testing::Values(1, 2, 4), ::testing::Values(ScoreFunction::kSoftmax, ScoreFunction::kSigmoid),
                       ::testing::Bool(),
                       ::testing::Values(Capacity::kDropless, Capacity::kProbability, Capacity::kPosition)),
    [](const ::testing::TestParamInfo<Params>& info) {
      std::ostringstream os;
      os << "k" << std::get<0>(info.param)
         << (std::get<1>(info.param) == ScoreFunction::kSoftmax ? "_softmax" : "_sigmoid")
         << (std::get<2>(info.param) ? "_norm" : "_raw");
      switch (std::get<3>(info.param)) {
        case Capacity::kDropless: os << "_dropless"; break;
        case Capacity::kProbability: os << "_dropprob"; break;
        case Capacity::kPosition: os << "_droppos"; break;
      }
      return os.str();
    });

// train.dtype bfloat16: the layer computes in bf16 from float32 master weights (routing in float32), and
// must match the float64 reference on the same (bf16-rounded) input within a bound derived from bf16's
// 8 significant bits. Each rounding is a relative error of at most u = 2^-8; on an expert's path the
// weights w1, w3, w2 are rounded, then h1, h3, their product and the output, and the gate weight in
// the combine: 8 roundings. To first order they add: 8u = 2^-5 of the magnitudes involved, taken here
// against the largest reference value of each output and gradient. Routing (float32 on identical
// inputs) must be identical: the same assignments, the same drops.
TEST(MoELayerBFloat16, MatchesFloat64ReferenceWithinBFloat16Rounding) {
  for (const Capacity capacity : {Capacity::kDropless, Capacity::kProbability}) {
    Case c;
    c.capacity = capacity;
    c.num_shared = 1;
    at::manual_seed(17);
    MoELayer layer(options_for(c));
    const at::Tensor x = at::randn({c.T, c.D}).to(at::kBFloat16);
    expect_matches_reference(c, layer, x, /*training=*/true, /*rtol=*/1.0 / 32);
  }
}

// A layer whose router sends every token to expert `hot`: positive inputs, one gate row of ones.
MoELayer all_to_one(const Case& c, int64_t hot, at::Tensor& x) {
  MoELayer layer(options_for(c));
  {
    at::NoGradGuard no_grad;
    layer->router->weight.mul_(0.01);
    layer->router->weight[hot].fill_(1.0);
  }
  x = at::rand({c.T, c.D}) + 0.5;
  return layer;
}

TEST(MoELayerEdges, AllTokensToOneExpertDropless) {
  at::manual_seed(5);
  Case c;
  c.K = 1;
  at::Tensor x;
  MoELayer layer = all_to_one(c, 3, x);
  const Observed got = run_layer(layer, x, at::randn({c.T, c.D}));
  EXPECT_EQ(got.tokens_per_expert[3].item<int64_t>(), c.T);
  EXPECT_EQ(got.tokens_per_expert.sum().item<int64_t>(), c.T);
  // Experts with no tokens get exactly zero gradient.
  for (int64_t e = 0; e < c.E; ++e) {
    if (e != 3) {
      EXPECT_EQ(got.dw1[e].abs().max().item<double>(), 0.0) << "expert " << e;
    }
  }
  expect_matches_reference(c, layer, x);
}

TEST(MoELayerEdges, AllTokensToOneExpertWithCapacity) {
  at::manual_seed(6);
  for (Capacity cap : {Capacity::kProbability, Capacity::kPosition}) {
    Case c;
    c.K = 1;
    c.capacity = cap;
    c.capacity_factor = 1.0;  // capacity ceil(24 / 8) = 3
    at::Tensor x;
    MoELayer layer = all_to_one(c, 5, x);
    const Observed got = run_layer(layer, x, at::randn({c.T, c.D}));
    EXPECT_EQ(got.tokens_per_expert[5].item<int64_t>(), 3);
    EXPECT_EQ(got.dropped, c.T - 3);
    // Dropped tokens get exactly zero output: they keep only their residual.
    EXPECT_EQ((got.y.abs().sum(1) > 0).sum().item<int64_t>(), 3);
    expect_matches_reference(c, layer, x);
  }
}

TEST(MoELayerEdges, ZeroCapacityDropsEverything) {
  at::manual_seed(7);
  Case c;
  c.capacity = Capacity::kPosition;
  c.capacity_factor = 0.0;
  MoELayer layer(options_for(c));
  const at::Tensor x = at::randn({c.T, c.D});
  const Observed got = run_layer(layer, x, at::randn({c.T, c.D}));
  EXPECT_EQ(got.dropped, c.T * c.K);
  EXPECT_EQ(got.y.abs().max().item<double>(), 0.0);
  EXPECT_EQ(got.dw1.abs().max().item<double>(), 0.0);
  expect_matches_reference(c, layer, x);  // router still learns from aux and z-loss
}

TEST(MoELayerEdges, CapacityBelowTopK) {
  at::manual_seed(8);
  Case c;
  c.T = 4;
  c.E = 4;
  c.K = 4;
  c.capacity = Capacity::kProbability;
  c.capacity_factor = 0.25;  // capacity ceil(0.25 * 4 * 4 / 4) = 1 < k
  MoELayer layer(options_for(c));
  const at::Tensor x = at::randn({c.T, c.D});
  const Observed got = run_layer(layer, x, at::randn({c.T, c.D}));
  EXPECT_EQ(got.dropped, 12);
  EXPECT_TRUE(at::equal(got.tokens_per_expert, at::ones({4}, at::kLong)));
  expect_matches_reference(c, layer, x);
}

TEST(MoELayerEdges, OneToken) {
  at::manual_seed(9);
  Case c;
  c.T = 1;
  MoELayer layer(options_for(c));
  expect_matches_reference(c, layer, at::randn({1, c.D}));
}

TEST(MoELayerEdges, OneExpert) {
  at::manual_seed(10);
  Case c;
  c.E = 1;
  c.K = 1;
  MoELayer layer(options_for(c));
  const at::Tensor x = at::randn({c.T, c.D});
  expect_matches_reference(c, layer, x);
  // One expert, softmax, renormalised: the layer is that expert's FFN.
  const at::Tensor xd = x.to(testing::device());
  const at::Tensor y = layer->forward(xd).y;
  EXPECT_TRUE(testing::close(y, layer->experts->forward_reference(xd, {c.T}), 1e-6));
}

TEST(MoELayerEdges, NaNInputIsAClearError) {
  Case c;
  MoELayer layer(options_for(c));
  layer->to(testing::device());
  at::Tensor x = at::randn({c.T, c.D});
  x[7][0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(
      {
        try {
          layer->forward(x.to(testing::device()));
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("NaN or Inf"), std::string::npos);
          throw;
        }
      },
      Error);
}

TEST(MoELayerEdges, SharedExpertsAddADenseMLP) {
  at::manual_seed(11);
  Case c;
  c.num_shared = 2;
  MoELayer layer(options_for(c));
  EXPECT_EQ(layer->shared_experts->w1.size(2), 2 * c.F);
  expect_matches_reference(c, layer, at::randn({c.T, c.D}));
}

// Snowflake Arctic's dense MLP beside the MoE: one shared MLP of a width of its own.
TEST(MoELayerEdges, SharedExpertOfItsOwnWidth) {
  at::manual_seed(13);
  Case c;
  c.num_shared = 1;
  c.shared_width = 3 * c.F + 5;
  MoELayer layer(options_for(c));
  EXPECT_EQ(layer->shared_experts->w1.size(2), c.shared_width);
  expect_matches_reference(c, layer, at::randn({c.T, c.D}));
}

TEST(MoELayerEdges, GELUExperts) {
  at::manual_seed(12);
  Case c;
  c.type = ExpertType::kGELU;
  MoELayer layer(options_for(c));
  expect_matches_reference(c, layer, at::randn({c.T, c.D}));
}

TEST(MoELayerEdges, ExpertBiasSelectionMatchesReference) {
  at::manual_seed(13);
  Case c;
  c.score = ScoreFunction::kSigmoid;
  c.bias = true;
  MoELayer layer(options_for(c));
  layer->router->expert_bias.copy_(at::randn({c.E}) * 0.3);
  expect_matches_reference(c, layer, at::randn({c.T, c.D}));
}

// DeepSeek-V3's router as published: sigmoid scores with the aux-loss-free bias, node-limited to the
// best 2 of 4 groups, weights normalised then scaled by 2.5, and the balance loss per sequence. Each
// part alone, then all together, against the float64 loops, in the forward and every gradient.
TEST(MoELayerEdges, DeepSeekV3RouterMatchesReference) {
  Case v3;
  v3.E = 16;
  v3.K = 4;
  v3.score = ScoreFunction::kSigmoid;
  v3.bias = true;
  v3.groups = 4;
  v3.group_topk = 2;
  v3.scaling = 2.5;
  v3.scope = AuxLossScope::kSequence;
  Case groups_only, scaled_only, sequence_only;
  for (Case* c : {&groups_only, &scaled_only, &sequence_only}) {
    c->E = 16;
    c->K = 4;
  }
  groups_only.groups = 4;
  groups_only.group_topk = 2;
  scaled_only.scaling = 2.5;
  sequence_only.scope = AuxLossScope::kSequence;
  for (const Case& c : {groups_only, scaled_only, sequence_only, v3}) {
    SCOPED_TRACE(::testing::Message() << "groups " << c.groups << ", scaling " << c.scaling << ", scope "
                                      << enum_name(c.scope));
    at::manual_seed(16);
    MoELayer layer(options_for(c));
    layer->router->expert_bias.copy_(at::randn({c.E}) * 0.1);
    expect_matches_reference(c, layer, at::randn({3, 8, c.D}));
  }
}

// The group limit binds: on the same weights and tokens, unlimited top-4 routing reaches a third group
// of 4 experts for some token; limited to 2 groups, no token does.
TEST(MoELayerEdges, GroupLimitBoundsTheGroupsOfEveryToken) {
  at::manual_seed(18);
  Case c;
  c.E = 16;
  c.K = 4;
  TransformerOptions o = options_for(c);
  Router unlimited(o);
  o.moe.router.num_groups = 4;
  o.moe.router.group_topk = 2;
  Router limited(o);
  limited->weight.data().copy_(unlimited->weight);
  const at::Tensor logits = unlimited->gate(at::randn({64, c.D}));
  const auto most_groups = [](const Routing& r) {
    const at::Tensor groups = r.expert_ids_TK.div(4, "floor");
    int64_t most = 0;
    for (int64_t t = 0; t < groups.size(0); ++t) {
      most = std::max<int64_t>(most, std::get<0>(at::_unique(groups[t])).numel());
    }
    return most;
  };
  EXPECT_GE(most_groups(unlimited->route(logits, true)), 3);
  EXPECT_LE(most_groups(limited->route(logits, true)), 2);
}

TEST(MoELayerEdges, EvalUsesEvalCapacityFactor) {
  at::manual_seed(14);
  Case c;
  c.capacity = Capacity::kProbability;
  TransformerOptions o = options_for(c);
  o.moe.router.eval_capacity_factor = 2.0;
  MoELayer layer(o);
  layer->to(testing::device());
  const at::Tensor x = at::randn({c.T, c.D});
  layer->eval();
  EXPECT_EQ(layer->forward(x.to(testing::device())).routing.capacity, 12);  // ceil(2.0 * 24 * 2 / 8)
  expect_matches_reference(c, layer, x, /*training=*/false);
  layer->train();
  EXPECT_EQ(layer->forward(x.to(testing::device())).routing.capacity, 5);  // ceil(0.75 * 24 * 2 / 8)
}

TEST(MoELayerEdges, KeepsLeadingDimensions) {
  at::manual_seed(15);
  Case c;
  MoELayer layer(options_for(c));
  layer->to(testing::device());
  const at::Tensor x = at::randn({2, 12, c.D}).to(testing::device());
  const at::Tensor y = layer->forward(x).y;
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(testing::close(y.view({24, c.D}), layer->forward(x.view({24, c.D})).y, 1e-7));
}

// Which experts shadowing copies, worked by hand. Two ranks of experts {0, 1} and {2, 3}: rank 1 computes
// 30 + 5 + 40 + 5 = 80 rows, rank 0 20. Shadowing expert 2 moves rank 0's 30 rows for it home (50 and
// 50); expert 3 would move 5 (25 and 75). Then rank 0 is the busiest (the first of equals), and neither of
// its experts lowers the peak of 50 any more.
TEST(ShadowExperts, ChoosesTheBusiestRanksMostRequestedExpert) {
  const std::vector<int64_t> counts = {10, 0, 30, 5,  // from rank 0
                                       10, 0, 40, 5};  // from rank 1
  EXPECT_EQ(choose_shadow_experts(counts, 2, 2, 2, 1), std::vector<int64_t>({2}));
  EXPECT_EQ(choose_shadow_experts(counts, 2, 2, 2, 30), std::vector<int64_t>({2}));  // gains 80 - 50 = 30 rows
  EXPECT_EQ(choose_shadow_experts(counts, 2, 2, 2, 31), std::vector<int64_t>());
  EXPECT_EQ(choose_shadow_experts(counts, 2, 2, 0, 1), std::vector<int64_t>());
  const std::vector<int64_t> balanced = {5, 5, 5, 5, 5, 5, 5, 5};
  EXPECT_EQ(choose_shadow_experts(balanced, 2, 2, 4, 1), std::vector<int64_t>());
  // Three ranks of one expert each, every rank sending 9 rows to expert 2: shadowing it leaves 10, 10, 9;
  // then rank 0's expert 0 would move rank 2's one row to rank 2 (9, 10, 10): the peak stays 10.
  const std::vector<int64_t> three = {0, 0, 9, 0, 0, 9, 1, 1, 9};
  EXPECT_EQ(choose_shadow_experts(three, 3, 1, 3, 1), std::vector<int64_t>({2}));
  // Two: rank 1 computes 100 rows, 60 of them rank 0's; shadowing expert 2 leaves 30 and 70, then
  // expert 3 60 and 40.
  const std::vector<int64_t> two = {0, 0, 30, 30,
                                    0, 0, 20, 20};
  EXPECT_EQ(choose_shadow_experts(two, 2, 2, 1, 1), std::vector<int64_t>({2}));
  EXPECT_EQ(choose_shadow_experts(two, 2, 2, 2, 1), std::vector<int64_t>({2, 3}));
}

}  // namespace
}  // namespace moe
