// Parity: the MoE layer under expert parallelism (EP ranks sharing the experts, EDP replicas of each
// shard, gradients synchronised by GradSync) gives the output and the gradients of the single-process
// layer on the same global batch. Every rank builds the single-process layer and the global batch from
// the same seed and checks its own share.
#include <gtest/gtest.h>

#include "core/moe_layer.h"
#include "mpi_testing.h"
#include "parallel/grad_sync.h"
#include "parallel/parallel_dims.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

struct ParityCase {
  int64_t T = 16, D = 12, F = 20, E = 8, K = 2;
  ScoreFunction score = ScoreFunction::kSoftmax;
  std::optional<double> capacity_factor;
  DropPolicy drop_policy = DropPolicy::kProbability;
  AuxLossScope scope = AuxLossScope::kMicroBatch;
  int64_t num_shared = 0;
  int64_t hot_expert = -1;  // >= 0: every token of every rank goes to this expert
  int64_t overlap_degree = 1;  // moe.a2a_overlap_degree of the expert-parallel layer
  int64_t groups = 0, group_topk = 0;  // node-limited routing
  double scaling = 1.0;
  bool once_per_rank = true;  // moe.dispatch_once_per_rank
  ExpertType type = ExpertType::kSwiGLU;
  int64_t shadows = 0;         // moe.shadow_experts of the expert-parallel layer (min rows 1)
  bool expect_shadowed = false;  // with EP > 1, the layer must have shadowed an expert
};

TransformerOptions options_for(const ParityCase& s) {
  TransformerOptions o;
  o.hidden_size = s.D;
  o.num_attention_heads = 1;
  o.init_std = 0.5;
  RouterOptions& r = o.moe.router;
  r.num_experts = s.E;
  r.top_k = s.K;
  r.score_function = s.score;
  r.capacity_factor = s.capacity_factor;
  r.drop_policy = s.drop_policy;
  r.aux_loss_scope = s.scope;
  r.num_groups = s.groups;
  r.group_topk = s.group_topk;
  r.routed_scaling_factor = s.scaling;
  r.aux_loss_coeff = 0.01;
  r.z_loss_coeff = 0.001;
  o.moe.ffn_hidden_size = s.F;
  o.moe.expert_type = s.type;
  o.moe.num_shared_experts = s.num_shared;
  o.moe.check_splits = true;
  o.moe.dispatch_once_per_rank = s.once_per_rank;
  return o;
}

void copy_params(MoELayer& dst, MoELayer& src, int64_t first_expert) {
  at::NoGradGuard no_grad;
  dst->router->weight.copy_(src->router->weight);
  const int64_t El = dst->experts->w1.size(0);
  dst->experts->w1.copy_(src->experts->w1.narrow(0, first_expert, El));
  if (src->experts->w3.defined()) dst->experts->w3.copy_(src->experts->w3.narrow(0, first_expert, El));
  dst->experts->w2.copy_(src->experts->w2.narrow(0, first_expert, El));
  if (src->shared_experts) {
    for (const auto& kv : src->shared_experts->named_parameters()) {
      dst->shared_experts->named_parameters()[kv.key()].copy_(kv.value());
    }
  }
}

// The layer's parameter records, as a Transformer would hand them out.
ParameterList records(MoELayer& layer) {
  ParameterList out = {{"router.weight", layer->router->weight}};
  if (layer->shared_experts) {
    for (auto& p : layer->shared_experts->named_parameters()) out.push_back({"shared_experts." + p.key(), p.value()});
  }
  for (auto& p : layer->experts->named_parameters()) {
    out.push_back({"experts." + p.key(), p.value(), Placement::kExpertSharded, 0, layer->first_local_expert()});
  }
  return out;
}

