#include "core/flash_attention.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/vector_math.h"

// The BLAS that libtorch calls, when it exposes it (Debian's libtorch links the system's, OpenBLAS); null
// where it does not (a libtorch with its BLAS linked in privately), and the tiles then go through ATen.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

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

// The CPU kernel: one head at a time, so that a query block's tiles ([rows, keys] floats, 64 KiB at the
// defaults) stay in cache between the product that makes them and the passes over their rows. Each
// product is one BLAS call on raw pointers: the ATen path's batched products over all heads go through
// ATen's per-matrix loops (a select and a dispatch per head and tile), and its softmax passes each sweep
// every head's tile through memory. Same algorithm and order as above.

// Row-major C[m, n] = alpha op(A) op(B) + beta C, op(A) [m, k] and op(B) [k, n] (A stored [k, m] when
// ta, B [n, k] when tb); BLAS is column-major, so it computes C^T = op(B)^T op(A)^T.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k), la = static_cast<int>(lda),
            lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  sgemm_(tb ? "T" : "N", ta ? "T" : "N", &ni, &mi, &ki, &alpha, B, &lb, A, &la, &beta, C, &lc);
}

// Columns of row i (of `rows`) of a chunk's tile that the causal mask keeps.
int64_t visible(const KeyChunk& c, int64_t rows, int64_t i) { return c.diagonal ? c.size - rows + i + 1 : c.size; }

// A query block's tiles and per-row values: forward's running max m and sum l, backward's D in m.
struct HeadScratch {
  std::vector<float> s, ds, m, l;
  HeadScratch(int64_t rows, int64_t key) : s(rows * key), ds(rows * key), m(rows), l(rows) {}
};

// One head: q (scaled), k, v, out [S, d], lse [S].
void flash_forward_head(const float* q, const float* k, const float* v, float* out, float* lse, int64_t S, int64_t d,
                        int64_t query, int64_t key, HeadScratch& w) {
  for (int64_t q0 = 0; q0 < S; q0 += query) {
    const int64_t rows = std::min(query, S - q0);
    float* acc = out + q0 * d;
    bool first = true;
    for (const KeyChunk& c : key_chunks(q0, rows, key)) {
      float* s = w.s.data();
      gemm(false, true, rows, c.size, d, 1.0f, q + q0 * d, d, k + c.begin * d, d, 0.0f, s, c.size);
      for (int64_t i = 0; i < rows; ++i) {
        float* row = s + i * c.size;
        const int64_t n = visible(c, rows, i);
        const float chunk_max = vec::max(row, n);
        if (first) {
          w.m[i] = chunk_max;
          w.l[i] = vec::exp_shifted(row, n, chunk_max);
        } else {  // online softmax: rescale what the earlier chunks summed to the new running maximum
          const float m_new = std::max(w.m[i], chunk_max);
          const float alpha = std::exp(w.m[i] - m_new);
          w.l[i] = w.l[i] * alpha + vec::exp_shifted(row, n, m_new);
          for (int64_t j = 0; j < d; ++j) acc[i * d + j] *= alpha;
          w.m[i] = m_new;
        }
        std::fill(row + n, row + c.size, 0.0f);
      }
      gemm(false, false, rows, d, c.size, 1.0f, s, c.size, v + c.begin * d, d, first ? 0.0f : 1.0f, acc, d);
      first = false;
    }
    for (int64_t i = 0; i < rows; ++i) {
      const float inv = 1.0f / w.l[i];
      for (int64_t j = 0; j < d; ++j) acc[i * d + j] *= inv;
      lse[q0 + i] = w.m[i] + std::log(w.l[i]);
    }
  }
}

// One head's gradients: dq [S, d] written, dk and dv [S, d] accumulated (zeroed by the caller).
void flash_backward_head(const float* q, const float* k, const float* v, const float* out, const float* lse,
                         const float* dout, float* dq, float* dk, float* dv, int64_t S, int64_t d, int64_t query,
                         int64_t key, HeadScratch& w) {
  for (int64_t q0 = 0; q0 < S; q0 += query) {
    const int64_t rows = std::min(query, S - q0);
    const float *qi = q + q0 * d, *doi = dout + q0 * d;
    for (int64_t i = 0; i < rows; ++i) {  // D_i = dO_i . O_i, kept in w.m
      float dot = 0;
      for (int64_t j = 0; j < d; ++j) dot += doi[i * d + j] * out[(q0 + i) * d + j];
      w.m[i] = dot;
    }
    bool first = true;
    for (const KeyChunk& c : key_chunks(q0, rows, key)) {
      const float *kc = k + c.begin * d, *vc = v + c.begin * d;
      float *p = w.s.data(), *ds = w.ds.data();
      gemm(false, true, rows, c.size, d, 1.0f, qi, d, kc, d, 0.0f, p, c.size);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t n = visible(c, rows, i);
        vec::exp_shifted(p + i * c.size, n, lse[q0 + i]);
        std::fill(p + i * c.size + n, p + (i + 1) * c.size, 0.0f);
      }
      gemm(true, false, c.size, d, rows, 1.0f, p, c.size, doi, d, 1.0f, dv + c.begin * d, d);
      gemm(false, true, rows, c.size, d, 1.0f, doi, d, vc, d, 0.0f, ds, c.size);
      for (int64_t i = 0; i < rows; ++i) {  // dS = P * (dP - D)
        float *dsr = ds + i * c.size;
        const float* pr = p + i * c.size;
        for (int64_t j = 0; j < c.size; ++j) dsr[j] = pr[j] * (dsr[j] - w.m[i]);
      }
      gemm(false, false, rows, d, c.size, 1.0f, ds, c.size, kc, d, first ? 0.0f : 1.0f, dq + q0 * d, d);
      gemm(true, false, c.size, d, rows, 1.0f, ds, c.size, qi, d, 1.0f, dk + c.begin * d, d);
      first = false;
    }
  }
}

