#pragma once
// ParameterRecord: what the rest of moe knows of one model parameter, handed out once by the model
// (Transformer::parameters) and read by gradient synchronisation, clipping, the optimizer, checkpoints
// and export. It lives on the ground floor because its placement is what the transport needs: a
// replicated parameter is averaged over every rank, an expert shard over its expert-data-parallel group
// (as DeepSpeed marks expert parameters for its own reduction and torchtitan gives each a placement).
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace moe {

enum class Placement {
  kReplicated,     // the same on every rank: attention, norms, embeddings, routers, shared experts
  kExpertSharded,  // dimension 0 indexes this rank's routed experts, global experts first_expert + i
};

struct ParameterRecord {
  std::string name;  // as named_parameters() names it: "layers.3.moe.experts.w1"
  at::Tensor tensor;
  Placement placement = Placement::kReplicated;
  int64_t layer = -1;         // the transformer layer holding it; -1 outside the layers
  int64_t first_expert = -1;  // kExpertSharded: the global id of the expert at index 0
  bool is_expert() const { return placement == Placement::kExpertSharded; }
};

using ParameterList = std::vector<ParameterRecord>;

}  // namespace moe
