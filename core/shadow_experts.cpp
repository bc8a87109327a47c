#include "core/shadow_experts.h"

#include <torch/autograd.h>

#include <algorithm>

#include "core/check.h"

namespace moe {

std::vector<int64_t> choose_shadow_experts(const std::vector<int64_t>& counts_RE, int64_t num_ranks,
                                           int64_t experts_per_rank, int64_t max_shadows, int64_t min_rows) {
  const int64_t R = num_ranks, El = experts_per_rank, E = R * El;
  MOE_CHECK(static_cast<int64_t>(counts_RE.size()) == R * E, "shadow experts: ", counts_RE.size(),
            " counts for ", R, " ranks of ", El, " experts");
  const auto count = [&](int64_t r, int64_t e) { return counts_RE[r * E + e]; };
  std::vector<int64_t> load(R, 0);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t e = 0; e < E; ++e) load[e / El] += count(r, e);
  }
  // Shadowing expert e of owner o moves every other rank's rows for e from o to that rank.
  const auto shadowed = [&](const std::vector<int64_t>& before, int64_t e) {
    std::vector<int64_t> after = before;
    const int64_t o = e / El;
    for (int64_t r = 0; r < R; ++r) {
      if (r == o) continue;
      after[o] -= count(r, e);
      after[r] += count(r, e);
    }
    return after;
  };
  std::vector<int64_t> chosen;
  while (static_cast<int64_t>(chosen.size()) < max_shadows) {
    const int64_t busiest = std::max_element(load.begin(), load.end()) - load.begin();
    const int64_t peak = load[busiest];
    int64_t best = -1, best_peak = peak;
    std::vector<int64_t> best_load;
    for (int64_t e = busiest * El; e < (busiest + 1) * El; ++e) {
      if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
      std::vector<int64_t> after = shadowed(load, e);
      const int64_t p = *std::max_element(after.begin(), after.end());
      if (p < best_peak) {
        best = e;
        best_peak = p;
        best_load = std::move(after);
      }
    }
    if (best < 0 || peak - best_peak < std::max<int64_t>(min_rows, 1)) break;
    chosen.push_back(best);
    load = std::move(best_load);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

namespace {

struct ShadowPlan : torch::CustomClassHolder {
  std::vector<int64_t> shadows;
  int64_t experts_per_rank = 0;
  Communicator* ep_group = nullptr;
  int64_t owner(size_t i) const { return shadows[i] / experts_per_rank; }
  int64_t local(size_t i) const { return shadows[i] % experts_per_rank; }
};
using Holder = c10::intrusive_ptr<torch::CustomClassHolder>;

class ReplicateExperts : public torch::autograd::Function<ReplicateExperts> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList weights,
                                                Holder holder) {
    const ShadowPlan& plan = *static_cast<ShadowPlan*>(holder.get());
    const int me = plan.ep_group->rank();
    const int64_t S = static_cast<int64_t>(plan.shadows.size());
    torch::autograd::variable_list copies;
    for (const at::Tensor& w : weights) {
      std::vector<int64_t> shape = w.sizes().vec();
      shape[0] = S;
      copies.push_back(at::empty(shape, w.options()));
    }
    for (int64_t i = 0; i < S; ++i) {
      for (size_t j = 0; j < copies.size(); ++j) {
        at::Tensor row = copies[j][i];
        if (plan.owner(i) == me) row.copy_(weights[j][plan.local(i)]);
        plan.ep_group->broadcast(row, static_cast<int>(plan.owner(i)));
      }
    }
    ctx->saved_data["plan"] = c10::IValue::make_capsule(holder);
    ctx->saved_data["num_local"] = weights[0].size(0);
    return copies;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const Holder holder = ctx->saved_data["plan"].toCapsule();
    const ShadowPlan& plan = *static_cast<ShadowPlan*>(holder.get());
    const int64_t num_local = ctx->saved_data["num_local"].toInt();
    const int me = plan.ep_group->rank();
    // One all-reduce of every copy's gradient, flat.
    std::vector<at::Tensor> flat;
    for (const at::Tensor& g : grads) flat.push_back(g.reshape({-1}));
    at::Tensor sum = at::cat(flat);
    plan.ep_group->all_reduce(sum, ReduceOp::kSum);
    bool owns = false;
    for (size_t i = 0; i < plan.shadows.size(); ++i) owns = owns || plan.owner(i) == me;
    torch::autograd::variable_list out;
    int64_t offset = 0;
    for (const at::Tensor& g : grads) {
      const at::Tensor summed = sum.narrow(0, offset, g.numel()).view(g.sizes());
      offset += g.numel();
      if (!owns) {
        out.emplace_back();
        continue;
      }
      std::vector<int64_t> shape = g.sizes().vec();
      shape[0] = num_local;
      at::Tensor shard = at::zeros(shape, g.options());
      for (size_t i = 0; i < plan.shadows.size(); ++i) {
        if (plan.owner(i) == me) shard[plan.local(i)].copy_(summed[static_cast<int64_t>(i)]);
      }
      out.push_back(shard);
    }
    out.emplace_back();  // the plan
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> replicate_experts(const std::vector<at::Tensor>& weights, const std::vector<int64_t>& shadows,
                                          int64_t experts_per_rank, Communicator& ep_group) {
  auto plan = c10::make_intrusive<ShadowPlan>();
  plan->shadows = shadows;
  plan->experts_per_rank = experts_per_rank;
  plan->ep_group = &ep_group;
  return ReplicateExperts::apply(at::TensorList(weights), Holder(plan));  // a TensorList, or autograd misses them
}

}  // namespace moe
