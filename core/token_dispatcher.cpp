#include "core/token_dispatcher.h"

#include <torch/autograd.h>

#include <c10/util/accumulate.h>

#include <numeric>

#include "core/check.h"

namespace moe {
namespace {

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// An exchange of rows in flight, shared by the autograd pair below: forward starts it in StartExchange and
// waits in FinishExchange; backward starts the reverse exchange in FinishExchange's backward and waits in
// StartExchange's. Between the two halves the caller (forward) or autograd (backward) is free to compute.
struct RowExchange : torch::CustomClassHolder {
  RowExchange(Communicator* c, std::vector<int64_t> send, std::vector<int64_t> recv, ExchangeStats* s)
      : comm(c), send_rows(std::move(send)), recv_rows(std::move(recv)), stats(s) {}
  Communicator* comm;
  std::vector<int64_t> send_rows, recv_rows;
  ExchangeStats* stats;  // the dispatcher's, which outlives its layer's graphs
  std::unique_ptr<PendingCollective> pending;
  at::Tensor reverse_out;  // backward: the reverse exchange's rows, written once it finishes

  at::Tensor start(const at::Tensor& x, bool reverse) {
    const std::vector<int64_t>& send = reverse ? recv_rows : send_rows;
    const std::vector<int64_t>& recv = reverse ? send_rows : recv_rows;
    std::vector<int64_t> shape = x.sizes().vec();
    shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t{0});
    at::Tensor out = at::empty(shape, x.options());
    ScopedPhase timer(&stats->times, &PhaseTimes::exchange);
    const int64_t row_bytes = c10::multiply_integers(shape.begin() + 1, shape.end()) * x.element_size();
    for (int r = 0; r < static_cast<int>(send.size()); ++r) {
      if (r == comm->rank()) continue;  // a rank's rows to itself are a copy
      stats->bytes_sent += send[r] * row_bytes;
      stats->bytes_received += recv[r] * row_bytes;
    }
    pending = comm->all_to_all_v_async(x.contiguous(), send, out, recv);
    return out;
  }
  void finish() {
    if (!pending) return;
    ScopedPhase timer(&stats->times, &PhaseTimes::exchange);
    pending->wait();
    pending.reset();
  }
};

// The positions of the first `count` set elements of a flat bool tensor, in order: a stable sort with the
// unset ones last. Unlike nonzero(), no host sync when the caller already knows the count.
at::Tensor set_positions(const at::Tensor& flags, int64_t count) {
  return std::get<1>(at::sort(flags.logical_not().to(at::kByte), /*stable=*/true, 0, false)).narrow(0, 0, count);
}

void check_host_counts(const Routing& routing, int64_t num_experts) {
  MOE_CHECK(static_cast<int64_t>(routing.tokens_per_expert.size()) == num_experts, "token dispatcher: the routing holds ",
            routing.tokens_per_expert.size(), " host counts for ", num_experts, " experts");
}

using Holder = c10::intrusive_ptr<torch::CustomClassHolder>;

RowExchange& as_exchange(const Holder& holder) { return *static_cast<RowExchange*>(holder.get()); }

// The capsule keeps the exchange alive for as long as the graph holds either half.
RowExchange& exchange_of(torch::autograd::AutogradContext* ctx) {
  return as_exchange(ctx->saved_data["exchange"].toCapsule());
}

class StartExchange : public torch::autograd::Function<StartExchange> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, Holder exchange) {
    ctx->saved_data["exchange"] = c10::IValue::make_capsule(exchange);
    return as_exchange(exchange).start(x, /*reverse=*/false);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    RowExchange& exchange = exchange_of(ctx);
    exchange.finish();
    return {std::move(exchange.reverse_out), at::Tensor()};
  }
};

class FinishExchange : public torch::autograd::Function<FinishExchange> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows, Holder exchange) {
    ctx->saved_data["exchange"] = c10::IValue::make_capsule(exchange);
    as_exchange(exchange).finish();
    return rows;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    // The gradient passes through unchanged in shape; the exchange's own backward is StartExchange's.
    RowExchange& exchange = exchange_of(ctx);
    exchange.reverse_out = exchange.start(grads[0], /*reverse=*/true);
    return {grads[0], at::Tensor()};
  }
};

}  // namespace

