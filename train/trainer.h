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

#include "core/transformer.h"
#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/parallel_dims.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/optimizer.h"

namespace moe {

class Trainer {
 public:
  // Builds the model (its experts sharded over the EP groups), opens the data and the run directory
  // (rank 0 writes config.yaml and metrics.jsonl there). `resume`: "" for a new run, "latest" or a
  // checkpoint directory to continue from (metrics.jsonl then keeps the records up to that step).
  Trainer(const Config& config, Communicator& world, const std::string& resume = "");

  // Runs the steps up to train.steps with evaluations every train.eval_every steps and at the end, and
  // checkpoints every checkpoint.every steps, at the end, and on SIGTERM or SIGINT (then stops).
  // Returns the final validation loss (nats per token), or NaN when stopped by a signal.
  double train();
  // Mean loss per token over the validation windows, with the evaluation capacity factor.
  double evaluate();

  Transformer& model() { return model_; }
  // The signal that stopped train() (0: none).
  int stopped_by() const { return stopped_by_; }

 private:
  struct StepStats;
  StepStats train_step(int64_t step);
  void report(int64_t step, const StepStats& stats, double seconds);
  CheckpointState checkpoint_state();
  void save(int64_t step);

  Config config_;
  Communicator& world_;
  ParallelDims dims_;
  ProcessGroups groups_;
  Transformer model_{nullptr};
  std::vector<MoELayer> moe_layers_;
  std::vector<at::Tensor> dense_params_, expert_params_, all_params_;
  std::vector<std::string> all_names_;  // parameter names, in all_params_ order
  std::unique_ptr<GradSync> grad_sync_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<TokenFile> train_data_, val_data_;
  std::unique_ptr<MetricsLog> metrics_;  // rank 0 only
  int64_t accumulation_ = 1;
  int64_t start_step_ = 0;  // the step a resumed run continues after
  int64_t last_saved_ = -1;
  int stopped_by_ = 0;
  double elapsed_ = 0;  // seconds spent in training steps
};

// What a checkpoint holds of a model (and, given an optimizer over `params` named `names`, of its
// AdamW moments): replicated tensors by name, and this rank's experts by global expert id.
CheckpointState model_checkpoint_state(Transformer& model, const std::vector<std::string>& names,
                                       const std::vector<at::Tensor>& params, AdamW* optimizer);

// Mean next-token loss over windows of seq_len + 1 tokens at `offsets`, spread over the ranks in
// micro-batches (every rank runs the same number of forwards, as EP needs), in eval mode. Collective.
double evaluate_windows(Transformer& model, const TokenFile& file, const std::vector<int64_t>& offsets,
                        int64_t seq_len, int64_t micro_batch_size, Communicator& world);

struct EvalResult {
  double loss = 0;     // mean next-token cross-entropy, nats
  int64_t tokens = 0;  // predictions counted: windows x seq_len
};

// `moe eval`: the model of checkpoint `dir` (any saved layout; experts sharded over this world, which
// must divide the number of experts), dropless, on windows i = 0 .. windows-1 of `data`, window i being
// tokens [i * seq_len, i * seq_len + seq_len] (seq_len + 1 tokens). Collective.
EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data, int64_t seq_len, int64_t windows,
                               Communicator& world);

}  // namespace moe
