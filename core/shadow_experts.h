#pragma once
// Shadow experts (FasterMoE's dynamic shadowing, He et al., PPoPP 2022). Routing decides how many rows
// each expert gets, and so how much work each expert-parallel rank does; the ranks then wait for the
// busiest at every exchange. A shadowed expert is copied, for one step, from its owner to every rank of
// the EP group, and each rank runs its own tokens for it on its copy instead of sending them to the
// owner: the expert's weights travel once (a broadcast) and its gradient once back (an all-reduce into
// the owner's shard), and the owner's share of rows moves to the ranks whose tokens they are. The
// function is the same; only where an assignment is computed changes.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// Which experts to shadow this step. counts_RE: the rows every EP rank routes to every global expert,
// [R][E] row-major; rank r owns experts [r * El, (r + 1) * El). A rank's load is the rows its experts
// compute. Greedily, up to max_shadows times: among the busiest rank's experts not yet shadowed, the one
// whose shadowing leaves the smallest maximum load, taken if that lowers the maximum by at least
// min_rows (what a copy of the weights is worth in rows). Sorted; the same on every rank given the same
// counts.
std::vector<int64_t> choose_shadow_experts(const std::vector<int64_t>& counts_RE, int64_t num_ranks,
                                           int64_t experts_per_rank, int64_t max_shadows, int64_t min_rows);

// The shadowed experts' weights on every rank of ep_group: for each of `weights` (this rank's [El, ...]
// shards, e.g. w1, w3, w2), a [S, ...] copy holding global experts `shadows` in order, broadcast from
// their owners (global expert e is local e - ep_rank * El on EP rank e / El). Backward sums every rank's
// gradient of the copies and returns it in the owners' shards (nothing on a rank that owns none).
// Collective: every EP rank calls it with the same shadows.
std::vector<at::Tensor> replicate_experts(const std::vector<at::Tensor>& weights, const std::vector<int64_t>& shadows,
                                          int64_t experts_per_rank, Communicator& ep_group);

}  // namespace moe
