#include "train/step_stats.h"

namespace moe {

StepStats::StepStats(int64_t num_moe_layers, int64_t num_experts, at::Device device)
    : routed_per_expert_LE(at::zeros({num_moe_layers, num_experts}, at::dtype(at::kDouble).device(device))),
      scalars_(at::zeros({3}, at::dtype(at::kDouble).device(device))),
      kept_LE_(at::zeros({num_moe_layers, num_experts}, at::dtype(at::kDouble).device(device))) {}

void StepStats::add(const at::Tensor& lm_loss, const std::vector<Routing>& routings) {
  at::NoGradGuard no_grad;
  scalars_[0].add_(lm_loss.detach().to(at::kDouble));
  const double num_moe = static_cast<double>(routings.size());
  for (size_t l = 0; l < routings.size(); ++l) {
    const Routing& r = routings[l];
    scalars_[1].add_(r.aux_loss.detach().to(at::kDouble) / num_moe);
    scalars_[2].add_(r.z_loss.detach().to(at::kDouble) / num_moe);
    dropped += static_cast<double>(r.num_dropped);  // host counts: known without a sync
    assignments += static_cast<double>(r.expert_ids_TK.numel());
    kept_LE_[l].add_(r.tokens_per_expert_E);
    routed_per_expert_LE[l].add_(r.routed_per_expert_E);
  }
}

void StepStats::finish(Communicator& world, const at::Tensor& norm) {
  const int64_t counts = kept_LE_.numel();
  // Filled on the device: a copy from the host would wait for the step's queued work.
  at::Tensor host_counts = at::empty({2}, scalars_.options());
  host_counts[0].fill_(dropped);
  host_counts[1].fill_(assignments);
  at::Tensor packed = at::cat({scalars_, host_counts, kept_LE_.reshape({-1}), routed_per_expert_LE.reshape({-1})});
  world.all_reduce(packed, ReduceOp::kSum);
  at::Tensor stop = at::full({1}, static_cast<double>(stop_signal), at::kDouble);
  world.all_reduce(stop, ReduceOp::kMax);
  routed_per_expert_LE.copy_(packed.narrow(0, 5 + counts, counts).view(routed_per_expert_LE.sizes()));
  // Host sync: the step's metrics, once.
  const at::Tensor host = at::cat({packed.narrow(0, 0, 5 + counts), norm.to(at::kDouble).reshape({1})})
                              .to(at::kCPU)
                              .contiguous();
  const double* p = host.data_ptr<double>();
  lm_loss = p[0];
  aux_loss = p[1];
  z_loss = p[2];
  dropped = p[3];
  assignments = p[4];
  tokens_per_expert_LE = host.narrow(0, 5, counts).view(kept_LE_.sizes()).clone();
  grad_norm = p[5 + counts];
  stop_signal = static_cast<int>(stop.item<double>());
}

}  // namespace moe
