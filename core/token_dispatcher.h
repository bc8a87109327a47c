#pragma once
// Token dispatch: takes a rank's tokens to the experts routing chose, and brings the results back.
//
// The local steps run on every rank: dispatch permutes the kept assignments into one buffer grouped by
// expert; combine unpermutes, weights by the gates and sums over k. LocalTokenDispatcher is those steps
// alone: the whole path when every expert is on this rank (EP = 1). AllToAllTokenDispatcher runs the
// same local steps and, between them, the exchanges: dispatch sends per-expert counts (an all-to-all of
// counts), then the rows (all-to-all-v), and regroups what arrived (by source rank, then local expert) by
// local expert; combine undoes each step in reverse. Both exchanges are autograd functions whose
// backward is the reverse exchange. Capacity has already been applied by the router on this (sending)
// rank, as GShard and Megatron do. With moe.dispatch_once_per_rank, a token travels once to each rank
// that holds any of its experts, with a byte mask of which local experts want it and their gate weights;
// the receiver expands the rows, and its combine weights the experts' rows and sums them per token, so
// one row comes back. A token's k experts on one rank then cost one row each way, not k (DeepEP's
// dispatch and combine; what makes node-limited routing pay). The models: Megatron's MoEAlltoAllTokenDispatcher
// (preprocess, exchange, postprocess) and torchtitan's LocalTokenDispatcher / all-to-all dispatcher.
#include <ATen/ATen.h>

#include <memory>
#include <utility>
#include <vector>

#include "core/permute.h"
#include "core/phase_times.h"
#include "core/router.h"
#include "parallel/communicator.h"
#include "parallel/parallel_dims.h"

namespace moe {

// What dispatch() did, which combine() needs to undo it (as DeepEP's handle).
struct DispatchHandle {
  Permutation permutation;         // this rank's assignments grouped by global expert
  at::Tensor probs_TK;             // gate weights applied by combine
  // Set by the all-to-all dispatcher only:
  // Rows dispatch's exchange sends to and receives from each EP rank (combine's go back the other way):
  // a row per kept assignment, or once per rank a row per distinct token.
  std::vector<int64_t> send_rows, recv_rows;
  at::Tensor regroup_idx, ungroup_idx;  // received order <-> local-expert order (undefined: identity)
  // Once per rank: the sender's tokens in the order sent (by rank, then token), and on the receiving
  // side the position of each local-expert-ordered row in the received [El, U] masks (its row is the
  // position mod U) and its gate weight.
  at::Tensor token_idx_U;
  at::Tensor expand_pos;
  at::Tensor weights_N;
};

// What a dispatcher's exchanges of rows moved, forward and backward, since it was last taken
// (telemetry): bytes to and from other ranks, and the time inside the exchanges' calls (the host's time:
// on a GPU the calls queue NCCL work, and train.profile's synchronised phases give the device's).
struct ExchangeStats {
  int64_t bytes_sent = 0, bytes_received = 0;
  PhaseTimes times;  // times.exchange, milliseconds
  int64_t shadowed_experts = 0;  // experts copied to every rank (MoELayer's moe.shadow_experts)
};

// Rows on their way between ranks: `rows` is not to be read until the exchange is finished.
struct RowsInFlight {
  at::Tensor rows;
  c10::intrusive_ptr<torch::CustomClassHolder> exchange;  // null: nothing in flight, rows are ready
};

struct Dispatched {
  at::Tensor x_ND;                               // rows grouped by local expert (after dispatch_finish)
  std::vector<int64_t> tokens_per_local_expert;  // rows per local expert, in order
  DispatchHandle handle;
  RowsInFlight in_flight;                        // between dispatch_start and dispatch_finish
  RowsInFlight weights_in_flight;                // the same, once per rank: the gate weights
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  Dispatched dispatch(const at::Tensor& x_TD, const Routing& routing);
  // y_ND in the order dispatch() produced -> y_TD, weighted by the gates and summed over k.
  at::Tensor combine(const at::Tensor& y_ND, const DispatchHandle& handle);
  // The same two in halves, so that other work can run while the rows travel (MoELayer's
  // moe.a2a_overlap_degree): *_start leaves the exchange in flight, *_finish completes it. Halves of
  // several calls may interleave; every EP rank starts its exchanges in the same order. In backward the
  // reverse exchanges are split the same way: each is started where autograd reaches the finishing half
  // and waited for where it reaches the starting half.
  virtual Dispatched dispatch_start(const at::Tensor& x_TD, const Routing& routing) = 0;
  virtual void dispatch_finish(Dispatched& dispatched) = 0;
  virtual RowsInFlight combine_start(const at::Tensor& y_ND, const DispatchHandle& handle) = 0;
  virtual at::Tensor combine_finish(const RowsInFlight& y, const DispatchHandle& handle) = 0;
  virtual int64_t num_local_experts() const = 0;
  virtual void set_phase_times(PhaseTimes* times) { times_ = times; }
  // The exchanges' counts since the last call, which zeroes them.
  ExchangeStats take_exchange_stats() { return std::exchange(exchange_stats_, ExchangeStats{}); }

