#include "train/step_stats.h"

namespace moe {

namespace {
constexpr int64_t kScalars = 5;  // lm_loss, aux_loss, z_loss, dropped, assignments
}  // namespace

StepStats::StepStats(int64_t num_moe_layers, int64_t num_experts)
    : tokens_per_expert_LE(at::zeros({num_moe_layers, num_experts}, at::kDouble)),
      routed_per_expert_LE(at::zeros({num_moe_layers, num_experts}, at::kDouble)) {}

void StepStats::all_reduce(Communicator& world) {
  const int64_t counts = tokens_per_expert_LE.numel();
  at::Tensor packed = at::empty({kScalars + 2 * counts}, at::kDouble);
  double* p = packed.data_ptr<double>();
  p[0] = lm_loss;
  p[1] = aux_loss;
  p[2] = z_loss;
  p[3] = dropped;
  p[4] = assignments;
  packed.narrow(0, kScalars, counts).copy_(tokens_per_expert_LE.reshape({-1}));
  packed.narrow(0, kScalars + counts, counts).copy_(routed_per_expert_LE.reshape({-1}));
  at::Tensor stop = at::full({1}, static_cast<double>(stop_signal), at::kDouble);
  world.all_reduce(packed, ReduceOp::kSum);
  world.all_reduce(stop, ReduceOp::kMax);
  lm_loss = p[0];
  aux_loss = p[1];
  z_loss = p[2];
  dropped = p[3];
  assignments = p[4];
  tokens_per_expert_LE.copy_(packed.narrow(0, kScalars, counts).view(tokens_per_expert_LE.sizes()));
  routed_per_expert_LE.copy_(packed.narrow(0, kScalars + counts, counts).view(routed_per_expert_LE.sizes()));
  stop_signal = static_cast<int>(stop.item<double>());
}

}  // namespace moe
