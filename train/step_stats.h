#pragma once
// What one training step reports: summed over this rank's micro-batches while it runs, then over every
// rank by all_reduce(), which packs the fields into one float64 buffer and unpacks the sums.
#include <ATen/ATen.h>

#include "parallel/communicator.h"

namespace moe {

struct StepStats {
  StepStats(int64_t num_moe_layers, int64_t num_experts);

  // Sums over micro-batches (and, after all_reduce, over ranks).
  double lm_loss = 0;      // of each micro-batch's mean next-token loss
  double aux_loss = 0;     // of each micro-batch's mean over MoE layers of the unscaled balance loss
  double z_loss = 0;       // likewise for the router z-loss
  double dropped = 0;      // assignments dropped by capacity
  double assignments = 0;  // assignments routed (tokens x top_k, every MoE layer)
  at::Tensor tokens_per_expert_LE;  // float64 [MoE layers, experts]: assignments kept (what experts ran)
  at::Tensor routed_per_expert_LE;  // float64 [MoE layers, experts]: before capacity (the balancing load)
  // The signal (SIGTERM, SIGINT) this rank was stopped by, 0 for none; the max over ranks after
  // all_reduce, so every rank agrees to stop.
  int stop_signal = 0;

  // Set once the gradients are synchronised; the same on every rank.
  double grad_norm = 0;
  double lr = 0;

  // Collective over `world`: every counter becomes its sum over the ranks, stop_signal its maximum.
  void all_reduce(Communicator& world);
};

}  // namespace moe
