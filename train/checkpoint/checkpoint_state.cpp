#include "train/checkpoint/checkpoint_state.h"

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

}  // namespace moe