Dispatched TokenDispatcher::dispatch(const at::Tensor& x_TD, const Routing& routing) {
  Dispatched d = dispatch_start(x_TD, routing);
  dispatch_finish(d);
  return d;
}

at::Tensor TokenDispatcher::combine(const at::Tensor& y_ND, const DispatchHandle& handle) {
  return combine_finish(combine_start(y_ND, handle), handle);
}

Dispatched LocalTokenDispatcher::permute_tokens(const at::Tensor& x_TD, const Routing& routing) {
  ScopedPhase timer(times_, &PhaseTimes::permute);
  check_host_counts(routing, num_experts_);
  Dispatched d;
  d.handle.permutation =
      make_permutation(routing.expert_ids_TK, routing.keep_TK, num_experts_,
                       std::accumulate(routing.tokens_per_expert.begin(), routing.tokens_per_expert.end(), int64_t{0}));
  d.handle.probs_TK = routing.probs_TK;
  d.x_ND = permute(x_TD, d.handle.permutation);
  return d;
}

Dispatched LocalTokenDispatcher::dispatch_start(const at::Tensor& x_TD, const Routing& routing) {
  Dispatched d = permute_tokens(x_TD, routing);
  d.tokens_per_local_expert = routing.tokens_per_expert;
  return d;
}

at::Tensor LocalTokenDispatcher::combine_finish(const RowsInFlight& y, const DispatchHandle& h) {
  ScopedPhase timer(times_, &PhaseTimes::unpermute);
  return unpermute(y.rows, h.permutation, h.probs_TK);
}

AllToAllTokenDispatcher::AllToAllTokenDispatcher(const ParallelDims& dims, Communicator& ep_group, bool check_splits,
                                                 bool once_per_rank)
    : dims_(dims), local_(dims.num_experts), ep_group_(ep_group), check_splits_(check_splits),
      once_per_rank_(once_per_rank) {
  MOE_CHECK(ep_group.size() == dims.ep_size && ep_group.rank() == dims.ep_rank, "token dispatcher: the EP group (rank ",
            ep_group.rank(), " of ", ep_group.size(), ") does not match the parallel dims (EP rank ", dims.ep_rank,
            " of ", dims.ep_size, ")");
}

RowsInFlight AllToAllTokenDispatcher::start_exchange(const at::Tensor& x, const std::vector<int64_t>& send_rows,
                                                     const std::vector<int64_t>& recv_rows) {
  const int64_t sequence = exchanges_++;
  if (check_splits_) {
    const int R = ep_group_.size(), me = ep_group_.rank();
    std::vector<int64_t> mine = {sequence};
    mine.insert(mine.end(), send_rows.begin(), send_rows.end());
    const at::Tensor all = ep_group_.all_gather(at::tensor(mine, at::kLong));  // [R, 1 + R]
    for (int r = 0; r < R; ++r) {
      const int64_t seq_r = all[r][0].item<int64_t>(), sends_me = all[r][1 + me].item<int64_t>();
      MOE_CHECK(seq_r == sequence, "token dispatcher: EP rank ", me, " is at exchange #", sequence,
                " but EP rank ", r, " is at exchange #", seq_r, " (ranks ran different numbers of MoE layers)");
      MOE_CHECK(sends_me == recv_rows[r], "token dispatcher: EP rank ", r, " sends ", sends_me,
                " rows to EP rank ", me, ", which expects ", recv_rows[r], " (exchange #", sequence, ")");
    }
  }
  Holder exchange = c10::make_intrusive<RowExchange>(&ep_group_, send_rows, recv_rows, &exchange_stats_);
  return {StartExchange::apply(x, exchange), exchange};
}

at::Tensor AllToAllTokenDispatcher::finish_exchange(const RowsInFlight& in_flight) {
  MOE_CHECK(in_flight.exchange, "token dispatcher: no exchange in flight to finish");
  return FinishExchange::apply(in_flight.rows, in_flight.exchange);
}

