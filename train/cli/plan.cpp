#include "train/cli/plan.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "core/check.h"

namespace moe {

namespace {

template <typename N>
PlanOf<N> plan_of(const Config& c, int world_size) {
  const TransformerOptions& o = c.model;
  const N D = o.hidden_size, V = o.vocab_size, H = o.num_attention_heads, KV = o.kv_heads(), hd = o.head_dim();
  const N E = o.moe.router.num_experts, K = o.moe.router.top_k, F = o.moe.ffn_hidden_size;
  const N EP = c.parallel.expert_parallel_size;
  const N expert_matrices = o.moe.expert_type == ExpertType::kGELU ? 2 : 3;
  const N attention = 2 * D * H * hd + 2 * D * KV * hd + 2 * D;  // projections and the two norms
  const N dense_ffn = 3 * D * static_cast<N>(o.ffn_hidden_size);
  const N expert = expert_matrices * D * F;
  const N shared = static_cast<N>(o.moe.num_shared_experts) * expert;
  const N outside = 2 * V * D + D;  // embedding, untied head, final norm
  const N experts_per_rank = static_cast<N>(o.moe.router.num_experts / c.parallel.expert_parallel_size);

  PlanOf<N> p;
  p.total_params = p.active_params = p.params_per_rank = outside;
  const N S = c.data.seq_len, T = static_cast<N>(c.train.micro_batch_size) * S;
  // Floats a block keeps for backward per token: attention (norm in/out, q/k/v before and after
  // rotation, the output and its projection, 3 x H x S for scores, mask and probabilities), the FFN (norm,
  // routed copies sent and received, SwiGLU's three F-wide buffers per copy, the shared experts'). Of
  // those, the expert FFNs' hidden buffers are what train.recompute moe gives back; full keeps the
  // block's input (D) alone. Either way, backward rebuilds one layer's worth at a time: the largest.
  N kept = 0, largest = 0;
  for (int64_t l = 0; l < o.num_layers; ++l) {
    p.total_params += attention;
    p.active_params += attention;
    p.params_per_rank += attention;
    N block = 5 * D + 4 * KV * hd + 2 * H * hd + 3 * H * S, recomputed = 0;
    if (o.is_moe_layer(l)) {
      ++p.num_moe_layers;
      p.total_params += E * D + E * expert + shared;
      p.active_params += E * D + K * expert + shared;
      p.params_per_rank += E * D + experts_per_rank * expert + shared;
      recomputed = K * expert_matrices * F + static_cast<N>(o.moe.num_shared_experts) * 3 * F;
      block += 2 * D + E + K * 3 * D + recomputed;
    } else {
      p.total_params += dense_ffn;
      p.active_params += dense_ffn;
      p.params_per_rank += dense_ffn;
      block += 2 * D + 3 * static_cast<N>(o.ffn_hidden_size);
    }
    switch (c.train.recompute) {
      case Recompute::kNone:
        kept += block;
        break;
      case Recompute::kMoE:
        kept += block - recomputed;
        largest = std::max(largest, recomputed);
        break;
      case Recompute::kFull:
        kept += D;
        largest = std::max(largest, block);
        break;
    }
  }
  // In bfloat16 the blocks' activations take 2 bytes, and each weight's bf16 copy, cast where it is
  // used, is kept for backward beside its float32 master. The logits and their log-softmax stay float32.
  const bool bf16 = c.train.dtype == TrainDtype::kBFloat16;
  p.param_bytes = (bf16 ? 6 : 4) * p.params_per_rank;
  p.grad_bytes = 4 * p.params_per_rank;
  p.optimizer_bytes = 8 * p.params_per_rank;
  p.activation_bytes = (4 * 2 * V + (bf16 ? 2 : 4) * (kept + largest)) * T;
  const N accumulation = c.accumulation_steps(world_size);
  // Each exchange sends T*K rows of D activations, of which (EP-1)/EP leave the rank; four exchanges a layer.
  p.a2a_bytes_per_step = 4 * p.num_moe_layers * accumulation * (T * K * D * (bf16 ? 2 : 4)) * (EP - 1) / EP;
  return p;
}

}  // namespace

Plan make_plan(const Config& c, int world_size) {
  constexpr int64_t kMaxLayers = int64_t{1} << 20;  // the plan walks the layers
  MOE_INPUT_CHECK(c.model.num_layers <= kMaxLayers, c.source, ": model.num_layers (", c.model.num_layers,
                  ") is beyond any machine (at most ", kMaxLayers, ")");
  const PlanOf<long double> bound = plan_of<long double>(c, world_size);
  constexpr long double kMax = 4611686018427387904.0L;  // 2^62
  const std::pair<const char*, long double> figures[] = {
      {"parameters", bound.total_params},
      {"bytes of optimizer state per rank", bound.optimizer_bytes},
      {"bytes of activations per rank", bound.activation_bytes},
      {"bytes of all-to-all per rank and step", bound.a2a_bytes_per_step}};
  for (const auto& [what, value] : figures) {
    if (!(value < kMax)) {
      char n[32];
      std::snprintf(n, sizeof n, "%.3Lg", value);
      throw Error(c.source + ": the model's sizes give " + n + " " + what +
                      ", beyond any machine (model.hidden_size, model.vocab_size, moe.ffn_hidden_size, ...)",
                  /*bad_input=*/true);
    }
  }
  return plan_of<int64_t>(c, world_size);
}

nlohmann::json to_json(const Plan& p, int64_t gpu_memory) {
  nlohmann::json j = {{"total_params", p.total_params},
          {"active_params", p.active_params},
          {"params_per_rank", p.params_per_rank},
          {"num_moe_layers", p.num_moe_layers},
          {"bytes_per_rank",
           {{"params", p.param_bytes},
            {"grads", p.grad_bytes},
            {"optimizer", p.optimizer_bytes},
            {"activations", p.activation_bytes}}},
          {"a2a_bytes_per_step_per_rank", p.a2a_bytes_per_step}};
  j["bytes_per_rank"]["total"] = p.total_bytes();
  if (gpu_memory > 0) j["gpu_memory"] = {{"bytes", gpu_memory}, {"fits", p.total_bytes() <= gpu_memory}};
  return j;
}

namespace {
std::string count(int64_t n) {
  char buf[32];
  if (n >= 1000000000) {
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  } else {
    std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  }
  return buf;
}
std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%10.3f GiB", static_cast<double>(bytes) / (1ull << 30));
  return buf;
}
}  // namespace

