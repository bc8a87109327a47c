#pragma once
// What one training step reports. While the step runs, the sums stay on the run's device (add() queues
// small tensor ops, no host sync); reduce() sums them over the ranks in one packed float64 all-reduce,
// still on the device. read_all() brings the steps of a whole log interval to the host in one copy:
// the run's one metrics sync.
#include <ATen/ATen.h>

#include <vector>

#include "core/router.h"
#include "parallel/communicator.h"

namespace moe {

struct StepStats {
  StepStats(int64_t num_moe_layers, int64_t num_experts, int world_size, at::Device device);

  // Adds one micro-batch: its mean next-token loss and the routings of its MoE layers, in order.
  void add(const at::Tensor& lm_loss, const std::vector<Routing>& routings);
  // This rank's all-to-all traffic in the step (host counts): bytes to and from other ranks, milliseconds
  // inside the exchanges.
  void set_exchanges(int rank, double bytes_sent, double bytes_received, double ms);
  // Collective over `world`: every sum becomes its sum over the ranks; `grad_square_sums` (float64
  // [replicated, expert] on the device, already global) is kept with them. No host sync.
  void reduce(Communicator& world, const at::Tensor& grad_square_sums);
  // Host sync, one for all of `steps` (each reduced): fills their host fields.
  static void read_all(const std::vector<StepStats*>& steps);

  // On the host after read_all(): sums over micro-batches and ranks.
  double lm_loss = 0;      // of each micro-batch's mean next-token loss
  double aux_loss = 0;     // of each micro-batch's mean over MoE layers of the unscaled balance loss
  double z_loss = 0;       // likewise for the router z-loss
  double dropped = 0;      // assignments dropped by capacity
  double assignments = 0;  // assignments routed (tokens x top_k, every MoE layer)
  at::Tensor tokens_per_expert_LE;  // float64 [MoE layers, experts] on the host: assignments kept
  at::Tensor routed_LE;             // float64 [MoE layers, experts] on the host: assignments before capacity
  at::Tensor layer_losses_L3;       // float64 [MoE layers, 3] on the host: each micro-batch's aux, z, entropy
  at::Tensor exchanges_W3;          // float64 [world, 3] on the host: each rank's bytes sent, received, ms
  double grad_norm = 0;
  double grad_sq_replicated = 0, grad_sq_expert = 0;  // its two parts, squared
  double lr = 0;           // set by the trainer
  bool skipped = false;    // set by the trainer: the update was not applied (train.on_nonfinite skip)

  // On the device: assignments per expert before capacity (the balancing load), summed over ranks by
  // reduce() so that every rank moves its expert bias alike.
  at::Tensor routed_per_expert_LE;

 private:
  at::Tensor scalars_;      // float64 [lm_loss, aux_loss, z_loss] on the device
  at::Tensor kept_LE_;      // float64 [MoE layers, experts] on the device
  at::Tensor layer_L3_;     // float64 [MoE layers, aux, z, entropy] on the device
  at::Tensor exchanges_W3_; // float64 [world, 3]: this rank's row filled, the others 0 until reduce()
  at::Tensor packed_;       // after reduce(): [scalars, dropped, assignments, kept, routed, layers, ranks,
                            // grad squares]
};

}  // namespace moe
