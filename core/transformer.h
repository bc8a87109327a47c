#pragma once
// The dense parts of the decoder-only transformer, in the Mixtral/Llama layout so that exported weights
// load elsewhere: RMSNorm, rotary position embeddings (rotate-half convention, as Hugging Face's Llama
// and Mixtral), and causal self-attention with grouped-query attention. Projection weights are stored as
// nn.Linear stores them, [out, in], with Hugging Face's names (q_proj, k_proj, v_proj, o_proj).
#include <ATen/ATen.h>
#include <torch/nn/module.h>

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

// Rotary embedding of x [B, S, H, hd] at positions 0..S-1: pairs (i, i + hd/2) rotated by the angle
// position * theta^(-2i/hd) (rotate-half), as Llama and Mixtral do.
at::Tensor apply_rope(const at::Tensor& x_BSHd, double theta);

struct AttentionOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // grouped-query attention: each KV head serves num_heads / num_kv_heads
  double rope_theta = 10000.0;
  double init_std = 0.02;
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // Causal self-attention over x [B, S, D].
  at::Tensor forward(const at::Tensor& x_BSD);

  const AttentionOptions& options() const { return options_; }
  int64_t head_dim() const { return options_.hidden_size / options_.num_heads; }
  at::Tensor q_proj, k_proj, v_proj, o_proj;  // [H*hd, D], [KV*hd, D], [KV*hd, D], [D, H*hd]

 private:
  AttentionOptions options_;
};
TORCH_MODULE(Attention);

}  // namespace moe
