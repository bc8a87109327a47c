// GradSync on its own: replicated and expert gradients after one sync against sums worked out by hand,
// for every EP size that fits the world (on 4 ranks: EP 2 x EDP 2 among them), with one bucket for
// everything and with a bucket per parameter; and buckets reduced during backward give the same bits as
// after it.
#include "parallel/grad_sync.h"

#include <gtest/gtest.h>

#include "mpi_testing.h"
#include "parallel/parallel_dims.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

constexpr int64_t kE = 4;

// Rank r's gradient of expert-shard element (global expert g, column j): distinct on every rank and expert.
double expert_grad(int r, int64_t g, int64_t j) { return 10.0 * (r + 1) + g + 0.5 * j; }

void check_sync(int ep, int64_t bucket_bytes) {
  const int W = world().size(), me = world().rank();
  const ParallelDims dims(W, me, ep, kE);
  ProcessGroups groups = make_process_groups(world(), dims);
  const int64_t El = dims.num_local_experts, first = dims.first_local_expert;

  at::Tensor dense = at::zeros({3}).requires_grad_(true);
  at::Tensor unused = at::zeros({2}).requires_grad_(true);  // no rank gives it a gradient
  at::Tensor experts = at::zeros({El, 2}).requires_grad_(true);
  dense.mutable_grad() = at::tensor({1.0f, 2.0f, 3.0f}) * (me + 1);
  at::Tensor g = at::empty({El, 2});
  for (int64_t i = 0; i < El; ++i) {
    for (int64_t j = 0; j < 2; ++j) g[i][j] = expert_grad(me, first + i, j);
  }
  experts.mutable_grad() = g;
  GradSync sync({{"dense", dense}, {"unused", unused}, {"experts", experts, Placement::kExpertSharded, 0, first}},
                world(), groups.edp.get(), bucket_bytes);
  sync.sync();

  // Replicated: the mean over all W ranks of (r + 1) * [1, 2, 3] is (W + 1) / 2 * [1, 2, 3].
  const double mean_factor = (W + 1) / 2.0;
  EXPECT_TRUE(testing::close(dense.grad(), at::tensor({1.0, 2.0, 3.0}) * mean_factor, 1e-7)) << "replicated";
  EXPECT_TRUE(testing::close(unused.grad(), at::zeros({2}), 0, 0)) << "a parameter without gradient counts as 0";
  // Expert shard: the sum over the EDP group (ranks ep_rank, ep_rank + ep, ...) divided by W.
  at::Tensor want = at::empty({El, 2}, at::kDouble);
  for (int64_t i = 0; i < El; ++i) {
    for (int64_t j = 0; j < 2; ++j) {
      double sum = 0;
      for (int k = 0; k < dims.edp_size; ++k) sum += expert_grad(dims.ep_rank + k * ep, first + i, j);
      want[i][j] = sum / W;
    }
  }
  EXPECT_TRUE(testing::close(experts.grad(), want, 1e-7)) << "expert shard";
}

TEST(GradSync, SumsReplicatedOverTheWorldAndExpertsOverTheirEdpGroup) {
  for (int ep : testing::ep_sizes(kE)) {
    SCOPED_TRACE("world " + std::to_string(world().size()) + ", ep " + std::to_string(ep));
    check_sync(ep, 32 << 20);
    check_sync(ep, 4);  // one bucket per parameter
  }
}

// A chain of layers, each with a replicated weight and an expert-shard weight, whose backward reaches the
// last layer's parameters first; rank-dependent inputs so that the reduction matters.
struct Chain {
  std::vector<at::Tensor> dense, experts;
  ParameterList records(int64_t first_expert) const {
    ParameterList r;
    for (size_t l = 0; l < dense.size(); ++l) {
      r.push_back({"dense" + std::to_string(l), dense[l]});
      r.push_back({"experts" + std::to_string(l), experts[l], Placement::kExpertSharded, 0, first_expert});
    }
    return r;
  }
  at::Tensor loss(const at::Tensor& x) const {
    at::Tensor h = x;
    for (size_t l = 0; l < dense.size(); ++l) h = at::tanh(at::matmul(h, dense[l]) + experts[l].sum(0));
    return h.square().sum();
  }
};

Chain make_chain(int64_t El) {
  at::manual_seed(3);  // the same weights on every rank
  Chain c;
  for (int l = 0; l < 4; ++l) {
    c.dense.push_back((at::randn({8, 8}) * 0.5).requires_grad_(true));
    c.experts.push_back((at::randn({El, 8}) * 0.1).requires_grad_(true));
  }
  return c;
}

TEST(GradSync, ReducingDuringBackwardGivesTheSameBitsAsAfterIt) {
  const int me = world().rank();
  for (int ep : testing::ep_sizes(kE)) {
    SCOPED_TRACE("world " + std::to_string(world().size()) + ", ep " + std::to_string(ep));
    const ParallelDims dims(world().size(), me, ep, kE);
    ProcessGroups groups = make_process_groups(world(), dims);
    const auto input = [me](int micro) { return at::full({2, 8}, 0.1 * (me + 1) + 0.05 * micro); };
    Chain after = make_chain(dims.num_local_experts), during = make_chain(dims.num_local_experts);
    GradSync sync_after(after.records(dims.first_local_expert), world(), groups.edp.get(), 8 * 8 * 4, false);
    GradSync sync_during(during.records(dims.first_local_expert), world(), groups.edp.get(), 8 * 8 * 4, true);
    for (int micro = 0; micro < 2; ++micro) {  // two micro-batches: only the last backward reduces
      after.loss(input(micro)).backward();
      if (micro == 1) sync_during.reduce_in_next_backward();
      during.loss(input(micro)).backward();
    }
    sync_after.sync();
    sync_during.sync();
    EXPECT_GT(sync_during.started_in_backward(), 1) << "buckets should start before sync()";
    for (size_t l = 0; l < after.dense.size(); ++l) {
      EXPECT_TRUE(testing::close(during.dense[l].grad(), after.dense[l].grad(), 0, 0)) << "dense " << l;
      EXPECT_TRUE(testing::close(during.experts[l].grad(), after.experts[l].grad(), 0, 0)) << "experts " << l;
    }
    // The reference itself: the mean over ranks of the summed micro-batch gradients, by autograd alone.
    Chain alone = make_chain(dims.num_local_experts);
    at::Tensor want = at::zeros_like(alone.dense[0]);
    for (int r = 0; r < world().size(); ++r) {
      for (int micro = 0; micro < 2; ++micro) {
        alone.dense[0].mutable_grad() = at::Tensor();
        alone.loss(at::full({2, 8}, 0.1 * (r + 1) + 0.05 * micro)).backward();
        want += alone.dense[0].grad();
      }
    }
    EXPECT_TRUE(testing::close(during.dense[0].grad(), want / world().size(), 1e-6)) << "against autograd alone";
  }
}

TEST(GradSync, RefusesAGradientThatArrivesTwiceInOneOverlappedBackward) {
  Chain c = make_chain(1);
  GradSync sync(c.records(world().rank()), world(), nullptr, 4, true);
  sync.reduce_in_next_backward();
  c.loss(at::ones({2, 8})).backward();
  EXPECT_THROW(c.loss(at::ones({2, 8})).backward(), std::exception);
  sync.sync();
}

}  // namespace
}  // namespace moe
