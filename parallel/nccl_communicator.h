#pragma once
// NcclCommunicator: Communicator over NCCL for CUDA tensors, one GPU per rank. Bootstrapped over MPI:
// each group (world, EP, EDP) gets one ncclUniqueId, made by its rank 0 and broadcast over the group's
// MPI communicator, which it keeps for barriers and for splitting.
//
// Work is enqueued on libtorch's default stream of the GPU (moe never sets another current stream), so
// it is ordered after the kernels that computed the tensors and before those that use the results; the
// host does not wait. A watchdog thread follows every collective: when one fails asynchronously, or has
// not finished within parallel.timeout_s, it aborts the communicator (ncclCommAbort) and ends the
// process with exit code 3, naming the rank, the group and the collective, so that mpirun ends the job
// instead of every rank hanging. CPU tensors are staged through the GPU. Built only where CMake found
// CUDA and NCCL (MOE_HAVE_NCCL); the sources use the CUDA runtime, NCCL and at::Tensor alone, so they
// build against a CPU-only libtorch too.
#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/mpi_communicator.h"

namespace moe {

class NcclCommunicator : public Communicator {
 public:
  // Collective over `bootstrap`. `group` names it in errors; `device_index` is this rank's GPU.
  NcclCommunicator(std::unique_ptr<MpiCommunicator> bootstrap, std::string group, int device_index,
                   double timeout_s);
  ~NcclCommunicator() override;

  std::string backend() const override { return "nccl"; }
  int rank() const override;
  int size() const override;
  void barrier() override;
  void broadcast(at::Tensor& tensor, int root) override;
  void all_reduce(at::Tensor& tensor, ReduceOp op) override;
  at::Tensor all_gather(const at::Tensor& tensor) override;
  void all_gather_in_place(at::Tensor& buffer) override;
  void reduce_scatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) override;
  void all_to_all_v(const at::Tensor& input, const std::vector<int64_t>& send_rows, at::Tensor& output,
                    const std::vector<int64_t>& recv_rows) override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name = "") override;

  struct State;  // NCCL's and CUDA's handles and the watchdog, kept out of this header

 private:
  std::unique_ptr<State> state_;
};

}  // namespace moe
