#include "parallel/communicator.h"

#include "core/check.h"
#include "parallel/mpi_communicator.h"

namespace moe {

std::unique_ptr<Communicator> make_communicator(const std::string& backend) {
  if (backend == "mpi") return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  if (backend == "nccl") {
    throw Error("communicator: backend 'nccl' is not built into this moe (configure with -DMOE_WITH_NCCL=ON "
                "on a machine with CUDA and NCCL)",
                /*bad_input=*/true);
  }
  throw Error("communicator: unknown backend '" + backend + "' (expected mpi or nccl)", /*bad_input=*/true);
}

}  // namespace moe
