#pragma once
// AdamW (decoupled weight decay, as torch.optim.AdamW), the learning-rate schedule and clipping by the
// global gradient norm.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/parameter.h"
#include "train/checkpoint/checkpoint_state.h"

namespace moe {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  // Parameters of fewer than 2 dimensions (norm weights) get no weight decay, as in Megatron and
  // nanoGPT. Buffers (the routers' expert bias) are not parameters and never reach here.
  AdamW(const ParameterList& params, const AdamWOptions& options);
  void step(double lr);
  int64_t steps() const { return step_; }
  void set_steps(int64_t steps) { step_ = steps; }  // when resuming
  // The moments for checkpoints, "exp_avg" and "exp_avg_sq", one tensor per parameter record (live).
  OptimizerState state() const { return {{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}}; }

 private:
  std::vector<at::Tensor> params_, exp_avg_, exp_avg_sq_;
  std::vector<bool> decay_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

// One AdamW update of `param` in place from its gradient and moments (all float32, same shape): the
// arithmetic AdamW::step and the sharded optimizer share, so both give the same bits. `step` counts from 1.
void adamw_update(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg, at::Tensor exp_avg_sq, bool decay,
                  double lr, int64_t step, const AdamWOptions& options);

// What the trainer's step asks of its optimizer after backward, whether the state is whole on every rank
// (make_optimizer with shard false: GradSync, then AdamW) or split over the data-parallel ranks
// (DistributedOptimizer, ZeRO-1). Every call but steps() and set_steps() is collective.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Reduces the gradients of the global batch over the data-parallel ranks and returns their squared
  // norms, float64 [replicated, expert], the same on every rank, on the parameters' device (no host sync).
  virtual at::Tensor reduce_gradients() = 0;
  // Scales the reduced gradients by max_norm / norm when norm exceeds max_norm (0: never), as clip_grads.
  virtual void clip(const at::Tensor& norm, double max_norm) = 0;
  // Before the last micro-batch's backward: let that backward start reducing gradient buckets as they
  // complete (train.overlap_grad_reduce). Local; does nothing where reduction waits for reduce_gradients.
  virtual void reduce_in_next_backward() {}
  // Applies the update with learning rate `lr` to every rank's parameters.
  virtual void step(double lr) = 0;
  virtual int64_t steps() const = 0;
  virtual void set_steps(int64_t steps) = 0;  // when resuming
  // The moments, "exp_avg" and "exp_avg_sq", whole: one tensor per parameter record, as a checkpoint
  // holds them whatever the sharding. Unsharded, the live tensors; sharded, copies (on the CPU).
  virtual OptimizerState gather_state() = 0;
  // After a checkpoint was loaded into gather_state()'s tensors: takes them in (local).
  virtual void scatter_state(const OptimizerState& state) = 0;
};

// How gradients are reduced over the data-parallel ranks.
struct GradReduceOptions {
  bool shard = false;                // ZeRO-1: the DistributedOptimizer
  bool overlap = false;              // unsharded: buckets reduced during backward (GradSync)
  int64_t bucket_bytes = 32 << 20;  // unsharded: GradSync's bucket size
};

// Unsharded: GradSync over `world` and `edp_group` and AdamW on every rank's whole state; sharded: the
// DistributedOptimizer. `ep_group` (null: EP 1) sums the expert part of the norm. Collective.
std::unique_ptr<Optimizer> make_optimizer(const ParameterList& params, Communicator& world, Communicator* ep_group,
                                          Communicator* edp_group, const AdamWOptions& options,
                                          const GradReduceOptions& reduce = {});

// Linear warm-up from lr / warmup to lr over steps 1..warmup, then cosine decay to min_lr at the last
// step. `step` counts from 1.
double learning_rate(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr);

// The L2 norm of the gradient of the whole model, every parameter counted once: replicated gradients
// are identical on every rank after synchronisation, so they are counted locally; each expert shard is
// summed over the EP group (null: every expert is local). Collective over the EP group. A float64 scalar
// on the parameters' device: no host sync.
at::Tensor global_grad_norm(const ParameterList& params, Communicator* ep_group);
// Its two parts, float64 [replicated, expert]: the squared norms of the replicated parameters' and of
// the experts' gradients (the norm is the square root of their sum). Collective over the EP group.
at::Tensor grad_square_sums(const ParameterList& params, Communicator* ep_group);

// Scales every gradient by max_norm / norm when norm exceeds max_norm (max_norm 0: never). `norm` is
// global_grad_norm's scalar; the decision is taken on the device, so it costs no host sync.
void clip_grads(const ParameterList& params, const at::Tensor& norm, double max_norm);
// The same for any set of gradient tensors (the sharded optimizer's shards).
void clip_tensors(const std::vector<at::Tensor>& grads, const at::Tensor& norm, double max_norm);

}  // namespace moe
