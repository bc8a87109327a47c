#pragma once
// MoELayer: the feed-forward block of an MoE transformer. route -> dispatch -> experts -> combine, plus
// optional shared experts that every token passes through (DeepSeekMoE, Qwen-MoE). The residual
// connection belongs to the caller: a token whose assignments were all dropped gets 0 here.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <memory>

#include "core/experts.h"
#include "core/model_options.h"
#include "core/phase_times.h"
#include "core/router.h"
#include "core/token_dispatcher.h"
#include "parallel/parallel_dims.h"

namespace moe {

struct MoEOutput {
  at::Tensor y;  // same shape and dtype as the input
  Routing routing;  // losses (routing.loss to add to the training loss) and per-expert statistics
};

class MoELayerImpl : public torch::nn::Module {
 public:
  // Reads hidden_size, init_std and moe of the model's options. This rank holds the experts of
  // parallel.shard(): [ep_rank * E/EP, (ep_rank + 1) * E/EP), exchanging tokens over parallel.ep_group.
  explicit MoELayerImpl(const TransformerOptions& options, const ExpertParallel& parallel = {});
  MoEOutput forward(const at::Tensor& x);

  const MoEOptions& options() const { return options_; }
  // The global id of this rank's first expert; experts->w1[i] is global expert first_local_expert() + i.
  int64_t first_local_expert() const { return first_local_expert_; }
  void set_phase_times(PhaseTimes* times);
  // What this layer's exchanges moved since the last call (telemetry), which zeroes it.
  ExchangeStats take_exchange_stats();
  // train.recompute moe: the expert FFNs (routed and shared) keep only their input for backward.
  void set_recompute_experts(bool on) { recompute_experts_ = on; }
  Router router{nullptr};
  Experts experts{nullptr};
  Experts shared_experts{nullptr};  // null without shared experts

 private:
  MoEOptions options_;
  int64_t hidden_size_;
  std::unique_ptr<TokenDispatcher> dispatcher_;
  int64_t first_local_expert_ = 0;
  // moe.shadow_experts: the EP group (null on one rank), and the local steps of the shadowed tokens.
  Communicator* ep_group_ = nullptr;
  int64_t num_local_experts_ = 0;
  LocalTokenDispatcher shadow_dispatcher_;
  int64_t shadowed_ = 0;  // experts shadowed since take_exchange_stats
  PhaseTimes* times_ = nullptr;
  bool recompute_experts_ = false;

  // An FFN of experts (weights w1, w3, w2 as run_experts takes them) on x, rows per expert, under the
  // recompute setting.
  at::Tensor run_ffn(const at::Tensor& x, const std::vector<int64_t>& rows, const std::vector<at::Tensor>& w);
  // moe.shadow_experts: the experts this step's counts make worth copying (collective over the EP group),
  // and the layer's output for this rank's assignments to them, computed here on the copies.
  std::vector<int64_t> choose_shadows(const Routing& routing);
  at::Tensor run_shadowed(const at::Tensor& x_TD, const Routing& shadowed, const std::vector<int64_t>& shadows,
                          const std::vector<at::Tensor>& copies);
};
TORCH_MODULE(MoELayer);

}  // namespace moe