void check_parity(const ParityCase& s, int ep) {
  const int W = world().size(), me = world().rank();
  const ParallelDims dims(W, me, ep, s.E);
  ProcessGroups groups = make_process_groups(world(), dims);

  at::manual_seed(1234);
  MoELayer full(options_for(s));
  if (s.hot_expert >= 0) {
    at::NoGradGuard no_grad;
    full->router->weight.mul_(0.01);
    full->router->weight[s.hot_expert].fill_(1.0);
  }
  at::Tensor x_all = at::randn({W * s.T, s.D});
  if (s.hot_expert >= 0) x_all = x_all.abs() + 0.5;
  const at::Tensor g_all = at::randn({W * s.T, s.D});

  // Single process. Micro-batch scope: each rank's chunk routed on its own (capacity and balance loss
  // per rank, as on the ranks), losses averaged. Global scope: the whole batch at once.
  full->zero_grad();
  at::Tensor x_ref = x_all.clone().requires_grad_(true);
  at::Tensor y_ref;
  if (s.scope == AuxLossScope::kGlobal) {
    MoEOutput out = full->forward(x_ref);
    ((out.y * g_all).sum() / W + out.routing.loss).backward();
    y_ref = out.y.detach().narrow(0, me * s.T, s.T);
  } else {
    at::Tensor loss = at::zeros({});
    for (int r = 0; r < W; ++r) {
      MoEOutput out = full->forward(x_ref.narrow(0, r * s.T, s.T));
      loss = loss + ((out.y * g_all.narrow(0, r * s.T, s.T)).sum() + out.routing.loss) / W;
      if (r == me) y_ref = out.y.detach();
    }
    loss.backward();
  }

  // Expert parallel: this rank's chunk, its expert shard.
  TransformerOptions ep_options = options_for(s);
  ep_options.moe.a2a_overlap_degree = s.overlap_degree;
  ep_options.moe.shadow_experts = s.shadows;
  ep_options.moe.shadow_min_rows = 1;
  MoELayer layer(ep_options, ExpertParallel{dims, groups.ep.get(), &world()});
  ASSERT_EQ(layer->first_local_expert(), dims.first_local_expert);
  ASSERT_EQ(layer->experts->w1.size(0), dims.num_local_experts);
  copy_params(layer, full, dims.first_local_expert);
  layer->to(testing::device());  // the reference stays on the CPU
  at::Tensor x = x_all.narrow(0, me * s.T, s.T).to(testing::device()).requires_grad_(true);
  MoEOutput out = layer->forward(x);
  if (s.groups > 0) {  // a token's experts sit on at most group_topk groups of ranks
    const int64_t bound = s.group_topk * std::max<int64_t>(1, ep / s.groups);
    const at::Tensor ranks = out.routing.expert_ids_TK.cpu().div(dims.num_local_experts, "floor");
    for (int64_t t = 0; t < s.T; ++t) EXPECT_LE(std::get<0>(at::_unique(ranks[t])).numel(), bound) << "token " << t;
  }
  ((out.y * g_all.narrow(0, me * s.T, s.T).to(testing::device())).sum() + out.routing.loss).backward();
  GradSync sync(records(layer), world(), groups.edp.get());
  sync.sync();
  if (s.expect_shadowed && ep > 1) {
    EXPECT_GT(layer->take_exchange_stats().shadowed_experts, 0) << "nothing shadowed";
  }

  const double rtol = 1e-5;
  const int64_t f = dims.first_local_expert, El = dims.num_local_experts;
  EXPECT_TRUE(testing::close(out.y, y_ref, rtol)) << "output";
  // A rank's input gradient is of its own loss; the global loss averages W of them.
  EXPECT_TRUE(testing::close(x.grad() / W, x_ref.grad().narrow(0, me * s.T, s.T), rtol)) << "input gradient";
  EXPECT_TRUE(testing::close(layer->router->weight.grad(), full->router->weight.grad(), rtol)) << "router";
  EXPECT_TRUE(testing::close(layer->experts->w1.grad(), full->experts->w1.grad().narrow(0, f, El), rtol)) << "w1";
  if (s.type == ExpertType::kSwiGLU) {
    EXPECT_TRUE(testing::close(layer->experts->w3.grad(), full->experts->w3.grad().narrow(0, f, El), rtol)) << "w3";
  }
  EXPECT_TRUE(testing::close(layer->experts->w2.grad(), full->experts->w2.grad().narrow(0, f, El), rtol)) << "w2";
  if (s.num_shared > 0) {
    EXPECT_TRUE(testing::close(layer->shared_experts->w1.grad(), full->shared_experts->w1.grad(), rtol)) << "shared";
  }
}

