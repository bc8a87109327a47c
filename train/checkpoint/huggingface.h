#pragma once
// The Hugging Face Mixtral layout (MixtralForCausalLM), both ways: export of a checkpoint to a
// consolidated Hugging Face checkpoint, and import of one into a checkpoint to train from. The folder:
// config.json and model.safetensors (or model-0000i-of-0000n.safetensors with
// model.safetensors.index.json), with Mixtral's tensor names and nn.Linear's [out, in] layout; one name
// map serves both directions. docs/checkpoint-format.md gives it.
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

struct ImportOptions {
  int64_t expert_parallel_size = 1;  // the layout written: one experts file per EP rank (any layout loads it)
};

// Reads a Mixtral folder (float32, bfloat16 or float16 weights) and writes a checkpoint at step 0 with
// zero AdamW moments to out_dir: config.yaml holds the model of config.json (Mixtral's router: softmax,
// top-k renormalised, dropless) and the defaults of every other section. Refused before anything is
// written, each with one message: a config.json field moe cannot express (named), a tensor missing,
// extra, of another shape or of another dtype, an existing out_dir. Returns the number of tensors read.
int64_t import_huggingface(const std::string& hf_dir, const std::string& out_dir, const ImportOptions& options);

}  // namespace moe
