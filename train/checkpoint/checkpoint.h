#pragma once
// Checkpoints: sharded, atomic, verified, loadable on another number of ranks.
//
// checkpoints/step_XXXXXXXX/
//   manifest.json               format, version, step, the parallel layout, every file with bytes and CRC-32,
//                               sealed by its own CRC-32 (manifest.h)
//   config.yaml                 the resolved config of the run
//   trainer.json                step, optimizer steps, world size
//   model.safetensors           every replicated tensor once: dense parameters, their AdamW moments
//                               ("exp_avg/NAME", "exp_avg_sq/NAME"), the routers' expert bias
//   experts-EEEEE.safetensors   one per EP rank: its experts, keyed by global expert id
//                               ("layers.L.moe.experts.G.w1") with their moments
//   rng.safetensors             every rank's generator state ("rank.R")
// A save writes into checkpoints/.tmp-step_XXXXXXXX, fsyncs every file and the directory, renames it into
// place, then replaces checkpoints/latest (a one-line file naming the directory). docs/checkpoint-format.md.
#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/parallel_dims.h"
#include "train/checkpoint/manifest.h"
#include "train/checkpoint/safetensors.h"

namespace moe {

// What one rank contributes to and takes from a checkpoint: live tensors (views into the model and the
// optimizer), so loading copies straight into them.
struct CheckpointState {
  NamedTensors replicated;  // identical on every rank
  NamedTensors experts;     // this rank's experts, named by global expert id
  bool with_optimizer = true;  // false: only the model (the AdamW moments in the files are skipped)
  int64_t step = 0;
  int64_t optimizer_steps = 0;
  double train_seconds = 0;  // time spent in training steps so far
  at::Tensor rng_state;  // this rank's CPU generator state (uint8)
};

// Collective over `world`. Writes the checkpoint of `state` for `step` under `root` (the run's
// checkpoints/ directory), keeps the newest `keep_last` (0: all), and returns its directory.
std::string save_checkpoint(const std::string& root, const CheckpointState& state, const std::string& config_yaml,
                            Communicator& world, const ParallelDims& dims, int64_t keep_last);

// A checkpoint written by one process (moe import): EP rank j's experts in experts_by_ep_rank[j], the
// generator state of rank r of the run it stands for in rng_by_rank[r]. Into `dir`, which must not exist,
// through a directory beside it that is renamed into place once complete.
void write_checkpoint(const std::string& dir, const CheckpointState& state,
                      const std::vector<NamedTensors>& experts_by_ep_rank, const std::vector<at::Tensor>& rng_by_rank,
                      const std::string& config_yaml, int64_t num_experts);

// A new directory beside `final_path` (final_path.tmp-XXXXXX, never one that is there already), renamed to
// final_path by commit() and removed on destruction otherwise. `what` names the command in errors; a
// final_path that exists is refused.
class StagingDirectory {
 public:
  StagingDirectory(const std::string& final_path, const std::string& what);
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;
  const std::string& path() const { return path_; }
  void commit();  // fsyncs and renames

 private:
  std::string final_, path_;
  bool committed_ = false;
};

// "latest" under `root`, or a directory: the checkpoint directory it names.
std::string resolve_checkpoint(const std::string& root, const std::string& which);

// Verifies the manifest and every file it lists (size, CRC-32, safetensors structure); throws a bad-input
// moe::Error naming the file. Returns the manifest.
nlohmann::json verify_checkpoint(const std::string& dir);
// verify_checkpoint in two halves, for readers that want some files' contents: the manifest of `dir`,
// checked on its own (format, version, layout, the files a checkpoint must list) ...
nlohmann::json read_manifest(const std::string& dir);
// ... then every file it lists, each read once; the safetensors files named in `keep` are returned parsed.
std::map<std::string, Safetensors> verify_files(const std::string& dir, const nlohmann::json& manifest,
                                                const std::set<std::string>& keep);

// Loads `dir` into `state` (whatever world and EP size it was saved with): every tensor must be present
// with the shape and dtype of the live one. Restores the generator state only when the world size is the
// one it was saved with (returns whether it did). Every rank calls it; errors are bad input.
bool load_checkpoint(const std::string& dir, CheckpointState& state, const ParallelDims& dims);

// The whole of a text file; a missing or unreadable one is bad input naming it.
std::string read_text_file(const std::string& path);
// Writes `text` to `path` and fsyncs it.
void write_text_file(const std::string& path, const std::string& text);
// The same through `path`.tmp renamed over `path`: a reader sees the old file or the new one, never half.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace moe
