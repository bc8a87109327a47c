#pragma once
// The `parallel` section: how the ranks are laid out and which transport carries their collectives.
// Torch-free, for the light `moe` executable (plan).
#include <cstdint>
#include <string>

#include "core/check.h"

namespace moe {

// mpi is the only backend built today; nccl is named so that configs written for GPUs get a clear
// refusal (make_communicator) rather than an unknown-value error.
enum class Backend { kMpi, kNccl };
inline const EnumNames<Backend>& enum_names(Backend) {
  static const EnumNames<Backend> names = {{"mpi", Backend::kMpi}, {"nccl", Backend::kNccl}};
  return names;
}

// Why `backend` cannot run in this build ("" when it can): the config loader and make_communicator give
// the same answer.
inline std::string backend_unavailable(Backend backend) {
  if (backend == Backend::kMpi) return "";
  return enum_name(backend) + ": this moe was built without NCCL; mpi is the only backend in this version";
}

struct ParallelOptions {
  int64_t expert_parallel_size = 1;  // ranks sharing one set of experts; divides the world and the experts
  Backend backend = Backend::kMpi;
};

}  // namespace moe