bool cpu_kernel(const at::Tensor& q, const FlashBlocks& b) { return q.device().is_cpu() && sgemm_ != nullptr && !b.generic; }

Forward cpu_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const FlashBlocks& b) {
  const int64_t N = q.size(0), S = q.size(1), d = q.size(2), key = std::max(b.key, b.query);
  Forward r{at::empty({N, S, d}, q.options()), at::empty({N, S}, q.options())};
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = r.out.data_ptr<float>(), *lp = r.lse.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    HeadScratch w(b.query, key);
    for (int64_t n = begin; n < end; ++n) {
      flash_forward_head(qp + n * S * d, kp + n * S * d, vp + n * S * d, op + n * S * d, lp + n * S, S, d, b.query,
                         key, w);
    }
  });
  return r;
}

Gradients cpu_backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Forward& f,
                       const at::Tensor& dout, const FlashBlocks& b) {
  const int64_t N = q.size(0), S = q.size(1), d = q.size(2), key = std::max(b.key, b.query);
  Gradients g{at::empty({N, S, d}, q.options()), at::zeros({N, S, d}, q.options()), at::zeros({N, S, d}, q.options())};
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float *op = f.out.data_ptr<float>(), *lp = f.lse.data_ptr<float>(), *gp = dout.data_ptr<float>();
  float *dqp = g.dq.data_ptr<float>(), *dkp = g.dk.data_ptr<float>(), *dvp = g.dv.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    HeadScratch w(b.query, key);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t o = n * S * d;
      flash_backward_head(qp + o, kp + o, vp + o, op + o, lp + n * S, gp + o, dqp + o, dkp + o, dvp + o, S, d,
                          b.query, key, w);
    }
  });
  return g;
}

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

double softmax_scale(const at::Tensor& q) { return 1.0 / std::sqrt(static_cast<double>(q.size(-1))); }

// One pass that both converts and scales, so the scores need no pass of their own.
at::Tensor scaled_f32(const at::Tensor& q) { return at::mul(q.to(at::kFloat), softmax_scale(q)).contiguous(); }

class FlashAttention : public torch::autograd::Function<FlashAttention> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, int64_t query_block, int64_t key_block, bool generic) {
    const FlashBlocks b{query_block, key_block, generic};
    const at::Tensor qs = scaled_f32(q), kf = f32(k), vf = f32(v);
    Forward f = cpu_kernel(q, b) ? cpu_forward(qs, kf, vf, b) : flash_forward(qs, kf, vf, b);
    ctx->save_for_backward({q, k, v, f.out, f.lse});
    ctx->saved_data["query_block"] = query_block;
    ctx->saved_data["key_block"] = key_block;
    ctx->saved_data["generic"] = generic;
    return f.out.to(q.scalar_type());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const FlashBlocks b{ctx->saved_data["query_block"].toInt(), ctx->saved_data["key_block"].toInt(),
                        ctx->saved_data["generic"].toBool()};
    const at::Tensor qs = scaled_f32(saved[0]), kf = f32(saved[1]), vf = f32(saved[2]), dout = f32(grads[0]);
    const Forward f{saved[3], saved[4]};
    const Gradients g = cpu_kernel(qs, b) ? cpu_backward(qs, kf, vf, f, dout, b) : flash_backward(qs, kf, vf, f, dout, b);
    // Through the scaled queries: dq = scale * dS k, and dk = dS^T (scale * q) came out scaled already.
    return {g.dq.mul_(softmax_scale(saved[0])).to(saved[0].scalar_type()), g.dk.to(saved[1].scalar_type()),
            g.dv.to(saved[2].scalar_type()), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, FlashBlocks blocks) {
  MOE_CHECK(q.dim() == 3 && q.sizes() == k.sizes() && q.sizes() == v.sizes(),
            "attention: q, k and v must be [N, S, head_dim] alike, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  MOE_CHECK(blocks.query > 0 && blocks.key > 0, "attention: block sizes must be positive, got ", blocks.query, " and ",
            blocks.key);
  return FlashAttention::apply(q, k, v, blocks.query, blocks.key, blocks.generic);
}

}  // namespace moe
