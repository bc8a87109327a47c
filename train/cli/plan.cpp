#include "train/cli/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "core/check.h"

namespace moe {

namespace {

double binomial(double n, double k) {
  if (k < 0 || k > n) return 0;
  double c = 1;
  for (int64_t i = 0; i < static_cast<int64_t>(k); ++i) c *= (n - static_cast<double>(i)) / (k - static_cast<double>(i));
  return c;
}

// The chance that k of n experts, drawn uniformly without replacement, all miss a given m of them.
double miss_chance(double n, double m, double k) { return binomial(n - m, k) / binomial(n, k); }

// The other EP ranks a token's top-k experts sit on, expected under uniform routing: the rows a dispatch
// once per rank sends per token. Node-limited routing picks group_topk of num_groups groups first, then
// the experts inside them; a group lies inside one rank (num_groups a multiple of EP) or spans ranks (a
// divisor), as the router requires.
double remote_ranks_per_token(const RouterOptions& r, int64_t ep) {
  const double E = static_cast<double>(r.num_experts), K = static_cast<double>(r.top_k), EP = static_cast<double>(ep);
  const double El = E / EP;
  double reach = 1 - miss_chance(E, El, K);
  if (r.num_groups > 0 && r.group_topk < r.num_groups) {
    const double G = static_cast<double>(r.num_groups), M = static_cast<double>(r.group_topk), Eg = E / G;
    if (r.num_groups % ep == 0) {  // q groups a rank: j of them among the M a token picks
      const double q = G / EP;
      double miss = 0;
      for (double j = 0; j <= std::min(q, M); ++j) {
        miss += binomial(q, j) * binomial(G - q, M - j) / binomial(G, M) * miss_chance(M * Eg, j * Eg, K);
      }
      reach = 1 - miss;
    } else {  // the rank's group is among the M picked, then one of the picks lands on the rank
      reach = M / G * (1 - miss_chance(M * Eg, El, K));
    }
  }
  return (EP - 1) * reach;
}

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
  const N shared_width = static_cast<N>(o.moe.shared_ffn_width());
  const N shared = expert_matrices * D * shared_width;
  const N outside = 2 * V * D + D;  // embedding, untied head, final norm
  const N experts_per_rank = static_cast<N>(o.moe.router.num_experts / c.parallel.expert_parallel_size);

