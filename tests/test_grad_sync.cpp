// GradSync on its own: replicated and expert gradients after one sync against sums worked out by hand,
// for every EP size that fits the world (on 4 ranks: EP 2 x EDP 2 among them), with one bucket for
// everything and with a bucket per parameter.
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

}  // namespace
}  // namespace moe