void for_each_ep(ParityCase s) {
  for (int ep : testing::ep_sizes(s.E)) {
    for (bool once : {true, false}) {
      SCOPED_TRACE("world " + std::to_string(world().size()) + ", ep " + std::to_string(ep) +
                   (once ? ", dispatch once per rank" : ", dispatch once per expert"));
      s.once_per_rank = once;
      check_parity(s, ep);
    }
  }
}

TEST(ExpertParallel, DroplessTop2Softmax) { for_each_ep(ParityCase{}); }

TEST(ExpertParallel, DroplessTop4SigmoidWithSharedExperts) {
  ParityCase s;
  s.K = 4;
  s.score = ScoreFunction::kSigmoid;
  s.num_shared = 1;
  for_each_ep(s);
}

// DeepSeek-V3's router: 4 groups of 2 experts, 2 groups a token, weights scaled by 2.5, the
// sequence-wise balance loss (a rank's tokens are one sequence on both sides). With EP 2 a rank holds
// two groups, with EP 4 one: either way each token's 3 experts sit on at most 2 ranks.
TEST(ExpertParallel, NodeLimitedRoutingScaledWithSequenceLoss) {
  ParityCase s;
  s.K = 3;
  s.score = ScoreFunction::kSigmoid;
  s.groups = 4;
  s.group_topk = 2;
  s.scaling = 2.5;
  s.scope = AuxLossScope::kSequence;
  for_each_ep(s);
}

TEST(ExpertParallel, GlobalAuxLossScopeEqualsWholeBatch) {
  ParityCase s;
  s.scope = AuxLossScope::kGlobal;
  for_each_ep(s);
}

TEST(ExpertParallel, CapacityAppliedPerSendingRank) {
  for (DropPolicy p : {DropPolicy::kProbability, DropPolicy::kPosition}) {
    ParityCase s;
    s.K = 1;
    s.capacity_factor = 1.0;
    s.drop_policy = p;
    for_each_ep(s);
  }
}

TEST(ExpertParallel, AllTokensToOneRemoteExpert) {
  ParityCase s;
  s.K = 1;
  s.hot_expert = s.E - 1;  // owned by the last EP rank; every other expert receives nothing
  for_each_ep(s);
  s.capacity_factor = 1.0;
  for_each_ep(s);
}

// The tokens exchanged in slices, each slice's experts computing while the next travel: the same function
// as one exchange. Degree 3 of 16 tokens gives slices of 5, 5 and 6; degree 20 gives empty slices, which
// still exchange (nothing) in step with the other ranks.
TEST(ExpertParallel, OverlappedSlicesGiveTheSameLayer) {
  for (int64_t degree : {2, 3, 20}) {
    SCOPED_TRACE("a2a_overlap_degree " + std::to_string(degree));
    ParityCase s;
    s.overlap_degree = degree;
    for_each_ep(s);
    s.num_shared = 1;
    s.capacity_factor = 1.0;
    for_each_ep(s);
    s.hot_expert = s.E - 1;
    for_each_ep(s);
  }
}

// FasterMoE's shadowing: the busiest rank's experts copied to every rank, each rank running its own
// tokens for them. Where a row is computed changes; the layer must not. All tokens on one remote expert
// make its owner the busiest rank by far, so that expert is shadowed.
TEST(ExpertParallel, ShadowExpertsGiveTheSameLayer) {
  for (int64_t n : {1, 3}) {
    SCOPED_TRACE("shadow_experts " + std::to_string(n));
    ParityCase s;
    s.shadows = n;
    for_each_ep(s);
    s.K = 1;
    s.hot_expert = s.E - 1;
    s.expect_shadowed = true;
    for_each_ep(s);
    s.type = ExpertType::kGELU;
    s.overlap_degree = 3;
    s.num_shared = 1;
    for_each_ep(s);
    s.type = ExpertType::kSwiGLU;
    s.capacity_factor = 1.0;
    for_each_ep(s);
    s = ParityCase{};
    s.shadows = n;
    s.K = 4;
    s.score = ScoreFunction::kSigmoid;
    for_each_ep(s);
  }
}

}  // namespace
}  // namespace moe
