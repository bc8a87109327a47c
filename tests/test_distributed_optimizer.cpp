// DistributedOptimizer (ZeRO-1) against the replicated optimizer (GradSync + AdamW, whose arithmetic
// test_optimizer checks against float64) on the same gradients: every EP size that fits the world, one
// bucket for everything and one bucket per parameter (padding in most). The gradients are small integers
// times powers of two, so every sum is exact whatever the reduction's order: the two must agree bit for
// bit, in the weights, the norm and the gathered moments, with clipping active.
#include "train/distributed_optimizer.h"

#include <gtest/gtest.h>

#include "mpi_testing.h"
#include "parallel/parallel_dims.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

constexpr int64_t kE = 4;

struct Model {
  ParameterList records;
  // Shapes: odd sizes so that buckets need padding; a 2-D one decays, 1-D ones do not.
  Model(const ParallelDims& dims) {
    const int64_t El = dims.num_local_experts, first = dims.first_local_expert;
    const auto make = [](std::vector<int64_t> shape, double start) {
      const int64_t n = c10::multiply_integers(shape);
      return at::arange(n, at::kFloat).mul(0.01).add(start).view(shape).requires_grad_(true);
    };
    records.push_back({"norm", make({5}, 1.0)});
    records.push_back({"proj", make({3, 4}, -0.05)});
    records.push_back({"unused", make({2}, 0.5)});
    records.push_back({"experts", make({El, 3, 3}, 0.02 * first), Placement::kExpertSharded, 0, first});
  }
  // Rank `me`'s gradients for a step: integers, different per rank, step and (global) expert.
  void set_grads(int me, int step) {
    for (ParameterRecord& r : records) {
      if (r.name == "unused") continue;
      at::Tensor g = at::arange(r.tensor.numel(), at::kFloat).remainder(7).sub(3).mul(me + step).view(r.tensor.sizes());
      if (r.is_expert()) g.add_(at::arange(r.tensor.size(0), at::kFloat).add(r.first_expert).view({-1, 1, 1}));
      r.tensor.mutable_grad() = g;
    }
  }
};

void check(int ep, int64_t bucket_bytes) {
  const int W = world().size(), me = world().rank();
  const ParallelDims dims(W, me, ep, kE);
  ProcessGroups groups = make_process_groups(world(), dims);
  Model a(dims), b(dims);
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  const std::unique_ptr<Optimizer> replicated =
      make_optimizer(a.records, world(), groups.ep.get(), groups.edp.get(), options);
  DistributedOptimizer sharded(b.records, world(), groups.edp.get(), options, bucket_bytes);
  for (int step = 1; step <= 3; ++step) {
    a.set_grads(me, step);
    b.set_grads(me, step);
    const at::Tensor sa = replicated->reduce_gradients(), sb = sharded.reduce_gradients();
    ASSERT_TRUE(at::equal(sa, sb)) << "step " << step << ": squared norms " << sa << " and " << sb;
    const at::Tensor norm = sa.sum().sqrt();
    ASSERT_GT(norm.item<double>(), 4.0) << "the case must clip";
    replicated->clip(norm, 4.0);  // below the norm: clipping scales
    sharded.clip(norm, 4.0);
    replicated->step(1e-2);
    sharded.step(1e-2);
    for (size_t i = 0; i < a.records.size(); ++i) {
      EXPECT_TRUE(at::equal(a.records[i].tensor, b.records[i].tensor)) << "step " << step << ": " << a.records[i].name;
    }
  }
  const OptimizerState want = replicated->gather_state(), got = sharded.gather_state();
  for (size_t k = 0; k < 2; ++k) {
    for (size_t i = 0; i < a.records.size(); ++i) {
      EXPECT_TRUE(at::equal(want[k].second[i], got[k].second[i])) << want[k].first << " " << a.records[i].name;
    }
  }
  // A state taken back in (as after a checkpoint load) continues alike.
  DistributedOptimizer restored(b.records, world(), groups.edp.get(), options, bucket_bytes);
  restored.scatter_state(got);
  restored.set_steps(sharded.steps());
  const OptimizerState again = restored.gather_state();
  for (size_t k = 0; k < 2; ++k) {
    for (size_t i = 0; i < a.records.size(); ++i) EXPECT_TRUE(at::equal(again[k].second[i], got[k].second[i]));
  }
  // Each rank holds its share of the moments: the dense ones over W, the experts' over their EDP group.
  int64_t dense = 0, experts = 0;
  for (const ParameterRecord& r : b.records) (r.is_expert() ? experts : dense) += r.tensor.numel();
  if (bucket_bytes > 1000) {
    EXPECT_EQ(sharded.owned_elements(), (dense + W - 1) / W + (experts + dims.edp_size - 1) / dims.edp_size);
  }
}

TEST(DistributedOptimizer, MatchesTheReplicatedOptimizerBitForBit) {
  for (int ep : testing::ep_sizes(kE)) {
    SCOPED_TRACE("world " + std::to_string(world().size()) + ", ep " + std::to_string(ep));
    check(ep, 32 << 20);
    check(ep, 4);  // one bucket per parameter
  }
}

}  // namespace
}  // namespace moe
