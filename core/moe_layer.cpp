#include "core/moe_layer.h"

#include "core/check.h"
#include "core/recompute.h"

namespace moe {

MoELayerImpl::MoELayerImpl(const TransformerOptions& options, const ExpertParallel& parallel)
    : options_(options.moe), hidden_size_(options.hidden_size) {
  const ParallelDims shard = parallel.shard(options_.router.num_experts);
  MOE_CHECK(shard.num_experts == options_.router.num_experts, "moe layer: the parallel dims shard ",
            shard.num_experts, " experts, the layer has ", options_.router.num_experts);
  const std::string misfit = groups_misfit_ranks(options_.router, shard.ep_size);
  MOE_CHECK(misfit.empty(), "moe layer: moe.num_groups ", misfit);
  dispatcher_ = make_token_dispatcher(shard, parallel.ep_group, options_.check_splits, options_.dispatch_once_per_rank);
  first_local_expert_ = shard.first_local_expert;
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

}  // namespace

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
  // The tokens go in `chunks` slices (Tutel's overlap degree): every slice's exchange is started at once,
  // then each slice's experts run while the later slices' rows are still travelling, and each slice's
  // results start back while the next one computes. The shared experts run while the last ones return.
  const int64_t T = x_TD.size(0);
  const int64_t chunks = dispatcher_->num_local_experts() == options_.router.num_experts ? 1 : options_.a2a_overlap_degree;
  std::vector<Dispatched> sent;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = T * c / chunks, t1 = T * (c + 1) / chunks;
    sent.push_back(dispatcher_->dispatch_start(x_TD.narrow(0, t0, t1 - t0), token_slice(out.routing, t0, t1 - t0)));
  }
  std::vector<RowsInFlight> returning;
  for (Dispatched& d : sent) {
    dispatcher_->dispatch_finish(d);
    at::Tensor y_ND;
    {
      ScopedPhase timer(times_, &PhaseTimes::experts);
      y_ND = run_ffn(experts, d.x_ND, d.tokens_per_local_expert);
    }
    returning.push_back(dispatcher_->combine_start(y_ND, d.handle));
  }
  at::Tensor shared;
  if (shared_experts) shared = run_ffn(shared_experts, x_TD, {T});
  std::vector<at::Tensor> y;
  for (int64_t c = 0; c < chunks; ++c) y.push_back(dispatcher_->combine_finish(returning[c], sent[c].handle));
  at::Tensor y_TD = chunks == 1 ? y[0] : at::cat(y, 0);
  if (shared.defined()) y_TD = y_TD + shared;
  out.y = y_TD.view(x.sizes());
  return out;
}

at::Tensor MoELayerImpl::run_ffn(Experts e, const at::Tensor& x, const std::vector<int64_t>& rows) {
  if (!recompute_experts_ || !is_training()) return e->forward(x, rows);
  const Recomputable ffn = [e, rows](const std::vector<at::Tensor>& in, bool) mutable {
    return std::vector<at::Tensor>{e->forward(in[0], rows)};
  };
  return recompute(ffn, {x})[0];
}

void MoELayerImpl::set_phase_times(PhaseTimes* times) {
  times_ = times;
  dispatcher_->set_phase_times(times);
}

}  // namespace moe
