#pragma once
// Device placement: which device a rank's tensors live on (train.device) and which backend carries its
// collectives (parallel.backend), decided once at start, before any work, so that a run asking for what
// this machine lacks stops with one message (bad input, exit 2) naming the key.
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "parallel/parallel_options.h"
#include "train/cli/config.h"

namespace moe {

// auto: cuda when libtorch has CUDA and a GPU is visible, else cpu. On cuda, GPU local_rank % count
// (local_rank: this rank's index among the ranks of its node), made the current device.
at::Device select_device(DeviceKind requested, int local_rank);

// auto: nccl on cuda where this build has it, else mpi (which stages CUDA tensors through host memory).
// nccl on the CPU is refused.
Backend select_backend(Backend requested, const at::Device& device);

// "cuda:1 (2 GPUs visible)" or "cpu".
std::string describe(const at::Device& device);

// Refuses (bad input, naming the figures of `moe plan`) a config whose weights, gradients and AdamW
// state on one rank alone exceed this machine's memory: it would fail in the allocator, part-way.
// The CPU's memory; a GPU's is not checked yet.
void check_memory(const Config& config, int world_size, const at::Device& device);

// The device's GEMM rate in FLOP/s for `dtype`, the peak MFU is reported against: square matrix
// products (1536 on the CPU, 8192 on a GPU), repeated for about `seconds`, the best one. Local.
double measure_gemm_peak(const at::Device& device, at::ScalarType dtype, double seconds = 0.5);

struct RankPlacement {
  at::Device device = at::kCPU;
  Backend backend = Backend::kMpi;
};

// Both of the above for `config` (local, throws bad input): run it inside all_ranks_succeed.
RankPlacement select_placement(const Config& config, int local_rank);

// The world communicator of the placement (make_communicator). Collective: call it on every rank, after
// every rank has its placement.
std::unique_ptr<Communicator> make_communicator(const RankPlacement& placement, const Config& config);

}  // namespace moe
