#pragma once
// The `parallel` section: how the ranks are laid out and which transport carries their collectives.
// Torch-free, for the light `moe` executable (plan).
#include <cstdint>
#include <string>

#include "core/check.h"

namespace moe {

// auto: nccl when the run's tensors are on a GPU, mpi when they are on the CPU (train/device.h).
enum class Backend { kAuto, kMpi, kNccl };
inline const EnumNames<Backend>& enum_names(Backend) {
  static const EnumNames<Backend> names = {
      {"auto", Backend::kAuto}, {"mpi", Backend::kMpi}, {"nccl", Backend::kNccl}};
  return names;
}

// Whether this build carries the NCCL communicator (CMake found CUDA and NCCL: MOE_HAVE_NCCL).
constexpr bool nccl_built() {
#ifdef MOE_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

// Why `backend` cannot run in this build ("" when it can): the config loader and make_communicator give
// the same answer. Whether the run's device suits it is decided later, once the device is known.
inline std::string backend_unavailable(Backend backend) {
  if (backend != Backend::kNccl || nccl_built()) return "";
  return "nccl: this moe was built without NCCL (CMake found no CUDA toolkit or no NCCL: docs/gpu.md); "
         "use mpi, which also carries CUDA tensors";
}

struct ParallelOptions {
  int64_t expert_parallel_size = 1;  // ranks sharing one set of experts; divides the world and the experts
  Backend backend = Backend::kAuto;
  // Seconds a collective may wait for its peers before the rank ends the job (parallel/watchdog.h; NCCL
  // aborts its communicator first), and the longer deadline of the first step and of checkpoint saves
  // and loads. 0: no watchdog.
  double timeout_s = 600;
  double slow_timeout_s = 1800;
};

}  // namespace moe
