#pragma once
// How a model's and an optimizer's tensors are named in a checkpoint, read from the parameter records:
//   replicated parameter          NAME                       ("layers.0.self_attn.q_proj")
//   expert shard, global expert G its name with G before the last part ("layers.3.moe.experts.5.w1")
//   optimizer state of either     KIND/that name             ("exp_avg/layers.3.moe.experts.5.w1")
//   buffer                        NAME                       ("layers.3.moe.router.expert_bias")
// Expert tensors are named by global expert, so a checkpoint loads on any expert-parallel layout.
// Used by training (save, resume), `moe eval`, `moe export` and the checkpoint benchmark.
#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/transformer.h"
#include "parallel/parameter.h"
#include "train/checkpoint/checkpoint.h"

namespace moe {

// An optimizer's per-parameter state: for each kind ("exp_avg", "exp_avg_sq"), one tensor per parameter
// record, in record order.
using OptimizerState = std::vector<std::pair<std::string, std::vector<at::Tensor>>>;

// "layers.3.moe.experts.w1" holding global expert 5 -> "layers.3.moe.experts.5.w1".
std::string expert_tensor_name(const std::string& parameter_name, int64_t global_expert);

// The live tensors of the model's parameter records and buffers (views, so a load writes straight into
// the model) and of `optimizer` when given (null: the model only; a load then skips the optimizer's
// tensors in the files).
CheckpointState make_checkpoint_state(const Transformer& model, const OptimizerState* optimizer);

// A checkpoint of a new model with a fresh optimizer, as `moe import` and `moe upcycle` write it: the
// whole model (EP 1) built from `options` (its own initialisation), zero AdamW moments and optimizer
// steps, and `live`, every tensor the checkpoint will hold by its checkpoint name, for the caller to
// overwrite (and state.step to set) before write().
struct FreshCheckpoint {
  explicit FreshCheckpoint(const TransformerOptions& options);
  // Into `dir` (which must not exist) with the experts in `ep` files, as EP rank j's of a run of `ep`
  // ranks, each rank's generator seeded as the trainer seeds a fresh run of `seed`.
  void write(const std::string& dir, const std::string& config_yaml, int64_t ep, uint64_t seed) const;
  int64_t num_parameters() const;

  Transformer model;
  OptimizerState moments;
  CheckpointState state;
  std::map<std::string, at::Tensor> live;
};

}  // namespace moe
