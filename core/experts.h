#pragma once
// Experts: E feed-forward networks held as stacked weights, run over a buffer of tokens grouped by
// expert. `forward` runs each expert's contiguous slice in place (one GEMM per projection and non-empty
// expert, no padding, no concatenation, as grouped-GEMM kernels do), the whole FFN one autograd node that
// runs an expert's fc1, activation and fc2 back to back so that the activation meets data still in
// cache; `forward_reference` is the plain per-expert loop of differentiable ops (Megatron's
// SequentialMLP) that the tests hold it to.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <vector>

#include "core/model_options.h"

namespace moe {

struct ExpertsOptions {
  int64_t num_experts = 8;  // experts held by this module (the local ones under expert parallelism)
  int64_t hidden_size = 0;
  int64_t ffn_hidden_size = 0;
  ExpertType type = ExpertType::kSwiGLU;
  double init_std = 0.02;
};

class ExpertsImpl : public torch::nn::Module {
 public:
  explicit ExpertsImpl(const ExpertsOptions& options);

  // x_ND: rows grouped by expert, tokens_per_expert[e] rows for expert e, in order. Returns y_ND.
  at::Tensor forward(const at::Tensor& x_ND, const std::vector<int64_t>& tokens_per_expert);
  at::Tensor forward_reference(const at::Tensor& x_ND, const std::vector<int64_t>& tokens_per_expert);

  const ExpertsOptions& options() const { return options_; }
  at::Tensor w1;  // [E, D, F]
  at::Tensor w3;  // [E, D, F] (SwiGLU only; undefined for GELU)
  at::Tensor w2;  // [E, F, D]

 private:
  void check_counts(const at::Tensor& x_ND, const std::vector<int64_t>& tokens_per_expert) const;
  ExpertsOptions options_;
};
TORCH_MODULE(Experts);

// The experts' FFN on weights given apart from a module (an Experts' own, or copies of other ranks'
// experts: core/shadow_experts.h): w1, w3 (undefined for GELU) and w2 stacked [n, ...] in float32,
// computed in x's dtype, rows[e] rows of x_ND for expert e in order. What ExpertsImpl::forward runs.
at::Tensor run_experts(const at::Tensor& x_ND, const std::vector<int64_t>& rows, const at::Tensor& w1,
                       const at::Tensor& w3, const at::Tensor& w2);

}  // namespace moe
