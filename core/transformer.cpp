#include "core/transformer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/modules/container/modulelist.h>

#include <cmath>
#include <limits>
#include <map>

#include "core/check.h"
#include "core/flash_attention.h"
#include "core/fused_kernels.h"
#include "core/recompute.h"

namespace moe {

RMSNormImpl::RMSNormImpl(int64_t hidden_size, double eps) : eps_(eps) {
  MOE_CHECK(hidden_size > 0 && eps > 0, "rmsnorm: hidden_size (", hidden_size, ") and eps (", eps,
            ") must be positive");
  weight = register_parameter("weight", at::ones({hidden_size}, at::kFloat));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) { return rms_norm(x, weight, eps_); }

at::Tensor apply_rope(const at::Tensor& x, double theta, int64_t offset) {
  MOE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, "rope: expected [B, S, H, head_dim] with an even head_dim, got ",
            x.sizes());
  const int64_t S = x.size(1), half = x.size(3) / 2;
  const auto opts = x.options().dtype(at::kFloat);
  const at::Tensor inv_freq = at::pow(theta, at::arange(0, half, opts) * (-2.0 / static_cast<double>(2 * half)));
  const at::Tensor angles = at::outer(at::arange(offset, offset + S, opts), inv_freq);  // [S, hd/2]
  return rotate_half(x.contiguous(), angles.cos(), angles.sin());
}

AttentionImpl::AttentionImpl(const TransformerOptions& options) : options_(options) {
  const auto& o = options_;
  validate(o);
  const int64_t hd = head_dim(), H = o.num_attention_heads, KV = o.kv_heads();
  const auto init = [&](int64_t out, int64_t in) { return at::randn({out, in}, at::kFloat).mul_(o.init_std); };
  q_proj = register_parameter("q_proj", init(H * hd, o.hidden_size));
  k_proj = register_parameter("k_proj", init(KV * hd, o.hidden_size));
  v_proj = register_parameter("v_proj", init(KV * hd, o.hidden_size));
  o_proj = register_parameter("o_proj", init(o.hidden_size, H * hd));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, KVCache* cache) {
  const auto& o = options_;
  MOE_CHECK(x.dim() == 3 && x.size(2) == o.hidden_size, "attention: expected [B, S, ", o.hidden_size, "], got ",
            x.sizes());
  const int64_t B = x.size(0), S = x.size(1), H = o.num_attention_heads, KV = o.kv_heads(), hd = head_dim();
  ScopedPhase timer(times, &PhaseTimes::attention);
  // Weights are float32 masters; the projections compute in x's dtype (bfloat16 under train.dtype), and
  // the casts' backward brings the gradients back to float32.
  const auto in_x = [&x](const at::Tensor& w) { return w.to(x.scalar_type()); };
  const int64_t start = cache ? cache->length : 0;
  const at::Tensor q = apply_rope(at::linear(x, in_x(q_proj)).view({B, S, H, hd}), o.rope_theta, start).transpose(1, 2);
  at::Tensor k = apply_rope(at::linear(x, in_x(k_proj)).view({B, S, KV, hd}), o.rope_theta, start).transpose(1, 2);
  at::Tensor v = at::linear(x, in_x(v_proj)).view({B, S, KV, hd}).transpose(1, 2);
  if (cache) {
    MOE_CHECK(!at::GradMode::is_enabled(), "attention: a KV cache is for inference, under no_grad");
    MOE_CHECK(start + S <= o.max_seq_len, "attention: ", start + S, " positions exceed model.max_seq_len (",
              o.max_seq_len, ")");
    if (!cache->k.defined()) {
      cache->k = at::zeros({B, KV, o.max_seq_len, hd}, k.options());
      cache->v = at::zeros({B, KV, o.max_seq_len, hd}, v.options());
    }
    MOE_CHECK(cache->k.size(0) == B, "attention: the cache holds ", cache->k.size(0), " sequences, the input ", B);
    cache->k.narrow(2, start, S).copy_(k);
    cache->v.narrow(2, start, S).copy_(v);
    cache->length = start + S;
    k = cache->k.narrow(2, 0, start + S);
    v = cache->v.narrow(2, 0, start + S);
  }
  if (KV != H) {  // query head h reads KV head h / (H / KV)
    k = k.repeat_interleave(H / KV, 1);
    v = v.repeat_interleave(H / KV, 1);
  }
  at::Tensor out;
  if (cache) {  // S new queries against start + S keys: query i sees keys 0 .. start + i
    const int64_t T = start + S;
    const at::Tensor future = at::arange(T, x.options().dtype(at::kLong)).unsqueeze(0) >
                              at::arange(start, T, x.options().dtype(at::kLong)).unsqueeze(1);
    const at::Tensor scores = at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-2, -1))
                                  .div_(std::sqrt(static_cast<double>(hd)))
                                  .masked_fill_(future, -std::numeric_limits<float>::infinity());
    out = at::matmul(at::softmax(scores, -1), v.to(at::kFloat)).to(x.scalar_type());
  } else {
    out = causal_attention(q.reshape({B * H, S, hd}), k.reshape({B * H, S, hd}), v.reshape({B * H, S, hd}))
              .view({B, H, S, hd});
  }
  return at::linear(out.transpose(1, 2).reshape({B, S, H * hd}), in_x(o_proj));
}

