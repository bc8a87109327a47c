#pragma once
// The dense parts of the decoder-only transformer, in the Mixtral/Llama layout so that exported weights
// load elsewhere: RMSNorm, rotary position embeddings (rotate-half convention, as Hugging Face's Llama
// and Mixtral), and causal self-attention with grouped-query attention. Projection weights are stored as
// nn.Linear stores them, [out, in], with Hugging Face's names (q_proj, k_proj, v_proj, o_proj).
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <vector>

#include "core/experts.h"
#include "core/model_options.h"
#include "core/moe_layer.h"
#include "core/phase_times.h"
#include "parallel/parameter.h"

namespace moe {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t hidden_size, double eps);
  // x * rsqrt(mean(x^2) + eps) * weight, computed in float32, returned in x's dtype.
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight;  // [D], ones at init

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Rotary embedding of x [B, S, H, hd] at positions offset..offset+S-1: pairs (i, i + hd/2) rotated by the
// angle position * theta^(-2i/hd) (rotate-half), as Llama and Mixtral do.
at::Tensor apply_rope(const at::Tensor& x_BSHd, double theta, int64_t offset = 0);

// One attention layer's keys and values of the positions seen so far, for generation: each forward
// appends its positions' and attends over all of them, so a new token costs one position's work.
struct KVCache {
  at::Tensor k, v;     // [B, KV heads, model.max_seq_len, head_dim], allocated by the first forward
  int64_t length = 0;  // positions held
};

class AttentionImpl : public torch::nn::Module {
 public:
  // Reads hidden_size, num_attention_heads, num_kv_heads, rope_theta and init_std.
  explicit AttentionImpl(const TransformerOptions& options);
  // Causal self-attention over x [B, S, D]. With a cache (inference only): x is positions
  // cache->length.. of the sequences, attending over the cached ones too, and appended to the cache.
  at::Tensor forward(const at::Tensor& x_BSD, KVCache* cache = nullptr);

  const TransformerOptions& options() const { return options_; }
  int64_t head_dim() const { return options_.head_dim(); }
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [H*hd, D], [KV*hd, D], [KV*hd, D], [D, H*hd]
  PhaseTimes* times = nullptr;  // adds the forward's time to `attention` when set

 private:
  TransformerOptions options_;
};
TORCH_MODULE(Attention);

// Pre-norm block, Mixtral layout: x + attn(norm(x)), then h + ffn(norm(h)), the FFN being an MoE layer
// or a dense SwiGLU MLP (held as Experts with one expert, so both share one grouped-GEMM path).
class TransformerBlockImpl : public torch::nn::Module {
 public:
  TransformerBlockImpl(const TransformerOptions& options, int64_t layer, const ExpertParallel& parallel);
  // x [B, S, D] -> [B, S, D]; appends this layer's routing to `routings` when it is an MoE layer.
  at::Tensor forward(const at::Tensor& x_BSD, std::vector<Routing>& routings, KVCache* cache = nullptr);

  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MoELayer moe{nullptr};  // MoE layers
  Experts mlp{nullptr};   // dense layers
};
TORCH_MODULE(TransformerBlock);

struct TransformerOutput {
  at::Tensor logits;                // [B, S, vocab] float32
  at::Tensor router_loss;           // scalar: the sum over MoE layers of routing.loss (0 for dense)
  std::vector<Routing> routings;    // one per MoE layer, in layer order
};

class TransformerImpl : public torch::nn::Module {
 public:
  // parallel: this rank's expert shard and groups, as for MoELayer (default: one process holds every expert).
  explicit TransformerImpl(const TransformerOptions& options, const ExpertParallel& parallel = {});
  // tokens [B, S] int64 -> logits and the routing of every MoE layer. With `caches` (generation, no
  // gradient): the tokens continue the sequences the caches hold, one cache per layer (resized to the
  // layers on the first call).
  TransformerOutput forward(const at::Tensor& tokens_BS, std::vector<KVCache>* caches = nullptr);

  // Deterministic initialisation that does not depend on the number of ranks: each parameter (each
  // expert, for expert weights) draws from its own generator seeded by (seed, name, global expert), so
  // EP=1 and EP=N start from the same model. Normal(0, init_std); o_proj and w2, whose outputs add to
  // the residual stream, get init_std / sqrt(2 * num_layers) (GPT-2, Megatron); norms are ones.
  void init_weights(uint64_t seed);

  // Every parameter once, in named_parameters() order, with its placement, layer and first global
  // expert: built with the model, the one list that sync, clipping, the optimizer and checkpoints read.
  const ParameterList& parameter_records() const { return records_; }
  std::vector<MoELayer> moe_layers() const;
  // train.recompute (core/recompute.h): applies in training mode, under grad.
  void set_recompute(Recompute recompute);
  // train.dtype: the dtype the forward and backward compute in (float32, or bfloat16 as mixed
  // precision). Parameters stay float32 masters, so their gradients accumulate in float32 across
  // micro-batches (Megatron's main_grad); routing, its losses and the logits stay float32.
  void set_compute_dtype(at::ScalarType dtype);
  // train.profile: every layer's attention and MoE layer add their phases' times to `times` (null: off).
  void set_phase_times(PhaseTimes* times);

  const TransformerOptions& options() const { return options_; }
  at::Tensor embed_tokens;  // [vocab, D]
  std::vector<TransformerBlock> layers;
  RMSNorm norm{nullptr};
  at::Tensor lm_head;  // [vocab, D], untied

 private:
  TransformerOptions options_;
  ParameterList records_;
  Recompute recompute_ = Recompute::kNone;
  at::ScalarType compute_dtype_ = at::kFloat;
};
TORCH_MODULE(Transformer);

}  // namespace moe
