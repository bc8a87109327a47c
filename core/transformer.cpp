#include "core/transformer.h"

#include <cmath>

#include "core/check.h"

namespace moe {

RMSNormImpl::RMSNormImpl(int64_t hidden_size, double eps) : eps_(eps) {
  MOE_CHECK(hidden_size > 0 && eps > 0, "rmsnorm: hidden_size (", hidden_size, ") and eps (", eps,
            ") must be positive");
  weight = register_parameter("weight", at::ones({hidden_size}, at::kFloat));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.square().mean(-1, true) + eps_) * weight).to(x.scalar_type());
}

at::Tensor apply_rope(const at::Tensor& x, double theta) {
  MOE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rope: expected [B, S, H, head_dim] with an even head_dim, got ",
            x.sizes());
  const int64_t S = x.size(1), half = x.size(3) / 2;
  const auto opts = x.options().dtype(at::kFloat);
  const at::Tensor inv_freq = at::pow(theta, at::arange(0, half, opts) * (-2.0 / static_cast<double>(2 * half)));
  const at::Tensor angles = at::outer(at::arange(S, opts), inv_freq);  // [S, hd/2]
  const at::Tensor cos = angles.cos().view({1, S, 1, half}), sin = angles.sin().view({1, S, 1, half});
  const at::Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, 3).to(x.scalar_type());
}

AttentionImpl::AttentionImpl(const AttentionOptions& options) : options_(options) {
  const auto& o = options_;
  MOE_CHECK(o.hidden_size > 0 && o.num_heads > 0 && o.num_kv_heads > 0, "attention: hidden_size (", o.hidden_size,
            "), num_heads (", o.num_heads, ") and num_kv_heads (", o.num_kv_heads, ") must be positive");
  MOE_CHECK(o.hidden_size % o.num_heads == 0, "attention: num_heads (", o.num_heads,
            ") must divide hidden_size (", o.hidden_size, ")");
  MOE_CHECK(o.num_heads % o.num_kv_heads == 0, "attention: num_kv_heads (", o.num_kv_heads,
            ") must divide num_heads (", o.num_heads, ")");
  MOE_CHECK(head_dim() % 2 == 0, "attention: head_dim (", head_dim(), ") must be even for rotary embeddings");
  const int64_t hd = head_dim();
  const auto init = [&](int64_t out, int64_t in) { return at::randn({out, in}, at::kFloat).mul_(o.init_std); };
  q_proj = register_parameter("q_proj", init(o.num_heads * hd, o.hidden_size));
  k_proj = register_parameter("k_proj", init(o.num_kv_heads * hd, o.hidden_size));
  v_proj = register_parameter("v_proj", init(o.num_kv_heads * hd, o.hidden_size));
  o_proj = register_parameter("o_proj", init(o.hidden_size, o.num_heads * hd));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x) {
  const auto& o = options_;
  MOE_CHECK(x.dim() == 3 && x.size(2) == o.hidden_size, "attention: expected [B, S, ", o.hidden_size, "], got ",
            x.sizes());
  const int64_t B = x.size(0), S = x.size(1), H = o.num_heads, KV = o.num_kv_heads, hd = head_dim();
  const at::Tensor q = apply_rope(at::linear(x, q_proj).view({B, S, H, hd}), o.rope_theta).transpose(1, 2);
  at::Tensor k = apply_rope(at::linear(x, k_proj).view({B, S, KV, hd}), o.rope_theta).transpose(1, 2);
  at::Tensor v = at::linear(x, v_proj).view({B, S, KV, hd}).transpose(1, 2);
  if (KV != H) {  // query head h reads KV head h / (H / KV)
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  const at::Tensor causal = at::ones({S, S}, x.options().dtype(at::kBool)).triu(1);
  const at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul(1.0 / std::sqrt(static_cast<double>(hd)));
  const at::Tensor probs = at::softmax(scores.masked_fill(causal, -INFINITY), -1);
  const at::Tensor out = at::matmul(probs, v).transpose(1, 2).reshape({B, S, H * hd});
  return at::linear(out, o_proj);
}

}  // namespace moe