  PlanOf<N> p;
  p.total_params = p.active_params = p.params_per_rank = outside;
  const bool bf16 = c.train.dtype == TrainDtype::kBFloat16;
  const N b = bf16 ? 2 : 4, f = 4;  // bytes of an activation, of a float32
  const N S = c.data.seq_len, T = static_cast<N>(c.train.micro_batch_size) * S;
  // Bytes a block keeps for backward per token, besides its input, counted from what its autograd
  // nodes save (moe's own modules): each RMSNorm its output (its input is counted where it is made) and
  // its float32 reciprocal RMS (core/fused_kernels.h); attention q and k before and after rotation, v,
  // FlashAttention's float32 output and log-sum-exp (no [S, S] probabilities), the heads' output and the
  // residual sum; the router's float32 logits, probabilities and gates; the routed copies received, regrouped,
  // out of the experts and back (4 x D each); per copy the expert FFN's F-wide buffers, SwiGLU's three
  // (x w1, x w3 and their gated product; core/experts.cpp) and GELU's two; the shared experts' the same
  // on every token. The expert FFNs' part is what train.recompute moe gives
  // back.
  const N norm = b * D + f;
  const N attention_saved = norm + b * (2 * H * hd + 2 * KV * hd + KV * hd + H * hd + D) + f * H * (hd + 1);
  const N per_copy = b * (expert_matrices == 3 ? 3 : 2) * F;
  const N shared_saved = b * (expert_matrices == 3 ? 3 : 2) * shared_width;
  // One exchange's send buffer: the rows leave it before backward, but it is live while they go.
  const N dispatch_rows = K * D;
  N kept = 0, largest = 0, largest_recomputed = 0, largest_layer = 0;
  N weights_cast = 0, largest_block_weights = 0, expert_weights_cast = 0, largest_layer_experts = 0;
  for (int64_t l = 0; l < o.num_layers; ++l) {
    p.total_params += attention;
    p.active_params += attention;
    p.params_per_rank += attention;
    N block = attention_saved, recomputed = 0, block_weights = attention - 2 * D;
    // Matrix FLOPs per token, forward and backward (6 per weight a token passes through), plus the
    // attention scores and their use, 12 x heads x head_dim x seq_len (PaLM's count: causal masking not
    // halved, as Megatron reports MFU).
    p.flops_per_token += 6 * (attention - 2 * D) + 12 * H * hd * S;
    if (o.is_moe_layer(l)) {
      p.flops_per_token += 6 * (E * D + K * expert + shared);
      ++p.num_moe_layers;
      p.total_params += E * D + E * expert + shared;
      p.active_params += E * D + K * expert + shared;
      p.params_per_rank += E * D + experts_per_rank * expert + shared;
      recomputed = K * per_copy + shared_saved;
      block += norm + f * (3 * E + 2 * K) + b * (4 * K * D + D) + recomputed;
      block_weights += experts_per_rank * expert + shared;
      expert_weights_cast += experts_per_rank * expert + shared;
      largest_layer_experts = std::max(largest_layer_experts, experts_per_rank * expert + shared);
    } else {
      p.flops_per_token += 6 * dense_ffn;
      p.total_params += dense_ffn;
      p.active_params += dense_ffn;
      p.params_per_rank += dense_ffn;
      block += norm + b * (4 * static_cast<N>(o.ffn_hidden_size) + D);
      block_weights += dense_ffn;
    }
    weights_cast += block_weights;
    largest_layer = std::max(largest_layer, block_weights + 2 * D + (o.is_moe_layer(l) ? E * D : 0));
    largest_block_weights = std::max(largest_block_weights, block_weights);
    largest = std::max(largest, block);
    largest_recomputed = std::max(largest_recomputed, recomputed);
    switch (c.train.recompute) {
      case Recompute::kNone: kept += b * D + block; break;
      case Recompute::kMoE: kept += b * D + block - recomputed; break;
      case Recompute::kFull: kept += b * D; break;
    }
  }
  p.flops_per_token += 6 * V * D;  // the head
  // The peak is where backward starts: backward frees each block's saved tensors as it makes their
  // gradients. Recomputing, the block (or the FFNs) being replayed is kept in full meanwhile.
  N replayed = 0;
  if (c.train.recompute == Recompute::kFull) replayed = largest;
  if (c.train.recompute == Recompute::kMoE) replayed = largest_recomputed;
  // The logits (float32, and bf16 first in bf16), their log-softmax and its gradient.
  const N logits = (3 * f + (bf16 ? b : 0)) * V;
  p.activation_bytes = (kept + replayed + logits + b * dispatch_rows) * T;

