#include "core/moe_layer.h"

#include <utility>

#include "core/check.h"
#include "core/recompute.h"
#include "core/shadow_experts.h"

namespace moe {

MoELayerImpl::MoELayerImpl(const TransformerOptions& options, const ExpertParallel& parallel)
    : options_(options.moe), hidden_size_(options.hidden_size), shadow_dispatcher_(options.moe.router.num_experts) {
  const ParallelDims shard = parallel.shard(options_.router.num_experts);
  MOE_CHECK(shard.num_experts == options_.router.num_experts, "moe layer: the parallel dims shard ",
            shard.num_experts, " experts, the layer has ", options_.router.num_experts);
  const std::string misfit = groups_misfit_ranks(options_.router, shard.ep_size);
  MOE_CHECK(misfit.empty(), "moe layer: moe.num_groups ", misfit);
  dispatcher_ = make_token_dispatcher(shard, parallel.ep_group, options_.check_splits, options_.dispatch_once_per_rank);
  first_local_expert_ = shard.first_local_expert;
  num_local_experts_ = shard.num_local_experts;
  if (shard.ep_size > 1) ep_group_ = parallel.ep_group;
  router = register_module("router", Router(options, parallel.aux_group));
  ExpertsOptions eo;
  eo.num_experts = shard.num_local_experts;
  eo.hidden_size = hidden_size_;
  eo.ffn_hidden_size = options_.ffn_hidden_size;
  eo.type = options_.expert_type;
  eo.init_std = options.init_std;
  experts = register_module("experts", Experts(eo));
  if (options_.num_shared_experts > 0) {
    eo.num_experts = 1;
    eo.ffn_hidden_size = options_.shared_ffn_width();
    shared_experts = register_module("shared_experts", Experts(eo));
  }
}

namespace {

// The routing of tokens [t0, t0 + n): what dispatch reads of it, with its own host counts.
Routing token_slice(const Routing& r, int64_t t0, int64_t n) {
  if (t0 == 0 && n == r.probs_TK.size(0)) return r;
  Routing out;
  out.probs_TK = r.probs_TK.narrow(0, t0, n);
  out.expert_ids_TK = r.expert_ids_TK.narrow(0, t0, n);
  out.keep_TK = r.keep_TK.narrow(0, t0, n);
  out.tokens_per_expert_E = at::bincount(out.expert_ids_TK.masked_select(out.keep_TK), {},
                                         static_cast<int64_t>(r.tokens_per_expert.size()));
  const at::Tensor counts = out.tokens_per_expert_E.to(at::kCPU, at::kLong);
  out.tokens_per_expert.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  return out;
}

// Takes this rank's assignments to the experts in `copied` (global ids, a bool [E] on the host) out of
// `r` and returns them as a routing of their own, for the local steps around the copies.
Routing split_shadowed(Routing& r, const std::vector<bool>& copied) {
  const int64_t E = static_cast<int64_t>(copied.size());
  std::vector<int64_t> shadow_counts(E, 0);
  for (int64_t e = 0; e < E; ++e) {
    if (!copied[e]) continue;
    shadow_counts[e] = r.tokens_per_expert[e];
    r.tokens_per_expert[e] = 0;
  }
  const at::Tensor on_copy_E =
      at::tensor(std::vector<uint8_t>(copied.begin(), copied.end()), at::kByte).to(r.keep_TK.device(), at::kBool);
  const at::Tensor on_copy_TK = r.keep_TK.logical_and(on_copy_E.index({r.expert_ids_TK}));
  Routing s = r;
  s.keep_TK = on_copy_TK;
  s.tokens_per_expert = shadow_counts;
  s.tokens_per_expert_E = r.tokens_per_expert_E * on_copy_E;
  r.keep_TK = r.keep_TK.logical_and(on_copy_TK.logical_not());
  r.probs_TK = r.probs_TK.masked_fill(on_copy_TK, 0);
  r.tokens_per_expert_E = r.tokens_per_expert_E * on_copy_E.logical_not();
  return s;
}

}  // namespace

std::vector<int64_t> MoELayerImpl::choose_shadows(const Routing& routing) {
  const int64_t R = ep_group_->size();
  // Host sync: the choice needs every rank's counts.
  const at::Tensor all = ep_group_->all_gather(routing.tokens_per_expert_E.to(at::kLong)).to(at::kCPU).contiguous();
  const std::vector<int64_t> counts(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + all.numel());
  return choose_shadow_experts(counts, R, num_local_experts_, options_.shadow_experts, options_.shadow_min_rows);
}

ExchangeStats MoELayerImpl::take_exchange_stats() {
  ExchangeStats s = dispatcher_->take_exchange_stats();
  s.shadowed_experts = std::exchange(shadowed_, 0);
  return s;
}

MoEOutput MoELayerImpl::forward(const at::Tensor& x) {
  const int64_t D = hidden_size_;
  MOE_CHECK(x.size(-1) == D, "moe layer: input's last dimension (", x.size(-1), ") must be hidden_size (", D, ")");
  const at::Tensor x_TD = x.reshape({-1, D});
  MoEOutput out;
  {
    ScopedPhase timer(times_, &PhaseTimes::route);
    // A [..., S, D] input is sequences of S tokens, which a sequence-scope balance loss needs to know.
    out.routing = router->forward(x_TD, x.dim() >= 3 ? x.size(-2) : 0);
  }
  // Shadowing: this rank's tokens for the copied experts of other ranks stay here. The copies are made
  // now, while the ranks are in step after routing; backward sums their gradients after the dispatch's
  // reverse exchange, again in step.
  Routing routing = out.routing;
  Routing shadowed;
  std::vector<int64_t> shadows;
  std::vector<at::Tensor> copies;
  if (ep_group_ && options_.shadow_experts > 0) shadows = choose_shadows(routing);
  if (!shadows.empty()) {
    std::vector<bool> copied(options_.router.num_experts, false);
    for (int64_t e : shadows) copied[e] = e / num_local_experts_ != ep_group_->rank();
    shadowed = split_shadowed(routing, copied);
    std::vector<at::Tensor> shards{experts->w1, experts->w2};
    if (experts->w3.defined()) shards.insert(shards.begin() + 1, experts->w3);
    copies = replicate_experts(shards, shadows, num_local_experts_, *ep_group_);
    if (!experts->w3.defined()) copies.insert(copies.begin() + 1, at::Tensor());
    shadowed_ += static_cast<int64_t>(shadows.size());
  }
  // The tokens go in `chunks` slices (Tutel's overlap degree): every slice's exchange is started at once,
  // then each slice's experts run while the later slices' rows are still travelling, and each slice's
  // results start back while the next one computes. The shared experts run while the last ones return.
  const int64_t T = x_TD.size(0);
  const int64_t chunks = dispatcher_->num_local_experts() == options_.router.num_experts ? 1 : options_.a2a_overlap_degree;
  std::vector<Dispatched> sent;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = T * c / chunks, t1 = T * (c + 1) / chunks;
    sent.push_back(dispatcher_->dispatch_start(x_TD.narrow(0, t0, t1 - t0), token_slice(routing, t0, t1 - t0)));
  }
  std::vector<RowsInFlight> returning;
  at::Tensor y_shadowed;
  for (size_t c = 0; c < sent.size(); ++c) {
    Dispatched& d = sent[c];
    dispatcher_->dispatch_finish(d);
    at::Tensor y_ND;
    {
      ScopedPhase timer(times_, &PhaseTimes::experts);
      y_ND = run_ffn(d.x_ND, d.tokens_per_local_expert, {experts->w1, experts->w3, experts->w2});
    }
    // The shadowed tokens run before the last exchange back, so that a rank with fewer rows of its own
    // spends the time it would wait there; and so backward, in reverse order, runs them after that
    // exchange's reverse, beside the other ranks' experts, not before it, where every rank would wait.
    if (c + 1 == sent.size() && !shadows.empty()) y_shadowed = run_shadowed(x_TD, shadowed, shadows, copies);
    returning.push_back(dispatcher_->combine_start(y_ND, d.handle));
  }
  at::Tensor shared;
  if (shared_experts) shared = run_ffn(x_TD, {T}, {shared_experts->w1, shared_experts->w3, shared_experts->w2});
  std::vector<at::Tensor> y;
  for (int64_t c = 0; c < chunks; ++c) y.push_back(dispatcher_->combine_finish(returning[c], sent[c].handle));
  at::Tensor y_TD = chunks == 1 ? y[0] : at::cat(y, 0);
  if (y_shadowed.defined()) y_TD = y_TD + y_shadowed;
  if (shared.defined()) y_TD = y_TD + shared;
  out.y = y_TD.view(x.sizes());
  return out;
}