std::string describe(const Plan& p, const Config& c, int world_size, int64_t gpu_memory) {
  const int64_t ep = c.parallel.expert_parallel_size;
  std::string out = c.source + " on " + std::to_string(world_size) + " ranks (expert parallel " + std::to_string(ep) +
                    " x expert data parallel " + std::to_string(world_size / ep) + ")\n";
  out += "parameters: " + count(p.total_params) + " total, " + count(p.active_params) + " active per token, " +
         count(p.params_per_rank) + " per rank; " + std::to_string(p.num_moe_layers) + " of " +
         std::to_string(c.model.num_layers) + " layers MoE\n";
  out += c.train.dtype == TrainDtype::kBFloat16 ? "memory per rank (float32 masters and their bfloat16 copies, AdamW):\n"
                                                : "memory per rank (float32 weights, AdamW):\n";
  out += "  parameters   " + gib(p.param_bytes) + "\n";
  out += "  gradients    " + gib(p.grad_bytes) + "\n";
  out += "  optimizer    " + gib(p.optimizer_bytes) + "\n";
  out += "  activations  " + gib(p.activation_bytes) + "  (one micro-batch of " +
         std::to_string(c.train.micro_batch_size) + " x " + std::to_string(c.data.seq_len) + " tokens, recompute " +
         enum_name(c.train.recompute) + ", " + enum_name(c.train.dtype) + ", estimate)\n";
  out += "  total        " + gib(p.total_bytes()) + "\n";
  out += "all-to-all: " + gib(p.a2a_bytes_per_step) + " sent per rank per step\n";
  if (gpu_memory > 0) {
    const int64_t spare = gpu_memory - p.total_bytes();
    const auto plain = [](int64_t bytes) {
      std::string g = gib(bytes);
      return g.erase(0, g.find_first_not_of(' '));
    };
    out += std::string(spare >= 0 ? "fits in " : "does not fit in ") + plain(gpu_memory) + " of GPU memory: " +
           plain(spare >= 0 ? spare : -spare) + (spare >= 0 ? " to spare\n" : " over\n");
  }
  return out;
}

}  // namespace moe