  p.param_bytes = 4 * p.params_per_rank;
  // In bfloat16 each weight is cast where it is used and the copy kept for backward: every matmul
  // weight's (the head's too); with recompute moe the experts' of one layer, with full one block's.
  if (bf16) {
    N cast = V * D + weights_cast;
    if (c.train.recompute == Recompute::kMoE) cast -= expert_weights_cast - largest_layer_experts;
    if (c.train.recompute == Recompute::kFull) cast = V * D + largest_block_weights;
    p.param_bytes += 2 * cast;
  }
  // Shadow experts (EP > 1): each MoE layer's forward copies up to moe.shadow_experts experts' float32
  // weights to every rank, held until its backward by the FFN that runs on them: in bfloat16 their casts
  // instead, as the float32 copies go once cast; recompute moe keeps them as its inputs and casts one
  // layer's again; full keeps one block's copies, and their casts in bfloat16.
  const N shadow = EP > 1 ? std::min<N>(o.moe.shadow_experts, E) * expert : 0;
  switch (c.train.recompute) {
    case Recompute::kNone: p.param_bytes += p.num_moe_layers * shadow * (bf16 ? 2 : 4); break;
    case Recompute::kMoE: p.param_bytes += p.num_moe_layers * shadow * 4 + (bf16 ? 2 * shadow : 0); break;
    case Recompute::kFull: p.param_bytes += shadow * (bf16 ? 6 : 4); break;
  }
  p.grad_bytes = 4 * p.params_per_rank;
  // Unsharded, the gradients live in GradSync's buckets (.grad is a view), so reducing them needs no
  // buffer. The sharded optimizer reduce-scatters through one buffer: buckets of up to 32 MiB, but a
  // larger tensor makes a bucket of its own (the embedding, the head, a layer's stack of local experts'
  // matrices).
  N largest_tensor = std::max({V * D, D * H * hd, experts_per_rank * D * F, shared_width * D});
  if (p.num_moe_layers < static_cast<N>(o.num_layers)) largest_tensor = std::max(largest_tensor, D * static_cast<N>(o.ffn_hidden_size));
  const N bucket =
      c.train.shard_optimizer ? std::min<N>(std::max<N>(N{33554432}, 4 * largest_tensor), p.grad_bytes) : N{0};
  // AdamW's two float32 moments; sharded (ZeRO-1), those and the reduced gradient of each rank's part:
  // the dense parameters' over every rank, the experts' over their expert-data-parallel group.
  const N edp = static_cast<N>(world_size) / EP;
  N routed_per_rank = 0;
  for (int64_t l = 0; l < o.num_layers; ++l) {
    if (o.is_moe_layer(l)) routed_per_rank += experts_per_rank * expert;
  }
  const N dense_per_rank = p.params_per_rank - routed_per_rank, W = static_cast<N>(world_size);
  p.dense_params_per_rank = dense_per_rank;
  // What recomputation runs again: the whole forward (a third of forward and backward), or the experts'.
  if (c.train.recompute == Recompute::kFull) p.recompute_flops_per_token = p.flops_per_token / 3;
  if (c.train.recompute == Recompute::kMoE) p.recompute_flops_per_token = 2 * p.num_moe_layers * (K * expert + shared);
  p.optimizer_bytes = c.train.shard_optimizer ? 12 * ((dense_per_rank + W - 1) / W + (routed_per_rank + edp - 1) / edp)
                                              : 8 * p.params_per_rank;
  // Backward makes each weight's gradient before adding it into .grad: a layer's at a time (in bfloat16
  // the bf16 one and its float32 conversion).
  // Shadowing adds the copies' gradients and the owner's shard that their all-reduce returns.
  if (shadow > 0) largest_layer += shadow + experts_per_rank * expert;
  p.buffer_bytes = bucket + (bf16 ? 6 : 4) * std::max(largest_layer, V * D);
  const N accumulation = c.accumulation_steps(world_size);
  // Four exchanges a layer: dispatch and combine, forward and backward. Once per expert each sends T*K rows
  // of D activations, (EP-1)/EP of them to other ranks. Once per rank a row goes to each other rank a
  // token's experts sit on, and dispatch's row carries the token's float32 gate weights for that rank's
  // experts (their gradient comes back) and a byte mask of them.
  if (o.moe.dispatch_once_per_rank && EP > 1) {
    const long double rows = static_cast<long double>(p.num_moe_layers) * static_cast<long double>(accumulation) *
                             static_cast<long double>(T) * remote_ranks_per_token(o.moe.router, c.parallel.expert_parallel_size);
    p.a2a_bytes_per_step = static_cast<N>(std::round(rows * static_cast<long double>(4 * D * b + (2 * f + 1) * experts_per_rank)));
  } else {
    p.a2a_bytes_per_step = 4 * p.num_moe_layers * accumulation * (T * K * D * b) * (EP - 1) / EP;
  }
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
            {"activations", p.activation_bytes},
            {"buffers", p.buffer_bytes}}},
          {"a2a_bytes_per_step_per_rank", p.a2a_bytes_per_step},
          {"flops_per_token", p.flops_per_token}};
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
  char flops[96];
  std::snprintf(flops, sizeof flops, "model FLOPs: %.4g per token, forward and backward\n",
                static_cast<double>(p.flops_per_token));
  out += flops;
  std::string optimizer = "AdamW";
  if (c.train.shard_optimizer) {
    optimizer += " sharded over " + std::to_string(world_size) + " (dense) and " + std::to_string(world_size / ep) +
                 " (experts) ranks";
  }
  out += "memory per rank (" +
         std::string(c.train.dtype == TrainDtype::kBFloat16 ? "float32 masters and their bfloat16 copies, "
                                                            : "float32 weights, ") +
         optimizer + "):\n";
  out += "  parameters   " + gib(p.param_bytes) + "\n";
  out += "  gradients    " + gib(p.grad_bytes) + "\n";
  out += "  optimizer    " + gib(p.optimizer_bytes) + "\n";
  out += "  activations  " + gib(p.activation_bytes) + "  (one micro-batch of " +
         std::to_string(c.train.micro_batch_size) + " x " + std::to_string(c.data.seq_len) + " tokens, recompute " +
         enum_name(c.train.recompute) + ", " + enum_name(c.train.dtype) + ", estimate)\n";
  out += "  buffers      " + gib(p.buffer_bytes) +
         (c.train.shard_optimizer ? "  (the gradient bucket being reduced, one layer's new gradients)\n"
                                  : "  (one layer's new gradients; gradients are reduced where they live)\n");
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
