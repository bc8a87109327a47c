#include "core/moe_layer.h"

#include "core/check.h"

namespace moe {

MoELayerImpl::MoELayerImpl(const MoELayerOptions& options, Communicator* ep_group, Communicator* aux_group)
    : options_(options), dispatcher_(options.router.num_experts, ep_group, options.check_splits) {
  const auto& o = options_;
  MOE_CHECK(o.num_shared_experts >= 0, "moe layer: num_shared_experts (", o.num_shared_experts,
            ") must be >= 0");
  router = register_module("router", Router(o.router, aux_group));
  ExpertsOptions eo;
  eo.num_experts = dispatcher_.num_local_experts();
  if (ep_group) first_local_expert_ = ep_group->rank() * eo.num_experts;
  eo.hidden_size = o.router.hidden_size;
  eo.ffn_hidden_size = o.ffn_hidden_size;
  eo.type = o.expert_type;
  eo.init_std = o.router.init_std;
  experts = register_module("experts", Experts(eo));
  if (o.num_shared_experts > 0) {
    eo.num_experts = 1;
    eo.ffn_hidden_size = o.ffn_hidden_size * o.num_shared_experts;
    shared_experts = register_module("shared_experts", Experts(eo));
  }
}

MoEOutput MoELayerImpl::forward(const at::Tensor& x) {
  const int64_t D = options_.router.hidden_size;
  MOE_CHECK(x.size(-1) == D, "moe layer: input's last dimension (", x.size(-1), ") must be hidden_size (",
            D, ")");
  const at::Tensor x_TD = x.reshape({-1, D});
  MoEOutput out;
  {
    ScopedPhase timer(times_, &PhaseTimes::route);
    out.routing = router->forward(x_TD);
  }
  Dispatched d = dispatcher_.dispatch(x_TD, out.routing);
  at::Tensor y_ND;
  {
    ScopedPhase timer(times_, &PhaseTimes::experts);
    y_ND = experts->forward(d.x_ND, d.tokens_per_local_expert);
  }
  at::Tensor y_TD = dispatcher_.combine(y_ND, d.handle);
  if (shared_experts) y_TD = y_TD + shared_experts->forward(x_TD, {x_TD.size(0)});
  out.y = y_TD.view(x.sizes());
  return out;
}

void MoELayerImpl::set_phase_times(PhaseTimes* times) {
  times_ = times;
  dispatcher_.set_phase_times(times);
}

}  // namespace moe
