#include "train/step_stats.h"

#include <cmath>

#include "core/check.h"

namespace moe {

StepStats::StepStats(int64_t num_moe_layers, int64_t num_experts, int world_size, at::Device device)
    : routed_per_expert_LE(at::zeros({num_moe_layers, num_experts}, at::dtype(at::kDouble).device(device))),
      scalars_(at::zeros({3}, at::dtype(at::kDouble).device(device))),
      kept_LE_(at::zeros({num_moe_layers, num_experts}, at::dtype(at::kDouble).device(device))),
      layer_L3_(at::zeros({num_moe_layers, 3}, at::dtype(at::kDouble).device(device))),
      exchanges_W3_(at::zeros({world_size, 3}, at::kDouble)) {}

void StepStats::add(const at::Tensor& lm_loss, const std::vector<Routing>& routings) {
  at::NoGradGuard no_grad;
  scalars_[0].add_(lm_loss.detach().to(at::kDouble));
  const double num_moe = static_cast<double>(routings.size());
  for (size_t l = 0; l < routings.size(); ++l) {
    const Routing& r = routings[l];
    const at::Tensor losses = at::stack({r.aux_loss.detach(), r.z_loss.detach(), r.entropy}).to(at::kDouble);
    layer_L3_[l].add_(losses);
    scalars_.narrow(0, 1, 2).add_(losses.narrow(0, 0, 2) / num_moe);
    dropped += static_cast<double>(r.num_dropped);  // host counts: known without a sync
    assignments += static_cast<double>(r.expert_ids_TK.numel());
    kept_LE_[l].add_(r.tokens_per_expert_E);
    routed_per_expert_LE[l].add_(r.routed_per_expert_E);
  }
}

void StepStats::set_exchanges(int rank, double bytes_sent, double bytes_received, double ms) {
  exchanges_W3_[rank].copy_(at::tensor({bytes_sent, bytes_received, ms}, at::kDouble));
}

void StepStats::reduce(Communicator& world, const at::Tensor& grad_square_sums) {
  const int64_t counts = kept_LE_.numel();
  // Filled on the device: a copy from the host would wait for the step's queued work.
  at::Tensor host_counts = at::empty({2}, scalars_.options());
  host_counts[0].fill_(dropped);
  host_counts[1].fill_(assignments);
  at::Tensor packed = at::cat({scalars_, host_counts, kept_LE_.reshape({-1}), routed_per_expert_LE.reshape({-1}),
                               layer_L3_.reshape({-1}), exchanges_W3_.to(scalars_.device()).reshape({-1})});
  world.all_reduce(packed, ReduceOp::kSum);
  routed_per_expert_LE.copy_(packed.narrow(0, 5 + counts, counts).view(routed_per_expert_LE.sizes()));
  packed_ = at::cat({packed, grad_square_sums.to(at::kDouble).reshape({2})});
}

void StepStats::read_all(const std::vector<StepStats*>& steps) {
  if (steps.empty()) return;
  std::vector<at::Tensor> parts;
  for (const StepStats* s : steps) {
    MOE_CHECK(s->packed_.defined(), "step stats: read before reduce");
    parts.push_back(s->packed_);
  }
  const at::Tensor host = at::cat(parts).to(at::kCPU).contiguous();  // host sync: the interval's metrics
  const double* p = host.data_ptr<double>();
  for (StepStats* s : steps) {
    s->lm_loss = p[0];
    s->aux_loss = p[1];
    s->z_loss = p[2];
    s->dropped = p[3];
    s->assignments = p[4];
    p += 5;
    const auto next = [&p](const at::Tensor& like) {
      at::Tensor t = at::from_blob(const_cast<double*>(p), like.sizes(), at::kDouble).clone();
      p += like.numel();
      return t;
    };
    s->tokens_per_expert_LE = next(s->kept_LE_);
    s->routed_LE = next(s->routed_per_expert_LE);
    s->layer_losses_L3 = next(s->layer_L3_);
    s->exchanges_W3 = next(s->exchanges_W3_);
    s->grad_sq_replicated = p[0];
    s->grad_sq_expert = p[1];
    s->grad_norm = std::sqrt(s->grad_sq_replicated + s->grad_sq_expert);
    p += 2;
  }
}

}  // namespace moe