Dispatched AllToAllTokenDispatcher::dispatch_start(const at::Tensor& x_TD, const Routing& routing) {
  const int64_t El = dims_.num_local_experts, T = x_TD.size(0);
  // Once per rank needs no sort by expert here (the receiver orders rows by its local experts): combine
  // only reads the token count from the permutation.
  Dispatched d;
  if (once_per_rank_) {
    d.handle.permutation.num_tokens = T;
    d.handle.probs_TK = routing.probs_TK;
  } else {
    d = local_.permute_tokens(x_TD, routing);
  }
  DispatchHandle& h = d.handle;
  ScopedPhase timer(times_, &PhaseTimes::dispatch);
  const int R = ep_group_.size();
  // Once per rank: wanted_RTL[r][t][j] says local expert j of rank r takes token t; a token reaching
  // rank r at all is one row to it, in token order.
  at::Tensor wanted_RTL, reached_RT, unique_R;
  if (once_per_rank_) {
    at::NoGradGuard no_grad;
    wanted_RTL = at::zeros({T, dims_.num_experts}, routing.keep_TK.options())
                     .scatter_(1, routing.expert_ids_TK, routing.keep_TK)
                     .view({T, R, El})
                     .transpose(0, 1);
    reached_RT = wanted_RTL.any(-1);
    unique_R = reached_RT.sum(1);
  }
  // Counts first: row r of recv_counts_RC is how many rows rank r sends to each of our local experts,
  // and once per rank how many distinct tokens.
  const int64_t C = once_per_rank_ ? El + 1 : El;
  check_host_counts(routing, dims_.num_experts);
  at::Tensor send_counts = routing.tokens_per_expert_E.view({R, El});
  if (once_per_rank_) send_counts = at::cat({send_counts, unique_R.view({R, 1})}, 1);
  at::Tensor recv_counts_RC = at::empty({R, C}, send_counts.options());
  at::Tensor recv_counts = recv_counts_RC.view({R * C, 1});
  ep_group_.all_to_all_v(send_counts.contiguous().view({R * C, 1}), std::vector<int64_t>(R, C), recv_counts,
                         std::vector<int64_t>(R, C));
  // Host sync: the counts received size the exchange and the local experts' GEMMs (and, once per rank,
  // the distinct tokens this rank sends ride on the same copy).
  const std::vector<int64_t> host =
      to_vector(once_per_rank_ ? at::cat({recv_counts_RC.view({-1}), unique_R}) : recv_counts_RC.view({-1}));
  h.send_rows.assign(R, 0);
  h.recv_rows.assign(R, 0);
  d.tokens_per_local_expert.assign(El, 0);
  int64_t N = 0;  // rows for the local experts
  for (int r = 0; r < R; ++r) {
    for (int64_t j = 0; j < El; ++j) {
      d.tokens_per_local_expert[j] += host[r * C + j];
      N += host[r * C + j];
    }
  }
  if (!once_per_rank_) {
    const auto counts = routing.tokens_per_expert.begin();
    for (int r = 0; r < R; ++r) {
      h.send_rows[r] = std::accumulate(counts + r * El, counts + (r + 1) * El, int64_t{0});
      h.recv_rows[r] = std::accumulate(host.begin() + r * C, host.begin() + (r + 1) * C, int64_t{0});
    }
    d.in_flight = start_exchange(d.x_ND, h.send_rows, h.recv_rows);
    d.x_ND = at::Tensor();
    if (El > 1) {
      // Chunk (r, j) of the received rows moves to position (j, r): rows grouped by local expert.
      const at::Tensor sizes = recv_counts_RC.reshape({-1});
      const at::Tensor src_start = (sizes.cumsum(0) - sizes).view({R, El}).t().reshape({-1});
      const at::Tensor sizes_JR = recv_counts_RC.t().reshape({-1});
      const at::Tensor dst_start = sizes_JR.cumsum(0) - sizes_JR;
      h.regroup_idx = at::arange(N, sizes.options()) + at::repeat_interleave(src_start - dst_start, sizes_JR, 0, N);
      h.ungroup_idx = at::empty_like(h.regroup_idx).index_put_({h.regroup_idx}, at::arange(N, sizes.options()));
    }
    return d;
  }
  h.send_rows.assign(host.end() - R, host.end());
  for (int r = 0; r < R; ++r) h.recv_rows[r] = host[r * C + El];
  const at::Tensor reached_U =
      set_positions(reached_RT.reshape({-1}), std::accumulate(h.send_rows.begin(), h.send_rows.end(), int64_t{0}));
  h.token_idx_U = reached_U.remainder(std::max<int64_t>(T, 1));
  d.in_flight = start_exchange(x_TD.index_select(0, h.token_idx_U), h.send_rows, h.recv_rows);
  // Beside each row, its gate weight for each local expert of the rank (0 where none) and the mask of
  // the experts that take it (a kept weight may itself be 0). Rows ordered by local expert, then rank,
  // then token are the set bits of the received masks' transpose in order.
  const at::Tensor weights_TE =
      at::zeros({T, dims_.num_experts}, routing.probs_TK.options()).scatter(1, routing.expert_ids_TK, routing.probs_TK);
  const at::Tensor weights_UL = weights_TE.view({T, R, El}).transpose(0, 1).reshape({R * T, El}).index_select(0, reached_U);
  d.weights_in_flight = start_exchange(weights_UL, h.send_rows, h.recv_rows);
  const at::Tensor mask_UL = wanted_RTL.reshape({R * T, El}).index_select(0, reached_U).to(at::kByte);
  at::Tensor recv_mask_UL =
      at::empty({std::accumulate(h.recv_rows.begin(), h.recv_rows.end(), int64_t{0}), El}, mask_UL.options());
  ep_group_.all_to_all_v(mask_UL, h.send_rows, recv_mask_UL, h.recv_rows);
  h.expand_pos = set_positions(recv_mask_UL.t().ne(0).reshape({-1}), N);
  return d;
}