TransformerBlockImpl::TransformerBlockImpl(const TransformerOptions& o, int64_t layer, const ExpertParallel& parallel) {
  const int64_t D = o.hidden_size;
  input_layernorm = register_module("input_layernorm", RMSNorm(D, o.norm_eps));
  self_attn = register_module("self_attn", Attention(o));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(D, o.norm_eps));
  if (o.is_moe_layer(layer)) {
    moe = register_module("moe", MoELayer(o, parallel));
  } else {
    ExpertsOptions eo;
    eo.num_experts = 1;
    eo.hidden_size = D;
    eo.ffn_hidden_size = o.ffn_hidden_size;
    eo.init_std = o.init_std;
    mlp = register_module("mlp", Experts(eo));
  }
}

at::Tensor TransformerBlockImpl::forward(const at::Tensor& x, std::vector<Routing>& routings, KVCache* cache) {
  const at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cache);
  const at::Tensor n = post_attention_layernorm->forward(h);
  if (moe) {
    MoEOutput out = moe->forward(n);
    routings.push_back(std::move(out.routing));
    return h + out.y;
  }
  const at::Tensor n_TD = n.reshape({-1, n.size(-1)});
  return h + mlp->forward(n_TD, {n_TD.size(0)}).view(n.sizes());
}

TransformerImpl::TransformerImpl(const TransformerOptions& options, const ExpertParallel& parallel)
    : options_(options) {
  const auto& o = options_;
  validate(o);
  const int64_t D = o.hidden_size;
  embed_tokens = register_parameter("embed_tokens", at::randn({o.vocab_size, D}).mul_(o.init_std));
  auto list = register_module("layers", torch::nn::ModuleList());  // names layers.0, layers.1, ...
  for (int64_t i = 0; i < o.num_layers; ++i) {
    layers.push_back(TransformerBlock(o, i, parallel));
    list->push_back(layers.back());
  }
  norm = register_module("norm", RMSNorm(D, o.norm_eps));
  lm_head = register_parameter("lm_head", at::randn({o.vocab_size, D}).mul_(o.init_std));

  // Where each parameter sits, known from the modules that hold it, not parsed from its name.
  std::map<const void*, ParameterRecord> placed;  // by TensorImpl
  for (int64_t i = 0; i < o.num_layers; ++i) {
    for (const at::Tensor& p : layers[i]->parameters()) placed[p.unsafeGetTensorImpl()].layer = i;
    if (!layers[i]->moe) continue;
    for (const at::Tensor& p : layers[i]->moe->experts->parameters()) {
      ParameterRecord& r = placed[p.unsafeGetTensorImpl()];
      r.placement = Placement::kExpertSharded;
      r.first_expert = layers[i]->moe->first_local_expert();
    }
  }
  for (const auto& item : named_parameters()) {
    ParameterRecord r;
    const auto it = placed.find(item.value().unsafeGetTensorImpl());
    if (it != placed.end()) r = it->second;
    r.name = item.key();
    r.tensor = item.value();
    records_.push_back(std::move(r));
  }
}

