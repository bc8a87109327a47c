#include "parallel/parallel_dims.h"

#include "core/check.h"

namespace moe {

ParallelDims::ParallelDims(int world_size_, int rank_, int expert_parallel_size, int64_t num_experts_)
    : world_size(world_size_), rank(rank_), ep_size(expert_parallel_size), num_experts(num_experts_) {
  MOE_INPUT_CHECK(ep_size >= 1, "expert_parallel_size (", ep_size, ") must be at least 1");
  MOE_INPUT_CHECK(world_size % ep_size == 0, "expert_parallel_size (", ep_size, ") must divide the world size (",
                  world_size, ")");
  MOE_INPUT_CHECK(num_experts % ep_size == 0, "expert_parallel_size (", ep_size,
                  ") must divide num_experts (", num_experts, ")");
  MOE_CHECK(rank >= 0 && rank < world_size, "rank ", rank, " is outside a world of ", world_size);
  edp_size = world_size / ep_size;
  ep_rank = rank % ep_size;
  edp_rank = rank / ep_size;
  num_local_experts = num_experts / ep_size;
  first_local_expert = ep_rank * num_local_experts;
}

ProcessGroups make_process_groups(Communicator& world, const ParallelDims& dims) {
  MOE_CHECK(world.size() == dims.world_size && world.rank() == dims.rank, "process groups: communicator (rank ",
            world.rank(), " of ", world.size(), ") does not match the parallel dims (rank ", dims.rank, " of ",
            dims.world_size, ")");
  ProcessGroups g;
  g.ep = world.split(/*color=*/dims.edp_rank, /*key=*/dims.ep_rank, "ep");
  g.edp = world.split(/*color=*/dims.ep_rank, /*key=*/dims.edp_rank, "edp");
  return g;
}

}  // namespace moe
