#pragma once
// TokenDispatcher (all-to-all-v): takes a rank's tokens to the ranks that own the experts routing chose,
// and brings the results back.
//
// dispatch: permute the kept assignments by global expert; exchange per-expert counts (an all-to-all of
// counts); exchange the rows (all-to-all-v); regroup what arrived (by source rank, then local expert) by
// local expert. combine: the exact reverse, then unpermute, weight by the gates and sum over k. Both
// exchanges are autograd functions whose backward is the reverse exchange. Capacity has already been
// applied by the router on this (sending) rank, as GShard and Megatron do. Without an EP group (or with
// one rank) the same code runs with no communication.
#include <ATen/ATen.h>

#include <vector>

#include "core/permute.h"
#include "core/phase_times.h"
#include "core/router.h"
#include "parallel/communicator.h"

namespace moe {

// What dispatch() did, which combine() needs to undo it (as DeepEP's handle).
struct DispatchHandle {
  Permutation permutation;         // this rank's assignments grouped by global expert
  at::Tensor probs_TK;             // gate weights applied by combine
  std::vector<int64_t> send_rows;  // rows sent to each EP rank
  std::vector<int64_t> recv_rows;  // rows received from each EP rank
  at::Tensor regroup_idx, ungroup_idx;  // received order <-> local-expert order (undefined: identity)
};

struct Dispatched {
  at::Tensor x_ND;                               // rows grouped by local expert
  std::vector<int64_t> tokens_per_local_expert;  // rows per local expert, in order
  DispatchHandle handle;
};

class TokenDispatcher {
 public:
  // ep_group: the ranks sharing one set of `num_experts` experts, each owning a contiguous block of
  // num_experts / size; null means all experts are local. check_splits (a debug option) cross-checks
  // the split sizes and the exchange sequence between ranks before each exchange and throws on a
  // mismatch, naming both ranks, instead of hanging or exchanging garbage.
  TokenDispatcher(int64_t num_experts, Communicator* ep_group = nullptr, bool check_splits = false);

  Dispatched dispatch(const at::Tensor& x_TD, const Routing& routing);
  // y_ND in the order dispatch() produced -> y_TD, weighted by the gates and summed over k.
  at::Tensor combine(const at::Tensor& y_ND, const DispatchHandle& handle);

  int64_t num_local_experts() const { return num_local_experts_; }
  void set_phase_times(PhaseTimes* times) { times_ = times; }

 private:
  at::Tensor exchange(const at::Tensor& x, const std::vector<int64_t>& send_rows,
                      const std::vector<int64_t>& recv_rows);

  int64_t num_experts_, num_local_experts_;
  Communicator* ep_group_;
  bool check_splits_;
  int64_t exchanges_ = 0;  // forward exchanges so far, for check_splits
  PhaseTimes* times_ = nullptr;
};

// y = all_to_all_v(x) as an autograd function (backward: the reverse exchange). Exposed for the tests.
at::Tensor all_to_all_v(Communicator& comm, const at::Tensor& x, const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows);

}  // namespace moe
