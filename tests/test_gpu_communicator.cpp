// The communicators on CUDA tensors: NCCL (one GPU per rank), and MPI staging CUDA tensors through pinned
// host memory (ranks may share a GPU). Exact comparisons: these move and add integers. Skipped where no
// GPU is visible; scripts/gpu_check.sh runs them on a GPU machine.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "mpi_testing.h"
#include "parallel/communicator.h"

namespace moe {
namespace {

using testing::world;

int gpus() { return at::hasCUDA() ? static_cast<int>(torch::cuda::device_count()) : 0; }

at::Device my_gpu() { return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(world().local_rank() % gpus())); }

// Every collective of the interface on `comm`, with tensors on `device`, checked exactly.
void exercise(Communicator& comm, at::Device device) {
  const int R = comm.size(), me = comm.rank();
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);

  // all_to_all_v, uneven with zero-row splits: rank s sends (s + r) % 3 rows of width 5 to rank r, row i
  // holding s * 1000 + r * 10 + i.
  std::vector<int64_t> send(R), recv(R);
  std::vector<float> rows;
  for (int r = 0; r < R; ++r) {
    send[r] = (me + r) % 3;
    recv[r] = (r + me) % 3;
    for (int64_t i = 0; i < send[r]; ++i) rows.insert(rows.end(), 5, static_cast<float>(me * 1000 + r * 10 + i));
  }
  const int64_t total_send = static_cast<int64_t>(rows.size()) / 5;
  const at::Tensor input = at::tensor(rows, at::kFloat).view({total_send, 5}).to(device);
  int64_t total_recv = 0;
  for (int64_t n : recv) total_recv += n;
  at::Tensor output = at::full({total_recv, 5}, -1.0f, opts);
  comm.all_to_all_v(input, send, output, recv);
  ASSERT_TRUE(output.is_cuda() == device.is_cuda());
  const at::Tensor got = output.cpu();
  int64_t row = 0;
  for (int r = 0; r < R; ++r) {
    for (int64_t i = 0; i < recv[r]; ++i, ++row) {
      EXPECT_EQ(got[row][4].item<float>(), static_cast<float>(r * 1000 + me * 10 + i)) << "from rank " << r;
    }
  }

  // all_reduce, sum and max, in three dtypes.
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kLong}) {
    at::Tensor t = at::full({3}, me + 1, at::TensorOptions().dtype(dtype).device(device));
    comm.all_reduce(t, ReduceOp::kSum);
    EXPECT_EQ(t.cpu()[2].item<double>(), R * (R + 1) / 2.0) << dtype;
    at::Tensor m = at::full({2}, me, at::TensorOptions().dtype(dtype).device(device));
    comm.all_reduce(m, ReduceOp::kMax);
    EXPECT_EQ(m.cpu()[0].item<double>(), R - 1.0) << dtype;
  }

  const at::Tensor gathered = comm.all_gather(at::full({2}, me, opts)).cpu();
  ASSERT_EQ(gathered.size(0), R);
  for (int r = 0; r < R; ++r) EXPECT_EQ(gathered[r][1].item<float>(), r);

  at::Tensor chunks = at::full({R * 2}, -1.0f, opts);
  chunks.narrow(0, me * 2, 2).fill_(static_cast<float>(me));
  comm.all_gather_in_place(chunks);
  for (int r = 0; r < R; ++r) EXPECT_EQ(chunks.cpu()[r * 2 + 1].item<float>(), r) << "all_gather_in_place";
  at::Tensor mine = at::empty({2}, opts);
  comm.reduce_scatter(at::arange(R * 2, opts).add(me), mine, ReduceOp::kSum);
  EXPECT_EQ(mine.cpu()[1].item<float>(), R * (me * 2 + 1) + R * (R - 1) / 2.0f) << "reduce_scatter";

  at::Tensor b = at::full({4}, me == R - 1 ? 7.0f : 0.0f, opts);
  comm.broadcast(b, R - 1);
  EXPECT_EQ(b.cpu()[3].item<float>(), 7.0f);

  // A CPU tensor through the same communicator (all_ranks_succeed and the checkpoint use them).
  at::Tensor host = at::full({1}, 1.0, at::kDouble);
  comm.all_reduce(host, ReduceOp::kSum);
  EXPECT_TRUE(host.device().is_cpu());
  EXPECT_EQ(host.item<double>(), R);

  const std::unique_ptr<Communicator> half = comm.split(me % 2, me, "half");
  at::Tensor h = at::full({1}, 1.0f, opts);
  half->all_reduce(h, ReduceOp::kSum);
  EXPECT_EQ(h.cpu().item<float>(), (R + 1 - me % 2) / 2) << "ranks of my parity";
  comm.barrier();
}

TEST(GpuCommunicator, MpiStagesCudaTensorsThroughPinnedMemory) {
  if (gpus() == 0) GTEST_SKIP() << "no GPU visible";
  const std::unique_ptr<Communicator> comm = make_communicator(Backend::kMpi);
  exercise(*comm, my_gpu());
}

TEST(GpuCommunicator, NcclOnCudaTensors) {
  if (!nccl_built() || gpus() == 0) GTEST_SKIP() << "needs NCCL and a GPU";
  // NCCL wants one GPU per rank (on one node: no more ranks than GPUs).
  if (world().size() > gpus()) GTEST_SKIP() << world().size() << " ranks for " << gpus() << " GPUs";
  const std::unique_ptr<Communicator> comm = make_communicator(Backend::kNccl, my_gpu().index(), 60);
  EXPECT_EQ(comm->backend(), "nccl");
  exercise(*comm, my_gpu());
}

}  // namespace
}  // namespace moe
