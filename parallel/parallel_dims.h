#pragma once
// ParallelDims: world = expert_parallel_size (EP) x expert-data-parallel size (EDP). EP groups are runs
// of consecutive ranks (rank r is EP rank r % EP of EP group r / EP), so an EP group stays within a
// node when ranks are packed by node, as Megatron places them. EP rank j owns the contiguous block of
// global experts [j * E/EP, (j+1) * E/EP). Non-expert parameters are replicated on every rank.
#include <memory>

#include "parallel/communicator.h"

namespace moe {

struct ParallelDims {
  // Throws moe::Error (bad input) with the numbers when EP does not divide the world size or num_experts.
  ParallelDims(int world_size, int rank, int expert_parallel_size, int64_t num_experts);

  int world_size, rank, ep_size, edp_size, ep_rank, edp_rank;
  int64_t num_experts, num_local_experts, first_local_expert;
};

struct ProcessGroups {
  std::unique_ptr<Communicator> ep;   // ranks sharing one full set of experts (all-to-all runs here)
  std::unique_ptr<Communicator> edp;  // ranks holding the same expert shard (expert gradients sum here)
};

// Collective over `world`: every rank calls it.
ProcessGroups make_process_groups(Communicator& world, const ParallelDims& dims);

}  // namespace moe
