#include "core/recompute.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include <optional>

#include "core/check.h"

namespace moe {
namespace {

struct RecomputableHolder : torch::CustomClassHolder {
  explicit RecomputableHolder(Recomputable f) : fn(std::move(f)) {}
  Recomputable fn;
};

// The generators the piece may draw from (router jitter, dropout-like noise): the CPU's, and the GPU's
// of the inputs' device.
std::vector<at::Generator> generators_of(const std::vector<at::Tensor>& inputs) {
  std::vector<at::Generator> g = {at::detail::getDefaultCPUGenerator()};
  for (const at::Tensor& t : inputs) {
    if (t.defined() && t.is_cuda()) {
      g.push_back(at::globalContext().defaultGenerator(t.device()));
      break;
    }
  }
  return g;
}

class Recomputed : public torch::autograd::Function<Recomputed> {
 public:
  // `inputs` as a TensorList: autograd tracks the tensors of a TensorList argument, not of a vector.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::TensorList input_list,
                                                c10::intrusive_ptr<RecomputableHolder> holder) {
    const std::vector<at::Tensor> inputs = input_list.vec();
    std::vector<at::Tensor> states;
    for (at::Generator& g : generators_of(inputs)) states.push_back(g.get_state());
    ctx->save_for_backward(inputs);
    ctx->saved_data["fn"] = at::IValue::make_capsule(holder);
    ctx->saved_data["rng"] = states;
    std::vector<at::Tensor> outputs = holder->fn(inputs, /*replay=*/false);
    // Outputs without gradients (integer tensors) still leave here; autograd must not expect any.
    for (const at::Tensor& o : outputs) {
      if (!at::isFloatingType(o.scalar_type())) ctx->mark_non_differentiable({o});
    }
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto holder = c10::static_intrusive_pointer_cast<RecomputableHolder>(ctx->saved_data["fn"].toCapsule());
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor x = saved[i].detach();
      if (ctx->needs_input_grad(i)) x.requires_grad_(true);
      inputs.push_back(x);
    }
    // The re-run draws what the first run drew; whatever draws come after backward are left as they were.
    std::vector<at::Generator> gens = generators_of(inputs);
    const std::vector<at::Tensor> states = ctx->saved_data["rng"].toTensorVector();
    std::vector<at::Tensor> now;
    for (size_t i = 0; i < gens.size(); ++i) {
      now.push_back(gens[i].get_state());
      gens[i].set_state(states[i]);
    }
    std::vector<at::Tensor> outputs;
    {
      at::AutoGradMode enable(true);
      outputs = holder->fn(inputs, /*replay=*/true);
    }
    for (size_t i = 0; i < gens.size(); ++i) gens[i].set_state(now[i]);
    MOE_CHECK(outputs.size() == grads.size(), "recompute: the re-run gave ", outputs.size(), " outputs, the first run ",
              grads.size());
    std::vector<at::Tensor> roots, root_grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!outputs[i].requires_grad() || !grads[i].defined()) continue;
      roots.push_back(outputs[i]);
      root_grads.push_back(grads[i]);
    }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    torch::autograd::variable_list input_grads;
    for (const at::Tensor& x : inputs) input_grads.push_back(x.requires_grad() ? x.grad() : at::Tensor());
    input_grads.emplace_back();  // the holder
    return input_grads;
  }
};

}  // namespace

std::vector<at::Tensor> recompute(const Recomputable& fn, const std::vector<at::Tensor>& inputs) {
  if (!at::GradMode::is_enabled()) return fn(inputs, /*replay=*/false);
  return Recomputed::apply(at::TensorList(inputs), c10::make_intrusive<RecomputableHolder>(fn));
}

}  // namespace moe
