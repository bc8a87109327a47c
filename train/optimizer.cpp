#include "train/optimizer.h"

#include <cmath>

#include "core/check.h"
#include "train/distributed_optimizer.h"

namespace moe {

AdamW::AdamW(const ParameterList& params, const AdamWOptions& options) : options_(options) {
  for (const ParameterRecord& r : params) params_.push_back(r.tensor);
  for (const at::Tensor& p : params_) {
    exp_avg_.push_back(at::zeros_like(p));
    exp_avg_sq_.push_back(at::zeros_like(p));
    decay_.push_back(p.dim() >= 2);
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  for (size_t i = 0; i < params_.size(); ++i) {
    MOE_CHECK(params_[i].grad().defined(), "adamw: parameter ", i, " has no gradient");
    adamw_update(params_[i], params_[i].grad(), exp_avg_[i], exp_avg_sq_[i], decay_[i], lr, step_, options_);
  }
}

namespace {

// AdamW in one pass over parameter, gradient and moments, where ATen would make eight (two of them
// allocating). Built with -fno-math-errno (CMakeLists.txt) so that the compiler vectorises the sqrt.
void adamw_cpu(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v, int64_t n,
               float decay_mul, float beta1, float beta2, float sqrt_bias2, float eps, float step_size) {
  const float w1 = 1.0f - beta1, w2 = 1.0f - beta2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] + w1 * (gi - m[i]);
    const float vi = v[i] * beta2 + w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay_mul + step_size * mi / (std::sqrt(vi) / sqrt_bias2 + eps);
  }
}

bool cpu_float_contiguous(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

}  // namespace

void adamw_update(at::Tensor p, const at::Tensor& g, at::Tensor exp_avg, at::Tensor exp_avg_sq, bool decay,
                  double lr, int64_t step, const AdamWOptions& options) {
  const double bias1 = 1.0 - std::pow(options.beta1, static_cast<double>(step));
  const double bias2 = 1.0 - std::pow(options.beta2, static_cast<double>(step));
  const bool decays = decay && options.weight_decay > 0;
  if (cpu_float_contiguous(p) && cpu_float_contiguous(g) && cpu_float_contiguous(exp_avg) &&
      cpu_float_contiguous(exp_avg_sq)) {
    adamw_cpu(p.data_ptr<float>(), g.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
              p.numel(), decays ? static_cast<float>(1.0 - lr * options.weight_decay) : 1.0f,
              static_cast<float>(options.beta1), static_cast<float>(options.beta2),
              static_cast<float>(std::sqrt(bias2)), static_cast<float>(options.eps), static_cast<float>(-lr / bias1));
    return;
  }
  if (decays) p.mul_(1.0 - lr * options.weight_decay);
  exp_avg.lerp_(g, 1.0 - options.beta1);
  exp_avg_sq.mul_(options.beta2).addcmul_(g, g, 1.0 - options.beta2);
  const at::Tensor denom = (exp_avg_sq.sqrt() / std::sqrt(bias2)).add_(options.eps);
  p.addcdiv_(exp_avg, denom, -lr / bias1);
}

namespace {

// Every rank's state whole: gradients all-reduced by GradSync, then AdamW on every rank alike.
class ReplicatedOptimizer : public Optimizer {
 public:
  ReplicatedOptimizer(const ParameterList& params, Communicator& world, Communicator* ep_group,
                      Communicator* edp_group, const AdamWOptions& options, const GradReduceOptions& reduce)
      : params_(params),
        ep_group_(ep_group),
        sync_(params, world, edp_group, reduce.bucket_bytes, reduce.overlap),
        adamw_(params, options) {}
  void reduce_in_next_backward() override { sync_.reduce_in_next_backward(); }
  at::Tensor reduce_gradients() override {
    sync_.sync();
    return grad_square_sums(params_, ep_group_);
  }
  void clip(const at::Tensor& norm, double max_norm) override { clip_grads(params_, norm, max_norm); }
  void step(double lr) override { adamw_.step(lr); }
  int64_t steps() const override { return adamw_.steps(); }
  void set_steps(int64_t steps) override { adamw_.set_steps(steps); }
  OptimizerState gather_state() override { return adamw_.state(); }
  void scatter_state(const OptimizerState&) override {}  // gather_state's tensors are the live ones

 private:
  ParameterList params_;
  Communicator* ep_group_;
  GradSync sync_;
  AdamW adamw_;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const ParameterList& params, Communicator& world, Communicator* ep_group,
                                          Communicator* edp_group, const AdamWOptions& options,
                                          const GradReduceOptions& reduce) {
  if (reduce.shard) return std::make_unique<DistributedOptimizer>(params, world, edp_group, options);
  return std::make_unique<ReplicatedOptimizer>(params, world, ep_group, edp_group, options, reduce);
}

double learning_rate(int64_t step, int64_t total_steps, int64_t warmup_steps, double lr, double min_lr) {
  if (step <= warmup_steps) return lr * static_cast<double>(step) / static_cast<double>(warmup_steps);
  if (total_steps <= warmup_steps) return lr;
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * std::min(progress, 1.0)));
}

namespace {

// The sum of squared gradients of the records that are (or are not) expert shards: a float64 scalar on
// their device.
at::Tensor sum_of_squares(const ParameterList& params, bool experts) {
  at::Tensor total = at::zeros({}, at::dtype(at::kDouble).device(params.front().tensor.device()));
  for (const ParameterRecord& p : params) {
    if (p.is_expert() == experts && p.tensor.grad().defined()) {
      total.add_(p.tensor.grad().to(at::kDouble).square().sum());
    }
  }
  return total;
}

}  // namespace

at::Tensor grad_square_sums(const ParameterList& params, Communicator* ep_group) {
  MOE_CHECK(!params.empty(), "grad_square_sums: no parameters");
  at::NoGradGuard no_grad;
  at::Tensor expert_sq = sum_of_squares(params, true).reshape({1});
  if (ep_group && ep_group->size() > 1) ep_group->all_reduce(expert_sq, ReduceOp::kSum);
  return at::cat({sum_of_squares(params, false).reshape({1}), expert_sq});
}

at::Tensor global_grad_norm(const ParameterList& params, Communicator* ep_group) {
  return grad_square_sums(params, ep_group).sum().sqrt();
}

void clip_grads(const ParameterList& params, const at::Tensor& norm, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const ParameterRecord& p : params) {
    if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
  }
  clip_tensors(grads, norm, max_norm);
}

void clip_tensors(const std::vector<at::Tensor>& grads, const at::Tensor& norm, double max_norm) {
  if (max_norm <= 0) return;
  // On the CPU the norm is at hand: no pass over the gradients when nothing is clipped. On a GPU reading
  // it would wait for the step's queued work, so the scale (1 when unclipped) is applied regardless.
  if (norm.is_cpu() && !(norm.item<double>() > max_norm)) return;
  at::NoGradGuard no_grad;
  // min(1, max_norm / (norm + 1e-6)), but exactly 1 unless norm > max_norm (NaN compares false).
  const at::Tensor scale = at::where(norm > max_norm, max_norm / (norm + 1e-6), at::ones_like(norm));
  for (const at::Tensor& g : grads) g.mul_(scale);
}

}  // namespace moe
