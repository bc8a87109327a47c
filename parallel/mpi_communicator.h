#pragma once
// MpiCommunicator: Communicator over an MPI communicator. CPU tensors travel from their own memory; CUDA
// tensors are staged through two pinned host buffers that grow to the largest message and are reused, so
// several ranks can share a GPU and a machine without NCCL still trains on GPUs. Errors return
// (MPI_ERRORS_RETURN) and are thrown as moe::Error naming the call, the rank and MPI's own error string;
// `main` then aborts the whole job so no peer waits forever; a collective that never completes is ended
// by the watchdog (parallel/watchdog.h).
#include <mpi.h>

#include "core/check.h"
#include "parallel/communicator.h"

// MOE_MPI_CHECK(MPI_Xxx(...)): throws moe::Error with the call's text, file:line, the world rank and
// MPI_Error_string.
#define MOE_MPI_CHECK(call)                                                    \
  do {                                                                         \
    const int moe_mpi_rc_ = (call);                                            \
    if (moe_mpi_rc_ != MPI_SUCCESS) ::moe::throw_mpi_error(moe_mpi_rc_, #call, __FILE__, __LINE__); \
  } while (0)

namespace moe {

[[noreturn]] void throw_mpi_error(int code, const char* call, const char* file, int line);

// MPI_Init_thread (serialized: autograd may run a backward exchange from another thread) unless already
// initialised, with errors returned rather than fatal. Finalises at exit only what it initialised.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owns_ = false;
};

class MpiCommunicator : public Communicator {
 public:
  // Wraps `comm`; takes ownership (MPI_Comm_free) unless it is MPI_COMM_WORLD. `name` names the group
  // in the watchdog's report.
  explicit MpiCommunicator(MPI_Comm comm, std::string name = "world");
  ~MpiCommunicator() override;

  std::string backend() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override;
  void broadcast(at::Tensor& tensor, int root) override;
  void all_reduce(at::Tensor& tensor, ReduceOp op) override;
  // MPI_Iallreduce for a CPU tensor of up to INT_MAX elements (others: the blocking form).
  std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  at::Tensor all_gather(const at::Tensor& tensor) override;
  void all_gather_in_place(at::Tensor& buffer) override;
  void reduce_scatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) override;
  void all_to_all_v(const at::Tensor& input, const std::vector<int64_t>& send_rows, at::Tensor& output,
                    const std::vector<int64_t>& recv_rows) override;
  // MPI_Ialltoallv for CPU tensors (CUDA ones: the blocking form, staged). The blocking form is this
  // one waited for.
  std::unique_ptr<PendingCollective> all_to_all_v_async(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                                        at::Tensor& output,
                                                        const std::vector<int64_t>& recv_rows) override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name = "") override;

  MPI_Comm comm() const { return comm_; }
  // This rank's index among the ranks of its node (MPI_COMM_TYPE_SHARED), whatever the launcher.
  // Collective.
  int local_rank();

 private:
  // A pinned host tensor of `like`'s shape and dtype in staging buffer `slot` (0: send, 1: receive).
  at::Tensor staging(int slot, const at::Tensor& like);
  // `t` copied into staging buffer `slot`.
  at::Tensor host_copy(int slot, const at::Tensor& t);

  MPI_Comm comm_;
  std::string name_;
  at::Tensor pinned_[2];
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace moe
