#pragma once
// ParallelDims: world = expert_parallel_size (EP) x expert-data-parallel size (EDP). EP groups are runs
// of consecutive ranks (rank r is EP rank r % EP of EP group r / EP), so an EP group stays within a
// node when ranks are packed by node, as Megatron places them. EP rank j owns the contiguous block of
// global experts [j * E/EP, (j+1) * E/EP). Non-expert parameters are replicated on every rank.
#include <memory>
#include <optional>

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

// What a model on this rank needs of the layout: its expert shard and the groups an MoE layer talks
// over. The default is one process holding every expert.
struct ExpertParallel {
  std::optional<ParallelDims> dims;   // empty: one process, every expert local
  Communicator* ep_group = nullptr;   // the all-to-all group (needed when dims->ep_size > 1)
  Communicator* aux_group = nullptr;  // the ranks a global-scope balance loss counts over (all ranks)

  // This rank's shard of `num_experts` experts: dims, or all of them on one process.
  ParallelDims shard(int64_t num_experts) const { return dims ? *dims : ParallelDims(1, 0, 1, num_experts); }
};

}  // namespace moe
