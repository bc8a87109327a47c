#pragma once
// The experiment config: the typed option structs of every section, loaded from YAML and checked before
// any work. The model's sections (`model`, `moe`) are core's TransformerOptions itself and `parallel` is
// ParallelOptions: no mirror. visit_config_options() names every key once with its field and range;
// docs/config.md documents each with its default. Errors are moe::Error (bad input) naming the file, the
// key and its line: "brown.yaml:12: model.hidden_size: ...".
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/model_options.h"
#include "parallel/parallel_options.h"

namespace moe {

struct DataOptions {
  std::string train_path = "data/brown/train.bin";
  std::string val_path = "data/brown/val.bin";
  std::string dtype = "uint16";  // uint16 | uint32 (train/cli/tokenizer.h)
  int64_t seq_len = 256;
};

// Where a rank's tensors live. auto: its GPU when libtorch has CUDA and a GPU is visible, else the CPU
// (train/device.h picks the GPU: local rank modulo the GPUs visible).
enum class DeviceKind { kAuto, kCpu, kCuda };
inline const EnumNames<DeviceKind>& enum_names(DeviceKind) {
  static const EnumNames<DeviceKind> names = {
      {"auto", DeviceKind::kAuto}, {"cpu", DeviceKind::kCpu}, {"cuda", DeviceKind::kCuda}};
  return names;
}

// What a step whose loss or gradient norm is not finite (NaN, Inf) does: stop the run before anything
// non-finite is saved, or skip its update (train.max_skipped_steps in all, then stop).
// train.dtype: what the forward and backward compute in; parameters and optimizer state stay float32.
enum class TrainDtype { kFloat32, kBFloat16 };
inline const EnumNames<TrainDtype>& enum_names(TrainDtype) {
  static const EnumNames<TrainDtype> names = {{"float32", TrainDtype::kFloat32}, {"bfloat16", TrainDtype::kBFloat16}};
  return names;
}
enum class OnNonFinite { kStop, kSkip };
inline const EnumNames<OnNonFinite>& enum_names(OnNonFinite) {
  static const EnumNames<OnNonFinite> names = {{"stop", OnNonFinite::kStop}, {"skip", OnNonFinite::kSkip}};
  return names;
}

struct TrainOptions {
  DeviceKind device = DeviceKind::kAuto;
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
  Recompute recompute = Recompute::kNone;  // what backward recomputes instead of keeping
  TrainDtype dtype = TrainDtype::kFloat32;
  bool shard_optimizer = false;    // ZeRO-1: AdamW's state split over the data-parallel ranks
  bool overlap_grad_reduce = true;  // unsharded: gradient buckets all-reduced during backward
  double grad_bucket_mb = 32;      // unsharded: MiB of gradients per all-reduce
  bool profile = false;            // per-phase step times in metrics.jsonl
  OnNonFinite on_nonfinite = OnNonFinite::kStop;
  int64_t max_skipped_steps = 10;  // with on_nonfinite skip: the run stops at the next one
};

struct CheckpointOptions {
  int64_t every = 0;      // save every this many steps (and at the end, and on SIGTERM/SIGINT); 0: only those
  int64_t keep_last = 3;  // checkpoints kept; 0: all
};

struct Config {
  TransformerOptions model;  // the `model` and `moe` sections
  ParallelOptions parallel;
  DataOptions data;
  TrainOptions train;
  CheckpointOptions checkpoint;
  std::string source;  // the file it came from

  int64_t accumulation_steps(int world_size) const {
    return train.global_batch_size / (train.micro_batch_size * world_size);
  }
};

// The keys of the job's sections, parallel, data, train and checkpoint, with their fields and ranges.
// Visitors as for visit_model_options, plus text(key, field), seed(key, field) and choice(key, string
// field, names).
template <typename C, typename Visitor>
void visit_job_options(C& c, Visitor& v) {  // C: Config, const or not
  constexpr double kInf = std::numeric_limits<double>::infinity();
  v.integer("parallel.expert_parallel_size", c.parallel.expert_parallel_size, 1);
  v.choice("parallel.backend", c.parallel.backend);
  v.real("parallel.timeout_s", c.parallel.timeout_s, 0, true, kInf);
  v.real("parallel.slow_timeout_s", c.parallel.slow_timeout_s, 0, true, kInf);
  auto& d = c.data;
  v.text("data.train_path", d.train_path);
  v.text("data.val_path", d.val_path);
  v.choice("data.dtype", d.dtype, {"uint16", "uint32"});
  v.integer("data.seq_len", d.seq_len, 1);
  auto& t = c.train;
  v.choice("train.device", t.device);
  v.integer("train.steps", t.steps, 1);
  v.integer("train.micro_batch_size", t.micro_batch_size, 1);
  v.integer("train.global_batch_size", t.global_batch_size, 1);
  v.seed("train.seed", t.seed);
  v.text("train.out_dir", t.out_dir);
  v.integer("train.eval_every", t.eval_every, 0);
  v.integer("train.eval_windows", t.eval_windows, 0);
  v.integer("train.log_every", t.log_every, 1);
  v.real("train.lr", t.lr, 0, false, kInf);
  v.real("train.min_lr", t.min_lr, 0, true, kInf);
  v.integer("train.warmup_steps", t.warmup_steps, 0);
  v.real("train.weight_decay", t.weight_decay, 0, true, kInf);
  v.real("train.beta1", t.beta1, 0, true, 1);
  v.real("train.beta2", t.beta2, 0, true, 1);
  v.real("train.adam_eps", t.adam_eps, 0, false, kInf);
  v.real("train.grad_clip", t.grad_clip, 0, true, kInf);
  v.choice("train.recompute", t.recompute);
  v.choice("train.dtype", t.dtype);
  v.boolean("train.shard_optimizer", t.shard_optimizer);
  v.boolean("train.overlap_grad_reduce", t.overlap_grad_reduce);
  v.real("train.grad_bucket_mb", t.grad_bucket_mb, 0, false, 1 << 20);
  v.boolean("train.profile", t.profile);
  v.choice("train.on_nonfinite", t.on_nonfinite);
  v.integer("train.max_skipped_steps", t.max_skipped_steps, 0);
  v.integer("checkpoint.every", c.checkpoint.every, 0);
  v.integer("checkpoint.keep_last", c.checkpoint.keep_last, 0);
}

// Every key of the config, in file order: the model's, then the job's.
template <typename C, typename Visitor>
void visit_config_options(C& c, Visitor& v) {
  visit_model_options(c.model, v);
  visit_job_options(c, v);
}

// Reads `path`, applies each "key.path=value" override (the value parsed as YAML, so `null`, `1e-3` and
// `true` mean what they do in the file), and checks everything, including what depends on the world
// size (EP dividing it, the global batch divisible by micro-batch x world). world_size 0 skips those.
Config load_config(const std::string& path, const std::vector<std::string>& overrides, int world_size);
// The same from the text of a config; `path` names it in errors.
Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    int world_size);

// The resolved config as YAML, every key present (written to the run directory; loads back as is).
std::string to_yaml(const Config& config);

// Every key with its default, as "section.key: value" lines (docs/config.md is checked against it).
std::vector<std::string> config_keys();

}  // namespace moe
