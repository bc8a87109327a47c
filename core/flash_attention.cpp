#include "core/flash_attention.h"

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

namespace moe {
namespace {

// One tile's keys: [begin, begin + size), and whether it ends with the diagonal block (and so needs the
// mask on its last columns).
struct KeyChunk {
  int64_t begin, size;
  bool diagonal;
};

// The key chunks a query block [q0, q0 + rows) meets: the keys [0, q0 + rows) in chunks of `key`
// (at least `rows`), cut from the end so that the last chunk holds the whole diagonal block. Keys after
// the block are never visited; at S <= key every query block is one chunk, one plain softmax.
std::vector<KeyChunk> key_chunks(int64_t q0, int64_t rows, int64_t key) {
  std::vector<KeyChunk> chunks;
  for (int64_t end = q0 + rows; end > 0;) {
    const int64_t begin = std::max<int64_t>(0, end - key);
    chunks.push_back({begin, end - begin, end == q0 + rows});
    end = begin;
  }
  std::reverse(chunks.begin(), chunks.end());
  return chunks;
}

// -inf above the diagonal of a query block's diagonal tile, 0 on and below it.
at::Tensor causal_mask(int64_t query, const at::TensorOptions& options) {
  return at::full({query, query}, -INFINITY, options).triu(1);
}

// A [n, rows, cols] view at the front of a buffer, so every tile reuses one allocation.
at::Tensor tile(const at::Tensor& buffer, int64_t n, int64_t rows, int64_t cols) {
  return buffer.view(-1).narrow(0, 0, n * rows * cols).view({n, rows, cols});
}

// s = q_i k_c^T for queries already scaled by 1/sqrt(d); -inf above the diagonal in the diagonal block
// (the chunk's last `rows` columns).
// (bmm_out rather than baddbmm with beta 0: libtorch 1.13's small-matrix path multiplies the old contents
// by beta, and 0 * NaN is NaN.)
void scores(at::Tensor& s, const at::Tensor& qi, const at::Tensor& kc, const at::Tensor& mask, const KeyChunk& c) {
  at::bmm_out(s, qi, kc.transpose(1, 2));
  const int64_t rows = s.size(1);
  if (c.diagonal) s.narrow(2, c.size - rows, rows).add_(mask.narrow(0, 0, rows).narrow(1, 0, rows));
}

struct Forward {
  at::Tensor out, lse;  // float32 [N, S, d] and [N, S]
};

// q arrives scaled by 1/sqrt(d).
Forward flash_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FlashBlocks& b) {
  const int64_t N = q.size(0), S = q.size(1), d = q.size(2), key = std::max(b.key, b.query);
  const auto f32 = q.options().dtype(at::kFloat);
  const at::Tensor mask = causal_mask(b.query, f32);
  Forward r{at::empty({N, S, d}, f32), at::empty({N, S}, f32)};
  const at::Tensor s_buf = at::empty({N, b.query, key}, f32);
  const at::Tensor acc_buf = at::empty({N, b.query, d}, f32);
  for (int64_t q0 = 0; q0 < S; q0 += b.query) {
    const int64_t rows = std::min(b.query, S - q0);
    const at::Tensor qi = q.narrow(1, q0, rows);
    at::Tensor acc = tile(acc_buf, N, rows, d), m, l;
    for (const KeyChunk& c : key_chunks(q0, rows, key)) {
      at::Tensor s = tile(s_buf, N, rows, c.size);
      scores(s, qi, k.narrow(1, c.begin, c.size), mask, c);
      const at::Tensor vc = v.narrow(1, c.begin, c.size);
      if (!m.defined()) {  // the first chunk: a plain softmax's numerator
        m = std::get<0>(s.max(-1));
        s.sub_(m.unsqueeze(-1)).exp_();
        l = s.sum(-1);
        at::bmm_out(acc, s, vc);
        continue;
      }
      // Online softmax: rescale what the earlier chunks summed to the new running maximum.
      const at::Tensor m_new = at::maximum(m, std::get<0>(s.max(-1)));
      s.sub_(m_new.unsqueeze(-1)).exp_();
      const at::Tensor alpha = (m - m_new).exp_();
      l.mul_(alpha).add_(s.sum(-1));
      acc.mul_(alpha.unsqueeze(-1)).baddbmm_(s, vc);
      m = m_new;
    }
    r.out.narrow(1, q0, rows).copy_(acc.div_(l.unsqueeze(-1)));
    r.lse.narrow(1, q0, rows).copy_(m.add_(l.log_()));
  }
  return r;
}

struct Gradients {
  at::Tensor dq, dk, dv;  // float32 [N, S, d]
};

// q arrives scaled by 1/sqrt(d): dk comes out right, dq as the gradient of the scaled queries.
Gradients flash_backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Forward& f,
                         const at::Tensor& dout, const FlashBlocks& b) {
  const int64_t N = q.size(0), S = q.size(1), d = q.size(2), key = std::max(b.key, b.query);
  const auto f32 = q.options().dtype(at::kFloat);
  const at::Tensor mask = causal_mask(b.query, f32);
  // D_i = sum_j P_ij dP_ij = dO_i . O_i, the softmax backward's row term, without P.
  const at::Tensor D = (dout * f.out).sum(-1);
  Gradients g{at::empty({N, S, d}, f32), at::zeros({N, S, d}, f32), at::zeros({N, S, d}, f32)};
  const at::Tensor p_buf = at::empty({N, b.query, key}, f32), dp_buf = at::empty({N, b.query, key}, f32);
  for (int64_t q0 = 0; q0 < S; q0 += b.query) {
    const int64_t rows = std::min(b.query, S - q0);
    const at::Tensor qi = q.narrow(1, q0, rows), doi = dout.narrow(1, q0, rows);
    const at::Tensor lse_i = f.lse.narrow(1, q0, rows).unsqueeze(-1), D_i = D.narrow(1, q0, rows).unsqueeze(-1);
    at::Tensor dqi = g.dq.narrow(1, q0, rows).zero_();
    for (const KeyChunk& c : key_chunks(q0, rows, key)) {
      const at::Tensor kc = k.narrow(1, c.begin, c.size), vc = v.narrow(1, c.begin, c.size);
      at::Tensor p = tile(p_buf, N, rows, c.size);
      scores(p, qi, kc, mask, c);
      p.sub_(lse_i).exp_();
      g.dv.narrow(1, c.begin, c.size).baddbmm_(p.transpose(1, 2), doi);
      at::Tensor ds = tile(dp_buf, N, rows, c.size);
      at::bmm_out(ds, doi, vc.transpose(1, 2));
      ds.sub_(D_i).mul_(p);  // dS = P * (dP - D)
      dqi.baddbmm_(ds, kc);
      g.dk.narrow(1, c.begin, c.size).baddbmm_(ds.transpose(1, 2), qi);
    }
  }
  return g;
}

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

