#include "parallel/communicator.h"

#include <gtest/gtest.h>

#include "core/check.h"
#include "mpi_testing.h"

// Every value is a function of (sender, receiver, index) that each rank computes for itself, as
// nccl-tests does: a received value is checked exactly, not just counted.
namespace moe {
namespace {

using testing::world;

TEST(MpiCommunicator, RankAndSize) {
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  EXPECT_EQ(world().rank(), rank);
  EXPECT_EQ(world().size(), size);
  EXPECT_EQ(world().backend(), "mpi");
  world().barrier();
}

TEST(MpiCommunicator, Broadcast) {
  const int root = world().size() - 1;
  for (auto dtype : {at::kFloat, at::kLong, at::kBFloat16}) {
    at::Tensor t = at::arange(7, at::kDouble).add(100.0 * world().rank()).to(dtype);
    world().broadcast(t, root);
    EXPECT_TRUE(at::equal(t, at::arange(7, at::kDouble).add(100.0 * root).to(dtype))) << dtype;
  }
  at::Tensor empty = at::empty({0}, at::kFloat);
  world().broadcast(empty, 0);
}

TEST(MpiCommunicator, AllReduceSumAndMax) {
  const int R = world().size(), me = world().rank();
  for (auto dtype : {at::kFloat, at::kDouble, at::kLong, at::kInt}) {
    at::Tensor t = at::arange(5, at::kDouble).add(1000.0 * (me + 1)).to(dtype);
    world().all_reduce(t, ReduceOp::kSum);
    // sum over r of (1000 (r+1) + i) = 1000 R (R+1) / 2 + R i
    const at::Tensor expected = at::arange(5, at::kDouble).mul(R).add(1000.0 * R * (R + 1) / 2).to(dtype);
    EXPECT_TRUE(at::equal(t, expected)) << dtype;
    at::Tensor m = at::arange(5, at::kDouble).add(1000.0 * (me + 1)).to(dtype);
    world().all_reduce(m, ReduceOp::kMax);
    EXPECT_TRUE(at::equal(m, at::arange(5, at::kDouble).add(1000.0 * R).to(dtype))) << dtype;
  }
  at::Tensor empty = at::empty({0}, at::kFloat);
  world().all_reduce(empty, ReduceOp::kSum);
  at::Tensor bf = at::ones({2}, at::kBFloat16);
  EXPECT_THROW(world().all_reduce(bf, ReduceOp::kSum), Error);
}

TEST(MpiCommunicator, AllGather) {
  const int R = world().size();
  const at::Tensor mine = at::arange(3, at::kLong).add(10 * world().rank()).view({3, 1});
  const at::Tensor all = world().all_gather(mine);
  ASSERT_EQ(all.sizes(), (at::IntArrayRef{R, 3, 1}));
  for (int r = 0; r < R; ++r) EXPECT_TRUE(at::equal(all[r], at::arange(3, at::kLong).add(10 * r).view({3, 1})));
}

TEST(MpiCommunicator, AllGatherInPlace) {
  const int R = world().size(), me = world().rank();
  at::Tensor buffer = at::full({R * 3}, -1.0f);
  buffer.narrow(0, me * 3, 3).copy_(at::arange(3, at::kFloat).add(10 * me));
  world().all_gather_in_place(buffer);
  for (int r = 0; r < R; ++r) EXPECT_TRUE(at::equal(buffer.narrow(0, r * 3, 3), at::arange(3, at::kFloat).add(10 * r)));
}

TEST(MpiCommunicator, ReduceScatterSumsEachChunkOverTheRanks) {
  const int R = world().size(), me = world().rank();
  // Rank r's element i: 100 * r + i; chunk c of the sum over ranks is 100 * R(R-1)/2 + R * i at i in c.
  const at::Tensor input = at::arange(R * 2, at::kDouble).add(100.0 * me);
  at::Tensor output = at::empty({2}, at::kDouble);
  world().reduce_scatter(input, output, ReduceOp::kSum);
  for (int64_t j = 0; j < 2; ++j) {
    EXPECT_EQ(output[j].item<double>(), 100.0 * R * (R - 1) / 2 + R * static_cast<double>(me * 2 + j));
  }
  at::Tensor wrong = at::empty({3}, at::kDouble);
  EXPECT_THROW(world().reduce_scatter(input, wrong, ReduceOp::kSum), Error) << "sizes that do not divide";
}

// Rows rank s sends to rank d: uneven, and zero for some pairs (and for every pair on one rank).
int64_t rows(int s, int d) { return (s + 2 * d) % 3; }
double value(int s, int d, int64_t row, int64_t col) { return s * 1000 + d * 100 + row * 10 + col; }

TEST(MpiCommunicator, AllToAllVUnevenWithZeros) {
  const int R = world().size(), me = world().rank();
  for (auto dtype : {at::kFloat, at::kDouble, at::kLong}) {
    std::vector<int64_t> send(R), recv(R);
    std::vector<at::Tensor> chunks;
    for (int d = 0; d < R; ++d) {
      send[d] = rows(me, d);
      recv[d] = rows(d, me);
      at::Tensor c = at::empty({send[d], 4}, at::kDouble);
      for (int64_t i = 0; i < send[d]; ++i)
        for (int64_t j = 0; j < 4; ++j) c[i][j] = value(me, d, i, j);
      chunks.push_back(c);
    }
    const at::Tensor input = at::cat(chunks).to(dtype);
    int64_t total = 0;
    for (auto n : recv) total += n;
    at::Tensor output = at::full({total, 4}, -1, dtype);
    world().all_to_all_v(input, send, output, recv);
    int64_t row = 0;
    for (int s = 0; s < R; ++s) {
      for (int64_t i = 0; i < recv[s]; ++i, ++row) {
        for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(output[row][j].item<double>(), value(s, me, i, j));
      }
    }
  }
}

TEST(MpiCommunicator, AllToAllVAllZero) {
  const int R = world().size();
  at::Tensor out = at::empty({0, 3});
  world().all_to_all_v(at::empty({0, 3}), std::vector<int64_t>(R, 0), out, std::vector<int64_t>(R, 0));
  EXPECT_EQ(out.size(0), 0);
}

TEST(MpiCommunicator, AllToAllVRefusesBadSplitsBeforeCommunicating) {
  const int R = world().size();
  at::Tensor out = at::empty({R, 2});
  EXPECT_THROW(world().all_to_all_v(at::ones({R, 2}), std::vector<int64_t>(R + 1, 1), out,
                                    std::vector<int64_t>(R, 1)),
               Error);
  EXPECT_THROW(world().all_to_all_v(at::ones({R + 1, 2}), std::vector<int64_t>(R, 1), out,
                                    std::vector<int64_t>(R, 1)),
               Error);
  at::Tensor wrong_dtype = at::empty({R, 2}, at::kDouble);
  EXPECT_THROW(world().all_to_all_v(at::ones({R, 2}), std::vector<int64_t>(R, 1), wrong_dtype,
                                    std::vector<int64_t>(R, 1)),
               Error);
}

TEST(MpiCommunicator, SplitFormsSubgroups) {
  const int R = world().size(), me = world().rank();
  auto sub = world().split(/*color=*/me % 2, /*key=*/me);
  EXPECT_EQ(sub->rank(), me / 2);
  EXPECT_EQ(sub->size(), (R - me % 2 + 1) / 2);
  at::Tensor t = at::full({1}, me, at::kLong);
  sub->all_reduce(t, ReduceOp::kSum);
  int64_t expected = 0;
  for (int r = me % 2; r < R; r += 2) expected += r;
  EXPECT_EQ(t.item<int64_t>(), expected);
}

TEST(MpiCommunicator, MpiErrorsNameTheCallTheRankAndMpisMessage) {
  int rank = 0;
  try {
    MOE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_NULL, &rank));
    FAIL() << "expected moe::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MPI_Comm_rank(MPI_COMM_NULL, &rank) failed on rank " + std::to_string(world().rank())),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("communicator"), std::string::npos) << what;  // MPI's own error string
  }
}

TEST(MakeCommunicator, ChoosesTheBackendOfTheConfig) {
  EXPECT_EQ(make_communicator(Backend::kMpi)->backend(), "mpi");
  EXPECT_EQ(make_communicator(Backend::kMpi)->size(), world().size());
  if (nccl_built()) return;  // NCCL's world needs a GPU: scripts/gpu_check.sh
  try {
    make_communicator(Backend::kNccl);
    FAIL() << "expected moe::Error";
  } catch (const Error& e) {
    EXPECT_TRUE(e.bad_input());
    EXPECT_NE(std::string(e.what()).find("parallel.backend: nccl: this moe was built without NCCL"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moe
