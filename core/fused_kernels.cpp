#include "core/fused_kernels.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/vector_math.h"

namespace moe {
namespace {

// Elements per task when intra-op threads split an elementwise pass.
constexpr int64_t kElementwiseGrain = 32768;

bool fast_path(const at::Tensor& x) {
  return x.device().is_cpu() && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

// SwiGLU's and GELU's kernels are float32 only: all their tensors on the CPU, contiguous, float32.
bool float32_path(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || !t->is_contiguous()) return false;
  }
  return true;
}

// Calls f with a pointer type tag for x's dtype: float or c10::BFloat16.
template <typename F>
void on_dtype(const at::Tensor& x, F&& f) {
  if (x.scalar_type() == at::kFloat) {
    f(float{});
  } else {
    f(c10::BFloat16{});
  }
}

class RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            double eps) {
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor y = at::empty_like(x), rstd = at::empty({rows}, x.options().dtype(at::kFloat));
    const float* w = weight.data_ptr<float>();
    float* r = rstd.data_ptr<float>();
    on_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* in = x.data_ptr<T>();
      T* out = y.data_ptr<T>();
      for (int64_t row = 0; row < rows; ++row) {
        const T* xr = in + row * D;
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(static_cast<float>(xr[i])) * static_cast<float>(xr[i]);
        const float rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
        r[row] = rs;
        T* yr = out + row * D;
        for (int64_t i = 0; i < D; ++i) yr[i] = static_cast<T>(static_cast<float>(xr[i]) * rs * w[i]);
      }
    });
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  // dx_j = r g_j w_j - x_j r^3 / D * sum_i g_i w_i x_i;  dw_j = sum over rows of g_j x_j r.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor g = grads[0].to(x.scalar_type()).contiguous();
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor dx = at::empty_like(x);
    std::vector<double> dw(D, 0.0);
    const float* w = saved[1].data_ptr<float>();
    const float* r = saved[2].data_ptr<float>();
    on_dtype(x, [&](auto tag) {
      using T = decltype(tag);
      const T* xs = x.data_ptr<T>();
      const T* gs = g.data_ptr<T>();
      T* out = dx.data_ptr<T>();
      for (int64_t row = 0; row < rows; ++row) {
        const T* xr = xs + row * D;
        const T* gr = gs + row * D;
        double dot = 0;
        for (int64_t i = 0; i < D; ++i) dot += static_cast<double>(static_cast<float>(gr[i])) * w[i] * static_cast<float>(xr[i]);
        const float rs = r[row];
        const float c = static_cast<float>(dot * rs * rs * rs / static_cast<double>(D));
        T* dr = out + row * D;
        for (int64_t i = 0; i < D; ++i) {
          const float xi = static_cast<float>(xr[i]), gi = static_cast<float>(gr[i]);
          dr[i] = static_cast<T>(rs * gi * w[i] - xi * c);
          dw[i] += static_cast<double>(gi) * xi * rs;
        }
      }
    });
    at::Tensor dweight = at::empty({D}, saved[1].options());
    float* dws = dweight.data_ptr<float>();
    for (int64_t i = 0; i < D; ++i) dws[i] = static_cast<float>(dw[i]);
    return {dx, dweight, at::Tensor()};
  }
};

// y1 = x1 c - x2 s, y2 = x2 c + x1 s; its transpose (sign of s flipped) is the backward.
template <typename T>
void rotate(const T* in, T* out, const float* cos, const float* sin, int64_t B, int64_t S, int64_t H, int64_t half,
            float sign) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      const float* c = cos + s * half;
      const float* n = sin + s * half;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t o = ((b * S + s) * H + h) * 2 * half;
        const T* x = in + o;
        T* y = out + o;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[half + i]), sn = sign * n[i];
          y[i] = static_cast<T>(x1 * c[i] - x2 * sn);
          y[half + i] = static_cast<T>(x2 * c[i] + x1 * sn);
        }
      }
    }
  }
}

void rotate_tensor(const at::Tensor& in, at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin, float sign) {
  const int64_t half = cos.size(1);
  on_dtype(in, [&](auto tag) {
    using T = decltype(tag);
    rotate(in.data_ptr<T>(), out.data_ptr<T>(), cos.data_ptr<float>(), sin.data_ptr<float>(), in.size(0), in.size(1),
           in.size(2), half, sign);
  });
}

