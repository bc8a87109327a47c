#include "core/moe_layer.h"

#include "core/check.h"
#include "core/recompute.h"

namespace moe {

MoELayerImpl::MoELayerImpl(const TransformerOptions& options, const ExpertParallel& parallel)
    : options_(options.moe), hidden_size_(options.hidden_size) {
  const ParallelDims shard = parallel.shard(options_.router.num_experts);
  MOE_CHECK(shard.num_experts == options_.router.num_experts, "moe layer: the parallel dims shard ",
            shard.num_experts, " experts, the layer has ", options_.router.num_experts);
  dispatcher_ = make_token_dispatcher(shard, parallel.ep_group, options_.check_splits);
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
    eo.ffn_hidden_size = options_.ffn_hidden_size * options_.num_shared_experts;
    shared_experts = register_module("shared_experts", Experts(eo));
  }
}

MoEOutput MoELayerImpl::forward(const at::Tensor& x) {
  const int64_t D = hidden_size_;
  MOE_CHECK(x.size(-1) == D, "moe layer: input's last dimension (", x.size(-1), ") must be hidden_size (", D, ")");
  const at::Tensor x_TD = x.reshape({-1, D});
  MoEOutput out;
  {
    ScopedPhase timer(times_, &PhaseTimes::route);
    out.routing = router->forward(x_TD);
  }
  Dispatched d = dispatcher_->dispatch(x_TD, out.routing);
  at::Tensor y_ND;
  {
    ScopedPhase timer(times_, &PhaseTimes::experts);
    y_ND = run_ffn(experts, d.x_ND, d.tokens_per_local_expert);
  }
  at::Tensor y_TD = dispatcher_->combine(y_ND, d.handle);
  if (shared_experts) y_TD = y_TD + run_ffn(shared_experts, x_TD, {x_TD.size(0)});
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
