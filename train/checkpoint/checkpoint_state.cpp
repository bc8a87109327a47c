#include "train/checkpoint/checkpoint_state.h"

#include <ATen/CPUGeneratorImpl.h>

#include "core/check.h"

namespace moe {

std::string expert_tensor_name(const std::string& parameter_name, int64_t global_expert) {
  const size_t dot = parameter_name.rfind('.');
  return parameter_name.substr(0, dot) + "." + std::to_string(global_expert) + parameter_name.substr(dot);
}

CheckpointState make_checkpoint_state(const Transformer& model, const OptimizerState* optimizer) {
  const ParameterList& params = model->parameter_records();
  CheckpointState state;
  // `t` belongs to parameter `p` (the parameter itself or its optimizer state), stored under prefix + name.
  const auto add = [&](const std::string& prefix, const ParameterRecord& p, const at::Tensor& t) {
    if (!p.is_expert()) {
      state.replicated.emplace_back(prefix + p.name, t);
      return;
    }
    for (int64_t e = 0; e < t.size(0); ++e) {
      state.experts.emplace_back(expert_tensor_name(prefix + p.name, p.first_expert + e), t[e]);
    }
  };
  for (const ParameterRecord& p : params) add("", p, p.tensor);
  if (optimizer) {
    for (const auto& [kind, tensors] : *optimizer) {
      MOE_CHECK(tensors.size() == params.size(), "checkpoint state: optimizer state ", kind, " holds ",
                tensors.size(), " tensors for ", params.size(), " parameters");
    }
    for (size_t i = 0; i < params.size(); ++i) {  // per parameter, each kind: the order of the files
      for (const auto& [kind, tensors] : *optimizer) add(kind + "/", params[i], tensors[i]);
    }
  }
  state.with_optimizer = optimizer != nullptr;
  for (const auto& item : model->named_buffers()) state.replicated.emplace_back(item.key(), item.value());
  return state;
}

FreshCheckpoint::FreshCheckpoint(const TransformerOptions& options)
    : model(options), moments{{"exp_avg", {}}, {"exp_avg_sq", {}}} {
  for (const ParameterRecord& p : model->parameter_records()) {
    for (auto& kind : moments) kind.second.push_back(at::zeros_like(p.tensor));
  }
  state = make_checkpoint_state(model, &moments);
  for (const auto* list : {&state.replicated, &state.experts}) {
    for (const auto& [name, t] : *list) live.emplace(name, t);
  }
}

void FreshCheckpoint::write(const std::string& dir, const std::string& config_yaml, int64_t ep,
                               uint64_t seed) const {
  const int64_t E = model->options().moe.router.num_experts;
  MOE_CHECK(ep >= 1 && (E == 0 ? ep == 1 : E % ep == 0), "checkpoint: ", ep, " expert files for ", E, " experts");
  std::vector<NamedTensors> experts(ep);
  for (const auto& item : state.experts) {  // "...experts.G.w1": global expert G
    const std::string& name = item.first;
    const size_t last = name.rfind('.'), before = name.rfind('.', last - 1);
    experts[std::stoll(name.substr(before + 1, last - before - 1)) / (E / ep)].push_back(item);
  }
  std::vector<at::Tensor> rng;
  for (int64_t r = 0; r < ep; ++r) {
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed + 1000003ull * static_cast<uint64_t>(r + 1));
    rng.push_back(g.get_state());
  }
  write_checkpoint(dir, state, experts, rng, config_yaml, E);
}

int64_t FreshCheckpoint::num_parameters() const {
  int64_t n = 0;
  for (const ParameterRecord& p : model->parameter_records()) n += p.tensor.numel();
  return n;
}

}  // namespace moe
