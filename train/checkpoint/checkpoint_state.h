#pragma once
// How a model's and an optimizer's tensors are named in a checkpoint, read from the parameter records:
//   replicated parameter          NAME                       ("layers.0.self_attn.q_proj")
//   expert shard, global expert G its name with G before the last part ("layers.3.moe.experts.5.w1")
//   optimizer state of either     KIND/that name             ("exp_avg/layers.3.moe.experts.5.w1")
//   buffer                        NAME                       ("layers.3.moe.router.expert_bias")
// Expert tensors are named by global expert, so a checkpoint loads on any expert-parallel layout.
// Used by training (save, resume), `moe eval`, `moe export` and the checkpoint benchmark.
#include <ATen/ATen.h>

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

}  // namespace moe
