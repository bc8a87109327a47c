#include "parallel/parallel_dims.h"

#include <gtest/gtest.h>

#include "core/check.h"

namespace moe {
namespace {

TEST(ParallelDims, EpGroupsAreConsecutiveRanksOwningContiguousExperts) {
  // world 4 = EP 2 x EDP 2, 8 experts: ranks 0,1 form EP group 0; ranks 0,2 share expert shard 0.
  const ParallelDims d(4, 3, 2, 8);
  EXPECT_EQ(d.edp_size, 2);
  EXPECT_EQ(d.ep_rank, 1);
  EXPECT_EQ(d.edp_rank, 1);
  EXPECT_EQ(d.num_local_experts, 4);
  EXPECT_EQ(d.first_local_expert, 4);
  const ParallelDims d0(4, 2, 2, 8);
  EXPECT_EQ(d0.ep_rank, 0);
  EXPECT_EQ(d0.first_local_expert, 0);
}

void expect_refused(int world, int ep, int64_t experts, const std::string& message) {
  try {
    ParallelDims(world, 0, ep, experts);
    FAIL() << "expected moe::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), message);
    EXPECT_TRUE(e.bad_input());
  }
}

TEST(ParallelDims, RefusesBadCombinationsWithTheNumbers) {
  expect_refused(4, 3, 6, "expert_parallel_size (3) must divide the world size (4)");
  expect_refused(4, 4, 6, "expert_parallel_size (4) must divide num_experts (6)");
  expect_refused(4, 0, 8, "expert_parallel_size (0) must be at least 1");
}

}  // namespace
}  // namespace moe