class RotateHalfFunction : public torch::autograd::Function<RotateHalfFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos,
                            const at::Tensor& sin) {
    at::Tensor y = at::empty_like(x);
    rotate_tensor(x, y, cos, sin, 1.0f);
    ctx->save_for_backward({cos, sin});
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor g = grads[0].contiguous();
    at::Tensor dx = at::empty_like(g);
    rotate_tensor(g, dx, saved[0], saved[1], -1.0f);
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void swiglu_out(at::Tensor& h, const at::Tensor& a, const at::Tensor& b) {
  MOE_CHECK(a.sizes() == b.sizes() && h.sizes() == a.sizes(), "swiglu: gate ", a.sizes(), ", up ", b.sizes(),
            " and output ", h.sizes(), " differ in shape");
  if (!float32_path({&h, &a, &b})) {
    at::silu_out(h, a).mul_(b);
    return;
  }
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  at::parallel_for(0, a.numel(), kElementwiseGrain,
                   [&](int64_t begin, int64_t end) { vec::swiglu(ap + begin, bp + begin, hp + begin, end - begin); });
}

void swiglu_backward_out(at::Tensor& da, at::Tensor& db, const at::Tensor& a, const at::Tensor& b, const at::Tensor& dh) {
  MOE_CHECK(a.sizes() == b.sizes() && dh.sizes() == a.sizes() && da.sizes() == a.sizes() && db.sizes() == a.sizes(),
            "swiglu backward: gate ", a.sizes(), ", up ", b.sizes(), " and gradient ", dh.sizes(), " differ in shape");
  if (!float32_path({&da, &db, &a, &b, &dh})) {  // autograd's own ops, roundings and all (bf16 rounds each)
    at::mul_out(db, dh, at::silu(a));
    at::silu_backward_out(da, dh * b, a);
    return;
  }
  const float *ap = a.data_ptr<float>(), *bp = b.data_ptr<float>(), *gp = dh.data_ptr<float>();
  float *dap = da.data_ptr<float>(), *dbp = db.data_ptr<float>();
  at::parallel_for(0, a.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
    vec::swiglu_backward(ap + begin, bp + begin, gp + begin, dap + begin, dbp + begin, end - begin);
  });
}

void gelu_out(at::Tensor& h, at::Tensor& a) {
  MOE_CHECK(h.sizes() == a.sizes(), "gelu: input ", a.sizes(), " and output ", h.sizes(), " differ in shape");
  if (!float32_path({&a})) {
    at::gelu_out(h, a);
    return;
  }
  // Whether a holds the slope afterwards depends on a alone: gelu_backward_ sees only a.
  at::Tensor out = float32_path({&h}) ? h : at::empty_like(a);
  float *ap = a.data_ptr<float>(), *hp = out.data_ptr<float>();
  at::parallel_for(0, a.numel(), kElementwiseGrain,
                   [&](int64_t begin, int64_t end) { vec::gelu(ap + begin, hp + begin, end - begin); });
  if (!out.is_same(h)) h.copy_(out);
}

void gelu_backward_(at::Tensor& dh, const at::Tensor& a) {
  MOE_CHECK(dh.sizes() == a.sizes(), "gelu backward: input ", a.sizes(), " and gradient ", dh.sizes(),
            " differ in shape");
  if (float32_path({&a})) {  // a holds the slope, as gelu_out left it
    dh.mul_(a);
  } else {
    at::gelu_backward_out(dh, dh, a);
  }
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  MOE_CHECK(x.dim() >= 1 && weight.dim() == 1 && x.size(-1) == weight.size(0) && weight.scalar_type() == at::kFloat,
            "rmsnorm: expected [..., ", weight.size(0), "] activations and a float32 weight, got ", x.sizes(), " and ",
            weight.scalar_type());
  if (fast_path(x) && weight.is_contiguous() && weight.device().is_cpu()) return RMSNormFunction::apply(x, weight, eps);
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.square().mean(-1, true) + eps) * weight).to(x.scalar_type());
}

at::Tensor rotate_half(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  MOE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0 && cos.dim() == 2 && cos.size(0) == x.size(1) &&
                cos.size(1) * 2 == x.size(3) && cos.sizes() == sin.sizes(),
            "rope: expected x [B, S, H, head_dim] and angles [S, head_dim / 2], got ", x.sizes(), " and ", cos.sizes());
  if (fast_path(x) && cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous()) {
    return RotateHalfFunction::apply(x, cos, sin);
  }
  const int64_t S = x.size(1), half = cos.size(1);
  const at::Tensor c = cos.view({1, S, 1, half}), s = sin.view({1, S, 1, half});
  const at::Tensor x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, 3).to(x.scalar_type());
}

}  // namespace moe