at::Tensor MoELayerImpl::run_shadowed(const at::Tensor& x_TD, const Routing& shadowed,
                                      const std::vector<int64_t>& shadows, const std::vector<at::Tensor>& copies) {
  Dispatched d = shadow_dispatcher_.dispatch(x_TD, shadowed);
  std::vector<int64_t> rows;
  for (int64_t e : shadows) rows.push_back(shadowed.tokens_per_expert[e]);
  at::Tensor y_ND;
  {
    ScopedPhase timer(times_, &PhaseTimes::experts);
    y_ND = run_ffn(d.x_ND, rows, copies);
  }
  return shadow_dispatcher_.combine(y_ND, d.handle);
}

at::Tensor MoELayerImpl::run_ffn(const at::Tensor& x, const std::vector<int64_t>& rows, const std::vector<at::Tensor>& w) {
  const bool swiglu = w[1].defined();
  const Recomputable ffn = [rows, swiglu](const std::vector<at::Tensor>& in, bool) {
    return std::vector<at::Tensor>{run_experts(in[0], rows, in[1], swiglu ? in[2] : at::Tensor(), in.back())};
  };
  std::vector<at::Tensor> in{x, w[0]};
  if (swiglu) in.push_back(w[1]);
  in.push_back(w[2]);
  if (!recompute_experts_ || !is_training()) return ffn(in, false)[0];
  return recompute(ffn, in)[0];
}

void MoELayerImpl::set_phase_times(PhaseTimes* times) {
  times_ = times;
  dispatcher_->set_phase_times(times);
  shadow_dispatcher_.set_phase_times(times);
}

}  // namespace moe
