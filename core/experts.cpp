#include "core/experts.h"

#include <torch/autograd.h>

#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "core/fused_kernels.h"

namespace moe {
namespace {

// The experts' FFN as one autograd function, run expert by expert: each expert's fc1, activation and
// fc2 back to back on its slice of rows, forward and backward, so that the activation's passes meet
// data the GEMM beside them has just written (an expert's [rows, ffn] slice, a few MB) instead of
// sweeping the whole [N, ffn] buffer through memory between one grouped GEMM and the next. Outputs are
// written in place with mm_out: no per-expert temporaries are concatenated. The backward's [rows, ffn]
// scratch is sized for the largest expert and reused by each.
class ExpertFFN : public torch::autograd::Function<ExpertFFN> {
 public:
  // w3: SwiGLU's up projection; none for GELU experts.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                            const c10::optional<at::Tensor>& up, const at::Tensor& w2, std::vector<int64_t> rows) {
    const at::Tensor w3 = up.value_or(at::Tensor());
    const bool swiglu = w3.defined();
    const int64_t N = x.size(0), F = w1.size(2);
    at::Tensor h1 = at::empty({N, F}, x.options()), h = at::empty({N, F}, x.options());
    at::Tensor h3 = swiglu ? at::empty({N, F}, x.options()) : at::Tensor();
    at::Tensor y = at::empty({N, w2.size(2)}, x.options());
    int64_t offset = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      const int64_t n = rows[e];
      if (n > 0) {
        const at::Tensor xe = x.narrow(0, offset, n);
        at::Tensor h1e = h1.narrow(0, offset, n), he = h.narrow(0, offset, n), ye = y.narrow(0, offset, n);
        at::mm_out(h1e, xe, w1[e]);
        if (swiglu) {
          at::Tensor h3e = h3.narrow(0, offset, n);
          at::mm_out(h3e, xe, w3[e]);
          swiglu_out(he, h1e, h3e);
        } else {
          gelu_out(he, h1e);  // h1e becomes the slope, on the CPU
        }
        at::mm_out(ye, he, w2[e]);
      }
      offset += n;
    }
    ctx->save_for_backward({x, w1, w3, w2, h1, h3, h});  // h1: GELU's slope, where gelu_out left it
    ctx->saved_data["rows"] = rows;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w1 = saved[1], &w3 = saved[2], &w2 = saved[3], &h1 = saved[4], &h3 = saved[5],
                     &h = saved[6];
    const bool swiglu = w3.defined();
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const at::Tensor dy = grads[0].contiguous();
    const bool want_dx = ctx->needs_input_grad(0), want_dw = ctx->needs_input_grad(1);
    at::Tensor dx = want_dx ? at::empty_like(x) : at::Tensor();
    at::Tensor dw1, dw3, dw2;
    if (want_dw) {
      dw1 = at::empty_like(w1);
      dw2 = at::empty_like(w2);
      if (swiglu) dw3 = at::empty_like(w3);
    }
    const int64_t most = rows.empty() ? 0 : *std::max_element(rows.begin(), rows.end());
    const at::Tensor dh_buf = at::empty({most, h.size(1)}, h.options());
    const at::Tensor dh1_buf = swiglu ? at::empty_like(dh_buf) : at::Tensor(), dh3_buf = swiglu ? at::empty_like(dh_buf) : at::Tensor();
    int64_t offset = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      const int64_t n = rows[e];
      if (n == 0) {
        if (want_dw) {
          for (at::Tensor* dw : {&dw1, &dw2, &dw3}) {
            if (dw->defined()) (*dw)[e].zero_();
          }
        }
        continue;
      }
      const at::Tensor xe = x.narrow(0, offset, n), dye = dy.narrow(0, offset, n), h1e = h1.narrow(0, offset, n);
      at::Tensor dh = dh_buf.narrow(0, 0, n), dh1 = dh, dh3;
      at::mm_out(dh, dye, w2[e].t());
      if (swiglu) {
        dh1 = dh1_buf.narrow(0, 0, n);
        dh3 = dh3_buf.narrow(0, 0, n);
        swiglu_backward_out(dh1, dh3, h1e, h3.narrow(0, offset, n), dh);
      } else {
        gelu_backward_(dh1, h1e);
      }
      if (want_dw) {
        at::Tensor dw2e = dw2[e], dw1e = dw1[e];
        at::mm_out(dw2e, h.narrow(0, offset, n).t(), dye);
        at::mm_out(dw1e, xe.t(), dh1);
        if (swiglu) {
          at::Tensor dw3e = dw3[e];
          at::mm_out(dw3e, xe.t(), dh3);
        }
      }
      if (want_dx) {
        at::Tensor dxe = dx.narrow(0, offset, n);
        at::mm_out(dxe, dh1, w1[e].t());
        if (swiglu) dxe.addmm_(dh3, w3[e].t());
      }
      offset += n;
    }
    return {dx, dw1, dw3, dw2, at::Tensor()};
  }
};

}  // namespace

