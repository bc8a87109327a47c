#include "core/experts.h"

#include <torch/autograd.h>

#include <numeric>

#include "core/check.h"
#include "core/fused_kernels.h"

namespace moe {
namespace {

// Grouped GEMM as an autograd function: forward and backward write each group's slice of one
// preallocated output with mm_out, so no per-expert temporaries are concatenated.
class GroupedMatmul : public torch::autograd::Function<GroupedMatmul> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_NI,
                            const at::Tensor& w_EIO, std::vector<int64_t> rows) {
    ctx->save_for_backward({x_NI, w_EIO});
    ctx->saved_data["rows"] = rows;
    at::Tensor y = at::empty({x_NI.size(0), w_EIO.size(2)}, x_NI.options());
    int64_t offset = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      if (rows[e] > 0) {
        at::Tensor out = y.narrow(0, offset, rows[e]);
        at::mm_out(out, x_NI.narrow(0, offset, rows[e]), w_EIO[e]);
      }
      offset += rows[e];
    }
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const std::vector<int64_t> rows = ctx->saved_data["rows"].toIntVector();
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::empty_like(x);
    if (ctx->needs_input_grad(1)) dw = at::empty_like(w);
    int64_t offset = 0;
    for (size_t e = 0; e < rows.size(); ++e) {
      const int64_t n = rows[e];
      if (dw.defined()) {
        at::Tensor out = dw[e];
        if (n > 0) {
          at::mm_out(out, x.narrow(0, offset, n).t(), dy.narrow(0, offset, n));
        } else {
          out.zero_();
        }
      }
      if (dx.defined() && n > 0) {
        at::Tensor out = dx.narrow(0, offset, n);
        at::mm_out(out, dy.narrow(0, offset, n), w[e].t());
      }
      offset += n;
    }
    return {dx, dw, at::Tensor()};
  }
};

}  // namespace

at::Tensor grouped_matmul(const at::Tensor& x_NI, const at::Tensor& w_EIO,
                          const std::vector<int64_t>& rows_per_group) {
  return GroupedMatmul::apply(x_NI.contiguous(), w_EIO, rows_per_group);
}

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
  // Float32 master weights, computed in x's dtype; the casts' backward returns float32 gradients.
  const auto in_x = [&x_ND](const at::Tensor& w) { return w.to(x_ND.scalar_type()); };
  const at::Tensor h1 = grouped_matmul(x_ND, in_x(w1), counts);
  const at::Tensor h = options_.type == ExpertType::kSwiGLU
                           ? swiglu(h1, grouped_matmul(x_ND, in_x(w3), counts))
                           : at::gelu(h1);
  return grouped_matmul(h, in_x(w2), counts);
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
