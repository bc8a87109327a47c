#include "parallel/communicator.h"

#include "parallel/mpi_communicator.h"
#ifdef MOE_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace moe {

namespace {

struct Completed : PendingCollective {
  void wait() override {}
  bool done() override { return true; }
};

}  // namespace

std::unique_ptr<PendingCollective> Communicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  all_reduce(tensor, op);
  return std::make_unique<Completed>();
}

std::unique_ptr<PendingCollective> Communicator::all_to_all_v_async(const at::Tensor& input,
                                                                    const std::vector<int64_t>& send_rows,
                                                                    at::Tensor& output,
                                                                    const std::vector<int64_t>& recv_rows) {
  all_to_all_v(input, send_rows, output, recv_rows);
  return std::make_unique<Completed>();
}

void all_ranks_succeed(Communicator& comm, const std::function<void()>& fn) {
  std::string message;
  int code = 0;
  try {
    fn();
  } catch (const Error& e) {
    message = e.what();
    code = e.bad_input() ? 2 : 1;
  } catch (const std::exception& e) {
    message = e.what();
    code = 1;
  }
  // [exit code, size - rank of a failing rank]: the max gives the worst code and the lowest failing rank.
  at::Tensor outcome = at::tensor(
      {static_cast<double>(code), code ? static_cast<double>(comm.size() - comm.rank()) : 0.0}, at::kDouble);
  comm.all_reduce(outcome, ReduceOp::kMax);
  const int worst = static_cast<int>(outcome[0].item<double>());
  if (worst == 0) return;
  const int reporter = comm.size() - static_cast<int>(outcome[1].item<double>());
  if (reporter == comm.rank()) throw CollectiveError(message, code, /*reported=*/true);
  throw CollectiveError("another rank failed", worst, /*reported=*/false);
}

std::unique_ptr<Communicator> make_communicator(Backend backend, int device_index, double timeout_s) {
  const std::string why = backend_unavailable(backend);
  if (!why.empty()) throw Error("parallel.backend: " + why, /*bad_input=*/true);
  MOE_CHECK(backend != Backend::kAuto, "make_communicator: resolve parallel.backend auto first (select_backend)");
#ifdef MOE_HAVE_NCCL
  if (backend == Backend::kNccl) {
    MOE_CHECK(device_index >= 0, "make_communicator: nccl needs this rank's GPU");
    MPI_Comm world;
    MOE_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &world));  // NCCL's bootstrap and barriers, apart from MPI's own
    return std::make_unique<NcclCommunicator>(std::make_unique<MpiCommunicator>(world), "world", device_index,
                                              timeout_s);
  }
#endif
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
}

}  // namespace moe