void AllToAllTokenDispatcher::dispatch_finish(Dispatched& d) {
  ScopedPhase timer(times_, &PhaseTimes::dispatch);
  DispatchHandle& h = d.handle;
  const at::Tensor x_recv = finish_exchange(d.in_flight);
  d.in_flight = {};
  if (h.expand_pos.defined()) {
    const int64_t U = x_recv.size(0);
    d.x_ND = x_recv.index_select(0, h.expand_pos.remainder(std::max<int64_t>(U, 1)));
    h.weights_N = finish_exchange(d.weights_in_flight).t().reshape({-1}).index_select(0, h.expand_pos);
    d.weights_in_flight = {};
  } else {
    d.x_ND = h.regroup_idx.defined() ? x_recv.index_select(0, h.regroup_idx) : x_recv;
  }
}

RowsInFlight AllToAllTokenDispatcher::combine_start(const at::Tensor& y_ND, const DispatchHandle& h) {
  ScopedPhase timer(times_, &PhaseTimes::combine);
  at::Tensor y_recv;
  if (h.expand_pos.defined()) {
    // Each received token's rows, weighted and summed here: one row back per (token, rank).
    const int64_t U = std::accumulate(h.recv_rows.begin(), h.recv_rows.end(), int64_t{0});
    y_recv = at::zeros({U, y_ND.size(1)}, y_ND.options())
                 .index_add(0, h.expand_pos.remainder(std::max<int64_t>(U, 1)),
                            y_ND * h.weights_N.to(y_ND.scalar_type()).unsqueeze(1));
  } else {
    y_recv = h.ungroup_idx.defined() ? y_ND.index_select(0, h.ungroup_idx) : y_ND;
  }
  return start_exchange(y_recv, h.recv_rows, h.send_rows);
}

at::Tensor AllToAllTokenDispatcher::combine_finish(const RowsInFlight& y, const DispatchHandle& h) {
  at::Tensor y_sorted;
  {
    ScopedPhase timer(times_, &PhaseTimes::combine);
    y_sorted = finish_exchange(y);
  }
  if (h.expand_pos.defined()) {
    ScopedPhase timer(times_, &PhaseTimes::unpermute);
    return at::zeros({h.permutation.num_tokens, y_sorted.size(1)}, y_sorted.options()).index_add(0, h.token_idx_U, y_sorted);
  }
  return local_.combine_finish({y_sorted, {}}, h);
}

std::unique_ptr<TokenDispatcher> make_token_dispatcher(const ParallelDims& dims, Communicator* ep_group,
                                                       bool check_splits, bool once_per_rank) {
  if (dims.ep_size == 1) return std::make_unique<LocalTokenDispatcher>(dims.num_experts);
  MOE_CHECK(ep_group != nullptr, "token dispatcher: expert parallel size ", dims.ep_size, " needs an EP group");
  return std::make_unique<AllToAllTokenDispatcher>(dims, *ep_group, check_splits, once_per_rank);
}

}  // namespace moe