ExpertsImpl::ExpertsImpl(const ExpertsOptions& options) : options_(options) {
  const auto& o = options_;
  MOE_CHECK(o.num_experts > 0 && o.hidden_size > 0 && o.ffn_hidden_size > 0,
            "experts: num_experts (", o.num_experts, "), hidden_size (", o.hidden_size,
            ") and ffn_hidden_size (", o.ffn_hidden_size, ") must be positive");
  const auto init = [&](int64_t a, int64_t b) {
    return at::randn({o.num_experts, a, b}, at::kFloat).mul_(o.init_std);
  };
  w1 = register_parameter("w1", init(o.hidden_size, o.ffn_hidden_size));
  if (o.type == ExpertType::kSwiGLU) w3 = register_parameter("w3", init(o.hidden_size, o.ffn_hidden_size));
  w2 = register_parameter("w2", init(o.ffn_hidden_size, o.hidden_size));
}

void ExpertsImpl::check_counts(const at::Tensor& x_ND, const std::vector<int64_t>& counts) const {
  MOE_CHECK(static_cast<int64_t>(counts.size()) == options_.num_experts, "experts: got ", counts.size(),
            " token counts for ", options_.num_experts, " experts");
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  MOE_CHECK(x_ND.dim() == 2 && x_ND.size(0) == total && x_ND.size(1) == options_.hidden_size,
            "experts: input ", x_ND.sizes(), " does not match ", total, " tokens of hidden size ",
            options_.hidden_size);
}

at::Tensor ExpertsImpl::forward(const at::Tensor& x_ND, const std::vector<int64_t>& counts) {
  check_counts(x_ND, counts);
  return run_experts(x_ND, counts, w1, w3, w2);
}

at::Tensor run_experts(const at::Tensor& x_ND, const std::vector<int64_t>& rows, const at::Tensor& w1,
                       const at::Tensor& w3, const at::Tensor& w2) {
  MOE_CHECK(static_cast<int64_t>(rows.size()) == w1.size(0), "experts: got ", rows.size(), " row counts for ",
            w1.size(0), " experts");
  // Float32 master weights, computed in x's dtype; the casts' backward returns float32 gradients.
  const auto in_x = [&x_ND](const at::Tensor& w) { return w.to(x_ND.scalar_type()); };
  const c10::optional<at::Tensor> up = w3.defined() ? c10::optional<at::Tensor>(in_x(w3)) : c10::nullopt;
  return ExpertFFN::apply(x_ND.contiguous(), in_x(w1), up, in_x(w2), rows);
}

at::Tensor ExpertsImpl::forward_reference(const at::Tensor& x_ND, const std::vector<int64_t>& counts) {
  check_counts(x_ND, counts);
  std::vector<at::Tensor> outputs;
  int64_t offset = 0;
  for (int64_t e = 0; e < options_.num_experts; ++e) {
    const at::Tensor x = x_ND.narrow(0, offset, counts[e]);
    offset += counts[e];
    const at::Tensor h = options_.type == ExpertType::kSwiGLU
                             ? at::silu(at::mm(x, w1[e])) * at::mm(x, w3[e])
                             : at::gelu(at::mm(x, w1[e]));
    outputs.push_back(at::mm(h, w2[e]));
  }
  return at::cat(outputs, 0);
}

}  // namespace moe
