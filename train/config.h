#pragma once
// The experiment config: typed options per section, loaded from YAML and checked before any work.
// Every key maps 1:1 to a field below; docs/config.md documents each with its default. Errors are
// moe::Error (bad input) naming the file, the key and its line: "brown.yaml:12: model.hidden_size: ...".
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/model_options.h"

namespace moe {

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 256;
  int64_t num_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_kv_heads = 0;  // 0: as many as num_attention_heads (no grouping)
  int64_t ffn_hidden_size = 1024;  // dense SwiGLU FFN width (dense layers and dense models)
  int64_t max_seq_len = 256;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
};

struct MoEConfig {
  int64_t num_experts = 0;  // 0: a dense model, and the other moe keys are ignored
  int64_t top_k = 2;
  int64_t ffn_hidden_size = 512;
  int64_t layer_freq = 1;
  int64_t first_dense_layers = 0;
  int64_t num_shared_experts = 0;
  std::string expert_type = "swiglu";        // swiglu | gelu
  std::string score_function = "softmax";    // softmax | sigmoid
  bool normalize_topk = true;
  std::optional<double> capacity_factor;     // null: dropless
  std::optional<double> eval_capacity_factor;
  std::string drop_policy = "probability";   // probability | position
  double jitter_eps = 0.0;
  double aux_loss_coeff = 0.01;
  std::string aux_loss_scope = "micro_batch";  // micro_batch | global
  double z_loss_coeff = 0.0;
  double bias_update_rate = 0.0;
  bool check_splits = false;
};

struct ParallelConfig {
  int64_t expert_parallel_size = 1;
  std::string backend = "mpi";  // mpi | nccl
};

struct DataConfig {
  std::string train_path = "data/brown/train.bin";
  std::string val_path = "data/brown/val.bin";
  std::string dtype = "uint16";  // uint16 | uint32
  int64_t seq_len = 256;
};

struct TrainConfig {
  int64_t steps = 100;
  int64_t micro_batch_size = 8;    // sequences per rank per forward
  int64_t global_batch_size = 16;  // sequences per optimizer step, over all ranks
  uint64_t seed = 1234;
  std::string out_dir = "runs/default";
  int64_t eval_every = 0;          // 0: only at the end
  int64_t eval_windows = 64;       // validation windows of seq_len per evaluation; 0: the whole file
  int64_t log_every = 10;
  double lr = 1e-3;
  double min_lr = 1e-4;
  int64_t warmup_steps = 10;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;          // 0: no clipping
};

struct CheckpointConfig {
  int64_t every = 0;      // save every this many steps (and at the end, and on SIGTERM/SIGINT); 0: only those
  int64_t keep_last = 3;  // checkpoints kept; 0: all
};

struct Config {
  ModelConfig model;
  MoEConfig moe;
  ParallelConfig parallel;
  DataConfig data;
  TrainConfig train;
  CheckpointConfig checkpoint;
  std::string source;  // the file it came from

  // Derived.
  int64_t accumulation_steps(int world_size) const {
    return train.global_batch_size / (train.micro_batch_size * world_size);
  }
  TransformerOptions transformer_options() const;
};

// Reads `path`, applies each "key.path=value" override (the value parsed as YAML, so `null`, `1e-3` and
// `true` mean what they do in the file), and checks everything, including what depends on the world
// size (EP dividing it, the global batch divisible by micro-batch x world). world_size 0 skips those.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, int world_size);

// The resolved config as YAML, every key present (written to the run directory; loads back as is).
std::string to_yaml(const Config& config);

// Every key with its default, as "section.key: value" lines (docs/config.md is checked against it).
std::vector<std::string> config_keys();

}  // namespace moe