 protected:
  PhaseTimes* times_ = nullptr;
  ExchangeStats exchange_stats_;
};

// The local steps alone: every one of num_experts experts is on this rank.
class LocalTokenDispatcher : public TokenDispatcher {
 public:
  explicit LocalTokenDispatcher(int64_t num_experts) : num_experts_(num_experts) {}
  Dispatched dispatch_start(const at::Tensor& x_TD, const Routing& routing) override;
  void dispatch_finish(Dispatched&) override {}
  RowsInFlight combine_start(const at::Tensor& y_ND, const DispatchHandle&) override { return {y_ND, {}}; }
  at::Tensor combine_finish(const RowsInFlight& y, const DispatchHandle& handle) override;
  int64_t num_local_experts() const override { return num_experts_; }
  // dispatch() without the per-expert row counts on the host, which an exchange replaces by its own.
  Dispatched permute_tokens(const at::Tensor& x_TD, const Routing& routing);

 private:
  int64_t num_experts_;
};

// The local steps around the exchanges over an expert-parallel group of more than one rank; this rank
// owns the experts of its ParallelDims shard. check_splits (a debug option) cross-checks the split sizes
// and the exchange sequence between ranks before each exchange of rows, in dispatch and in combine, and
// throws on a mismatch naming both ranks, instead of hanging or exchanging garbage.
class AllToAllTokenDispatcher : public TokenDispatcher {
 public:
  AllToAllTokenDispatcher(const ParallelDims& dims, Communicator& ep_group, bool check_splits,
                          bool once_per_rank);
  Dispatched dispatch_start(const at::Tensor& x_TD, const Routing& routing) override;
  void dispatch_finish(Dispatched& dispatched) override;
  RowsInFlight combine_start(const at::Tensor& y_ND, const DispatchHandle& handle) override;
  at::Tensor combine_finish(const RowsInFlight& y, const DispatchHandle& handle) override;
  int64_t num_local_experts() const override { return dims_.num_local_experts; }
  void set_phase_times(PhaseTimes* times) override {
    times_ = times;
    local_.set_phase_times(times);
  }

 private:
  RowsInFlight start_exchange(const at::Tensor& x, const std::vector<int64_t>& send_rows,
                              const std::vector<int64_t>& recv_rows);
  at::Tensor finish_exchange(const RowsInFlight& in_flight);

  ParallelDims dims_;           // this rank's shard: num_experts, num_local_experts
  LocalTokenDispatcher local_;  // permute and unpermute over all experts (global ids)
  Communicator& ep_group_;
  bool check_splits_;
  bool once_per_rank_;
  int64_t exchanges_ = 0;  // exchanges of rows so far, for check_splits
};

// The dispatcher for this rank's shard: local when its EP group has one rank (ep_group may then be null).
// once_per_rank: moe.dispatch_once_per_rank.
std::unique_ptr<TokenDispatcher> make_token_dispatcher(const ParallelDims& dims, Communicator* ep_group,
                                                       bool check_splits, bool once_per_rank);

}  // namespace moe
