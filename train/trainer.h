#pragma once
// Trainer: the step loop, read top-down. One instance per rank; every public call is collective.
//
// A step: for each of the accumulation micro-batches, forward, loss = (LM loss + router losses) /
// accumulation, backward; then synchronise gradients (GradSync), clip by the global norm, AdamW with
// the scheduled learning rate, move the routers' expert bias (aux-loss-free balancing) by the loads of
// the whole global batch, and report.
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/parallel_dims.h"
#include "train/config.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace moe {

class Trainer {
 public:
  // Builds the model (its experts sharded over the EP groups), opens the data and the run directory
  // (rank 0 writes config.yaml and metrics.jsonl there).
  Trainer(const Config& config, Communicator& world);

  // Runs train.steps steps with evaluations every train.eval_every steps and at the end; returns the
  // final validation loss (nats per token).
  double train();
  // Mean loss per token over the validation windows, with the evaluation capacity factor.
  double evaluate();

  Transformer& model() { return model_; }

 private:
  struct StepStats;
  StepStats train_step(int64_t step);
  void report(int64_t step, const StepStats& stats, double seconds);

  Config config_;
  Communicator& world_;
  ParallelDims dims_;
  ProcessGroups groups_;
  Transformer model_{nullptr};
  std::vector<MoELayer> moe_layers_;
  std::vector<at::Tensor> dense_params_, expert_params_, all_params_;
  std::unique_ptr<GradSync> grad_sync_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<TokenFile> train_data_, val_data_;
  std::unique_ptr<MetricsLog> metrics_;  // rank 0 only
  int64_t accumulation_ = 1;
  double elapsed_ = 0;  // seconds spent in training steps
};

}  // namespace moe
