#pragma once
// Trainer: the step loop, read top-down. One instance per rank; every public call is collective.
//
// A step: for each of the accumulation micro-batches, forward, loss = (LM loss + router losses) /
// accumulation, backward; then reduce the gradients over the data-parallel ranks, clip by the global
// norm, AdamW with the scheduled learning rate (Optimizer: whole on every rank, or sharded), move the routers' expert bias (aux-loss-free balancing) by the loads of
// the whole global batch. The step's statistics stay on the device; they are read and reported once per
// log interval (flush), the run's one metrics sync with the host.
#include <memory>
#include <string>
#include <vector>

#include "core/transformer.h"
#include "parallel/communicator.h"
#include "parallel/parallel_dims.h"
#include "train/checkpoint/checkpoint.h"
#include "train/cli/config.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/step_stats.h"

namespace moe {

class Trainer {
 public:
  // Builds the model (its experts sharded over the EP groups), opens the data and the run directory
  // (rank 0 writes config.yaml and metrics.jsonl there). `world`: the communicator of the config's
  // backend (make_communicator), for the model's tensors; `control`: MPI's world, for what the host
  // agrees on (inputs, errors, stop signals, checkpoint bookkeeping) without touching the device; the two
  // may be one. `device`: where this rank's model, optimizer state and batches live (select_device).
  // `resume`: "" for a new run, "latest" or a checkpoint directory to continue from (metrics.jsonl then
  // keeps the records up to that step).
  Trainer(const Config& config, Communicator& world, Communicator& control, at::Device device = at::kCPU,
          const std::string& resume = "");

  // Runs the steps up to train.steps with evaluations every train.eval_every steps and at the end, and
  // checkpoints every checkpoint.every steps, at the end, and on SIGTERM or SIGINT (then stops).
  // Returns the final validation loss (nats per token), or NaN when stopped by a signal.
  double train();
  // Mean loss per token over the validation windows, with the evaluation capacity factor.
  double evaluate();

  // One optimizer step (1-based) over the global batch of `step`: forward and backward over this
  // rank's micro-batches, gradient sync, clipping, AdamW, the expert-bias update; the statistics summed
  // over the ranks, on the device until StepStats::read_all. Unsharded, the synchronised gradients
  // stay on the parameters until the next step (sharded, the parameters keep their local ones).
  StepStats train_step(int64_t step);

  Transformer& model() { return model_; }
  // The signal that stopped train() (0: none).
  int stopped_by() const { return stopped_by_; }

 private:
  struct Pending {
    int64_t step;
    StepStats stats;
    double seconds;
    double elapsed;     // seconds in training steps up to the end of this one
    PhaseTimes phases;  // train.profile
  };
  // Reads the steps run since the last flush in one host copy, stops on a non-finite loss, and reports
  // them (log line, metrics.jsonl). At every log interval, evaluation, checkpoint and stop.
  void flush();
  void check_and_report();
  void report(const Pending& pending);
  // One "moe" record for the steps of pending_: per MoE layer and per rank, summed over the interval.
  void report_interval();
  // The largest stop signal (SIGTERM, SIGINT) any rank received, 0 for none; over `control`.
  int agreed_stop_signal();
  // The checkpoint's view of the model, the optimizer's `moments` (Optimizer::gather_state) and the counters.
  CheckpointState checkpoint_state(const OptimizerState& moments);
  void save(int64_t step);

  Config config_;
  Communicator& world_;
  Communicator& control_;
  at::Device device_;
  ParallelDims dims_;
  ProcessGroups groups_;
  Transformer model_{nullptr};
  std::vector<MoELayer> moe_layers_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<TokenFile> train_data_, val_data_;
  std::unique_ptr<MetricsLog> metrics_;  // rank 0 only
  std::vector<Pending> pending_;
  std::vector<int64_t> shadowed_;  // per MoE layer: experts shadowed over pending_'s steps (moe.shadow_experts)
  int64_t accumulation_ = 1;
  int64_t start_step_ = 0;  // the step a resumed run continues after
  int64_t last_saved_ = -1;
  int stopped_by_ = 0;
  int64_t skipped_ = 0;  // updates skipped for a non-finite gradient (train.on_nonfinite skip)
  // Fault injection for the tests: MOE_FAULT_NONFINITE_STEP=S makes the last rank's loss NaN at step S.
  int64_t fault_nonfinite_step_ = -1;
  double elapsed_ = 0;  // seconds spent in training steps
  double elapsed_at_start_ = 0;  // of them, before this process's first step (a resume's)
  double flops_per_token_ = 0;  // model FLOPs, forward and backward (moe plan's count)
  double gemm_peak_ = 0;        // FLOP/s of this rank's device, measured at start: MFU's denominator
  PhaseTimes phases_;           // this step's, with train.profile
};

}  // namespace moe