double softmax_scale(const at::Tensor& q) { return 1.0 / std::sqrt(static_cast<double>(q.size(-1))); }

// One pass that both converts and scales, so the scores need no pass of their own.
at::Tensor scaled_f32(const at::Tensor& q) { return at::mul(q.to(at::kFloat), softmax_scale(q)).contiguous(); }

class FlashAttention : public torch::autograd::Function<FlashAttention> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, int64_t query_block, int64_t key_block) {
    const FlashBlocks b{query_block, key_block};
    Forward f = flash_forward(scaled_f32(q), f32(k), f32(v), b);
    ctx->save_for_backward({q, k, v, f.out, f.lse});
    ctx->saved_data["query_block"] = query_block;
    ctx->saved_data["key_block"] = key_block;
    return f.out.to(q.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const FlashBlocks b{ctx->saved_data["query_block"].toInt(), ctx->saved_data["key_block"].toInt()};
    const Gradients g = flash_backward(scaled_f32(saved[0]), f32(saved[1]), f32(saved[2]),
                                       Forward{saved[3], saved[4]}, f32(grads[0]), b);
    // Through the scaled queries: dq = scale * dS k, and dk = dS^T (scale * q) came out scaled already.
    return {g.dq.mul_(softmax_scale(saved[0])).to(saved[0].scalar_type()), g.dk.to(saved[1].scalar_type()),
            g.dv.to(saved[2].scalar_type()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, FlashBlocks blocks) {
  MOE_CHECK(q.dim() == 3 && q.sizes() == k.sizes() && q.sizes() == v.sizes(),
            "attention: q, k and v must be [N, S, head_dim] alike, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  MOE_CHECK(blocks.query > 0 && blocks.key > 0, "attention: block sizes must be positive, got ", blocks.query, " and ",
            blocks.key);
  return FlashAttention::apply(q, k, v, blocks.query, blocks.key);
}

}  // namespace moe
