#pragma once
// Activation recomputation (Chen et al. 2016; Megatron's activation checkpointing): a piece of the
// forward runs without keeping its activations, and its backward runs it again, from the inputs it
// kept, with the same random draws, then back-propagates through the re-run. Gradients come out bit
// for bit as without it: the same operations on the same values, in the same order.
#include <ATen/ATen.h>

#include <functional>
#include <vector>

namespace moe {

// The piece: `inputs` -> outputs. `replay` is false on the first run and true on the re-run in
// backward, where side effects (statistics, timings) must not happen twice.
using Recomputable = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs, bool replay)>;

// Runs `fn` on `inputs` keeping only `inputs` (and the generators' states) for backward. Outputs that
// are floating point carry gradients to the inputs and, through the re-run, to every parameter `fn`
// uses (accumulated into their .grad, as a reentrant checkpoint does). Outside grad mode it is `fn`.
std::vector<at::Tensor> recompute(const Recomputable& fn, const std::vector<at::Tensor>& inputs);

}  // namespace moe
