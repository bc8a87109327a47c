#pragma once
// MoELayer: the feed-forward block of an MoE transformer. route -> dispatch -> experts -> combine, plus
// optional shared experts that every token passes through (DeepSeekMoE, Qwen-MoE). The residual
// connection belongs to the caller: a token whose assignments were all dropped gets 0 here.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "core/experts.h"
#include "core/router.h"
#include "parallel/token_dispatcher.h"

namespace moe {

struct MoELayerOptions {
  RouterOptions router;  // hidden_size, num_experts, top_k, scores, capacity, losses, bias
  int64_t ffn_hidden_size = 0;
  ExpertType expert_type = ExpertType::kSwiGLU;
  // Shared experts run as one dense MLP of width num_shared_experts * ffn_hidden_size (DeepSeekMoE).
  int64_t num_shared_experts = 0;
};

struct MoEOutput {
  at::Tensor y;  // same shape and dtype as the input
  Routing routing;  // losses (routing.loss to add to the training loss) and per-expert statistics
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(const MoELayerOptions& options);
  MoEOutput forward(const at::Tensor& x);

  const MoELayerOptions& options() const { return options_; }
  Router router{nullptr};
  Experts experts{nullptr};
  Experts shared_experts{nullptr};  // null without shared experts

 private:
  MoELayerOptions options_;
  TokenDispatcher dispatcher_;
};
TORCH_MODULE(MoELayer);

}  // namespace moe
