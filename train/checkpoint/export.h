#pragma once
// Export of a checkpoint to a consolidated Hugging Face Mixtral checkpoint (MixtralForCausalLM):
// config.json and model.safetensors (or model-0000i-of-0000n.safetensors with
// model.safetensors.index.json above max_shard_bytes), with Mixtral's tensor names and nn.Linear's
// [out, in] layout. docs/checkpoint-format.md gives the name map.
#include <cstdint>
#include <string>

namespace moe {

struct ExportOptions {
  std::string dtype = "float32";                // float32 | bfloat16
  int64_t max_shard_bytes = 5'000'000'000LL;    // Hugging Face's default shard size
};

// Refuses (bad input, saying why) a model Mixtral cannot express: dense layers between MoE layers,
// shared experts, sigmoid scores, raw (not renormalised) top-k weights, GELU experts, an aux-loss-free
// expert bias. Writes into out_dir.tmp and renames it into place; an existing out_dir is refused.
// Returns the number of tensors written.
int64_t export_huggingface(const std::string& checkpoint_dir, const std::string& out_dir, const ExportOptions& options);

}  // namespace moe