TransformerOutput TransformerImpl::forward(const at::Tensor& tokens, std::vector<KVCache>* caches) {
  MOE_CHECK(tokens.dim() == 2 && tokens.scalar_type() == at::kLong, "transformer: expected int64 tokens [B, S], got ",
            tokens.sizes(), " ", tokens.scalar_type());
  TransformerOutput out;
  at::Tensor x = at::embedding(embed_tokens, tokens).to(compute_dtype_);
  std::vector<at::Tensor> router_losses;  // the graph's own: with full recompute, the re-run's
  if (caches) caches->resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    TransformerBlock& layer = layers[l];
    if (recompute_ != Recompute::kFull || !is_training() || caches) {
      x = layer->forward(x, out.routings, caches ? &(*caches)[l] : nullptr);
      if (layer->moe) router_losses.push_back(out.routings.back().loss);
      continue;
    }
    // Only the block's input is kept; its routing (statistics) comes from the first run alone.
    std::vector<Routing>* routings = &out.routings;
    TransformerBlock block = layer;
    const Recomputable run = [block, routings](const std::vector<at::Tensor>& in, bool replay) mutable {
      std::vector<Routing> again;
      std::vector<Routing>& sink = replay ? again : *routings;
      const size_t before = sink.size();
      std::vector<at::Tensor> outputs = {block->forward(in[0], sink)};
      if (sink.size() > before) outputs.push_back(sink.back().loss);
      return outputs;
    };
    const std::vector<at::Tensor> outputs = recompute(run, {x});
    x = outputs[0];
    if (outputs.size() > 1) router_losses.push_back(outputs[1]);
  }
  out.logits = at::linear(norm->forward(x), lm_head.to(compute_dtype_)).to(at::kFloat);  // the loss in float32
  out.router_loss = at::zeros({}, out.logits.options());
  for (const at::Tensor& l : router_losses) out.router_loss = out.router_loss + l;
  return out;
}

void TransformerImpl::set_compute_dtype(at::ScalarType dtype) {
  MOE_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "transformer: compute dtype must be float32 or bfloat16, got ",
            dtype);
  compute_dtype_ = dtype;
}

void TransformerImpl::set_phase_times(PhaseTimes* times) {
  for (TransformerBlock& block : layers) {
    block->self_attn->times = times;
    if (block->moe) block->moe->set_phase_times(times);
  }
}

void TransformerImpl::set_recompute(Recompute recompute) {
  recompute_ = recompute;
  for (MoELayer& m : moe_layers()) m->set_recompute_experts(recompute == Recompute::kMoE);
}

namespace {

// FNV-1a: a hash that is the same on every machine and compiler (std::hash is not).
uint64_t stable_hash(uint64_t seed, const std::string& name, int64_t index) {
  uint64_t h = 1469598103934665603ull ^ seed;
  const auto mix = [&h](unsigned char c) { h = (h ^ c) * 1099511628211ull; };
  for (char c : name) mix(static_cast<unsigned char>(c));
  for (int i = 0; i < 8; ++i) mix(static_cast<unsigned char>(static_cast<uint64_t>(index) >> (8 * i)));
  return h;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void TransformerImpl::init_weights(uint64_t seed) {
  at::NoGradGuard no_grad;
  const double residual_std = options_.init_std / std::sqrt(2.0 * static_cast<double>(options_.num_layers));
  for (const ParameterRecord& r : records_) {
    const std::string& name = r.name;
    at::Tensor p = r.tensor;
    if (ends_with(name, "layernorm.weight") || name == "norm.weight") {
      p.fill_(1.0);
      continue;
    }
    const double std = (ends_with(name, "o_proj") || ends_with(name, ".w2")) ? residual_std : options_.init_std;
    if (r.is_expert()) {
      for (int64_t e = 0; e < p.size(0); ++e) {
        at::Generator gen = at::detail::createCPUGenerator(stable_hash(seed, name, r.first_expert + e));
        p[e].copy_(at::normal(0.0, std, p[e].sizes(), gen));
      }
    } else {
      at::Generator gen = at::detail::createCPUGenerator(stable_hash(seed, name, -1));
      p.copy_(at::normal(0.0, std, p.sizes(), gen));
    }
  }
}

std::vector<MoELayer> TransformerImpl::moe_layers() const {
  std::vector<MoELayer> out;
  for (const auto& layer : layers) {
    if (layer->moe) out.push_back(layer->moe);
  }
  return out;
}

}  // namespace moe
