#include "train/checkpoint/checkpoint.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>

#include "core/check.h"

namespace fs = std::filesystem;

namespace moe {

void write_text_file(const std::string& path, const std::string& text) {
  {
    std::ofstream os(path, std::ios::trunc);
    os << text;
    os.close();
    MOE_CHECK(os.good(), "cannot write ", path);
  }
  fsync_path(path);
}

std::string read_text_file(const std::string& path) {
  std::ifstream is(path);
  MOE_INPUT_CHECK(is.good(), "cannot read ", path);
  return {std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>()};
}

void write_file_atomically(const std::string& path, const std::string& text) {
  write_text_file(path + ".tmp", text);
  fs::rename(path + ".tmp", path);
}

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

nlohmann::json file_entry(const std::string& dir, const std::string& name) {
  const std::vector<char> bytes = read_file(dir + "/" + name);
  return {{"path", name}, {"bytes", bytes.size()}, {"crc32", crc32(bytes.data(), bytes.size())}};
}

// Copies each tensor of `from` into the live tensor of the same name, checking shape and dtype.
void copy_into(const NamedTensors& live, const std::map<std::string, at::Tensor>& from, const std::string& file) {
  at::NoGradGuard no_grad;
  for (const auto& [name, t] : live) {
    const auto it = from.find(name);
    MOE_INPUT_CHECK(it != from.end(), file, ": tensor ", name, " is missing (was the checkpoint saved from "
                    "another model? compare its config.yaml)");
    MOE_INPUT_CHECK(it->second.sizes() == t.sizes() && it->second.scalar_type() == t.scalar_type(), file,
                    ": tensor ", name, " is ", it->second.sizes(), " ", it->second.scalar_type(), ", the model has ",
                    t.sizes(), " ", t.scalar_type());
    at::Tensor dst = t;
    dst.copy_(it->second);
  }
}

// Every file of a checkpoint but its experts shards, which are already in `tmp` (bytes and CRC-32 of EP
// rank j's in shards[j]), and the manifest over all of them; the generator state of world rank r is
// rng_by_rank[r].
void write_all_but_experts(const std::string& tmp, const CheckpointState& state,
                           const std::vector<at::Tensor>& rng_by_rank, const std::string& config_yaml,
                           int64_t num_experts, const std::vector<std::pair<int64_t, uint32_t>>& shards) {
  const int64_t world_size = static_cast<int64_t>(rng_by_rank.size());
  NamedTensors rng_tensors;
  for (int64_t r = 0; r < world_size; ++r) rng_tensors.emplace_back("rank." + std::to_string(r), rng_by_rank[r]);
  write_safetensors(tmp + "/rng.safetensors", rng_tensors, {});
  write_safetensors(tmp + "/model.safetensors", state.replicated, {{"format", "moe-checkpoint"}});
  write_text_file(tmp + "/config.yaml", config_yaml);
  write_text_file(tmp + "/trainer.json", nlohmann::json({{"step", state.step},
                                                        {"optimizer_steps", state.optimizer_steps},
                                                        {"train_seconds", state.train_seconds},
                                                        {"world_size", world_size}})
                                             .dump(2) +
                                         "\n");
  nlohmann::json files = nlohmann::json::array();
  for (const char* f : {"model.safetensors", "rng.safetensors", "config.yaml", "trainer.json"}) {
    files.push_back(file_entry(tmp, f));
  }
  for (size_t j = 0; j < shards.size(); ++j) {
    files.push_back({{"path", experts_file(static_cast<int64_t>(j))}, {"bytes", shards[j].first},
                     {"crc32", shards[j].second}});
  }
  nlohmann::json manifest = {{"format", "moe-checkpoint"},
                             {"version", kCheckpointVersion},
                             {"step", state.step},
                             {"world_size", world_size},
                             {"expert_parallel_size", static_cast<int64_t>(shards.size())},
                             {"num_experts", num_experts},
                             {"files", files}};
  seal_manifest(manifest);
  write_text_file(tmp + "/manifest.json", manifest.dump(2) + "\n");
  fsync_path(tmp);
}

// The files of one save into `tmp`, then moved into place and `latest` (collective; see save_checkpoint).
void write_checkpoint_files(const std::string& root, const std::string& tmp, const std::string& final_dir,
                            const std::string& name, const CheckpointState& state, const std::string& config_yaml,
                            Communicator& world, const ParallelDims& dims, int64_t keep_last) {
  all_ranks_succeed(world, [&] {
    if (world.rank() != 0) return;
    fs::create_directories(root);
    fs::remove_all(tmp);  // what a save killed earlier left
    fs::create_directories(tmp);
  });
  // One rank per EP rank (the first of its expert-data-parallel group) writes that shard.
  at::Tensor info = at::zeros({2}, at::kLong);
  all_ranks_succeed(world, [&] {
    if (dims.edp_rank != 0) return;
    uint32_t crc = 0;
    info[0] = write_safetensors(tmp + "/" + experts_file(dims.ep_rank), state.experts, {}, &crc);
    info[1] = static_cast<int64_t>(crc);
  });
  const at::Tensor infos = world.all_gather(info);
  const at::Tensor rng = world.all_gather(state.rng_state.contiguous());
  all_ranks_succeed(world, [&] {
    if (world.rank() != 0) return;
    std::vector<at::Tensor> rng_by_rank;
    for (int r = 0; r < world.size(); ++r) rng_by_rank.push_back(rng[r]);
    std::vector<std::pair<int64_t, uint32_t>> shards;
    for (int64_t j = 0; j < dims.ep_size; ++j) {  // EP rank j is world rank j (EDP rank 0)
      shards.emplace_back(infos[j][0].item<int64_t>(), static_cast<uint32_t>(infos[j][1].item<int64_t>()));
    }
    write_all_but_experts(tmp, state, rng_by_rank, config_yaml, dims.num_experts, shards);
    // Fault injection for the tests: hold the save here, files written but not yet in place.
    if (const char* pause = std::getenv("MOE_CHECKPOINT_PAUSE_SECONDS")) {
      std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(pause)));
    }
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    fsync_path(root);
    write_file_atomically(root + "/latest", name + "\n");
    fsync_path(root);
    if (keep_last > 0) {
      std::vector<std::string> steps;
      for (const auto& e : fs::directory_iterator(root)) {
        const std::string n = e.path().filename().string();
        if (e.is_directory() && n.rfind("step_", 0) == 0) steps.push_back(n);
      }
      std::sort(steps.begin(), steps.end());
      for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) fs::remove_all(root + "/" + steps[i]);
    }
  });
}


}  // namespace

std::string save_checkpoint(const std::string& root, const CheckpointState& state, const std::string& config_yaml,
                            Communicator& world, const ParallelDims& dims, int64_t keep_last) {
  const std::string name = step_name(state.step);
  const std::string tmp = root + "/.tmp-" + name, final_dir = root + "/" + name;
  const auto start = std::chrono::steady_clock::now();
  try {
    write_checkpoint_files(root, tmp, final_dir, name, state, config_yaml, world, dims, keep_last);
  } catch (const CollectiveError&) {
    // Every rank saw the failure (all_ranks_succeed): rank 0 removes the partial directory. The previous
    // checkpoints and `latest` were never touched.
    std::error_code ec;
    if (world.rank() == 0) fs::remove_all(tmp, ec);
    throw;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("checkpoint {} saved in {:.2f}s", final_dir, seconds);
  return final_dir;
}


StagingDirectory::StagingDirectory(const std::string& final_path, const std::string& what) : final_(final_path) {
  MOE_INPUT_CHECK(!fs::exists(final_path), what, ": ", final_path, " already exists; nothing was overwritten");
  const fs::path parent = fs::path(final_path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  path_ = final_path + ".tmp-XXXXXX";
  MOE_INPUT_CHECK(::mkdtemp(path_.data()) != nullptr, what, ": cannot create a directory beside ", final_path, ": ",
                  std::strerror(errno));
}

StagingDirectory::~StagingDirectory() {
  std::error_code ec;
  if (!committed_) fs::remove_all(path_, ec);
}

void StagingDirectory::commit() {
  fsync_path(path_);
  fs::rename(path_, final_);
  committed_ = true;
}

void write_checkpoint(const std::string& dir, const CheckpointState& state,
                      const std::vector<NamedTensors>& experts_by_ep_rank, const std::vector<at::Tensor>& rng_by_rank,
                      const std::string& config_yaml, int64_t num_experts) {
  StagingDirectory tmp(dir, "checkpoint");
  std::vector<std::pair<int64_t, uint32_t>> shards;
  for (size_t j = 0; j < experts_by_ep_rank.size(); ++j) {
    uint32_t crc = 0;
    const int64_t bytes =
        write_safetensors(tmp.path() + "/" + experts_file(static_cast<int64_t>(j)), experts_by_ep_rank[j], {}, &crc);
    shards.emplace_back(bytes, crc);
  }
  write_all_but_experts(tmp.path(), state, rng_by_rank, config_yaml, num_experts, shards);
  tmp.commit();
}

std::string resolve_checkpoint(const std::string& root, const std::string& which) {
  if (which != "latest") return which;
  const std::string latest = root + "/latest";
  MOE_INPUT_CHECK(fs::exists(latest), "no checkpoint to resume: ", latest, " does not exist");
  std::string name = read_text_file(latest);
  name.erase(name.find_last_not_of(" \n\r\t") + 1);
  MOE_INPUT_CHECK(!name.empty() && name.find('/') == std::string::npos, latest, ": does not name a checkpoint "
                  "directory (", name, ")");
  return root + "/" + name;
}

nlohmann::json read_manifest(const std::string& dir) {
  MOE_INPUT_CHECK(fs::is_directory(dir), "checkpoint ", dir, " is not a directory");
  return parse_manifest(read_text_file(dir + "/manifest.json"), dir + "/manifest.json");
}

std::map<std::string, Safetensors> verify_files(const std::string& dir, const nlohmann::json& manifest,
                                                const std::set<std::string>& keep) {
  std::map<std::string, Safetensors> kept;
  for (const auto& f : manifest["files"]) {
    const std::string path = f["path"].get<std::string>(), full = dir + "/" + path;
    MOE_INPUT_CHECK(fs::is_regular_file(full), "checkpoint file ", full, " is missing");
    const std::vector<char> bytes = read_file(full);
    MOE_INPUT_CHECK(static_cast<int64_t>(bytes.size()) == f["bytes"].get<int64_t>(), "checkpoint file ", full,
                    " has ", bytes.size(), " bytes, the manifest says ", f["bytes"].get<int64_t>(),
                    " (truncated or altered)");
    MOE_INPUT_CHECK(crc32(bytes.data(), bytes.size()) == f["crc32"].get<uint32_t>(), "checkpoint file ", full,
                    ": CRC-32 mismatch (altered or corrupted)");
    if (path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0) {
      Safetensors parsed = parse_safetensors(full, bytes);
      if (keep.count(path)) kept[path] = std::move(parsed);
    }
  }
  return kept;
}

nlohmann::json verify_checkpoint(const std::string& dir) {
  nlohmann::json m = read_manifest(dir);
  verify_files(dir, m, {});
  return m;
}

bool load_checkpoint(const std::string& dir, CheckpointState& state, const ParallelDims& dims) {
  const nlohmann::json m = read_manifest(dir);
  const int64_t saved_ep = m["expert_parallel_size"].get<int64_t>(), saved_experts = m["num_experts"].get<int64_t>();
  MOE_INPUT_CHECK(saved_experts == dims.num_experts, dir, ": saved with ", saved_experts,
                  " experts per layer, the model has ", dims.num_experts);
  const bool same_world = m["world_size"].get<int64_t>() == dims.world_size;
  // This rank's experts come from the shards of the saved layout that hold them.
  const bool with_experts = dims.num_local_experts > 0 && !state.experts.empty();
  int64_t first_file = 0, last_file = -1;
  if (with_experts) {
    const int64_t per_file = saved_experts / saved_ep;
    first_file = dims.first_local_expert / per_file;
    last_file = (dims.first_local_expert + dims.num_local_experts - 1) / per_file;
  }
  std::set<std::string> wanted = {"model.safetensors"};
  if (same_world) wanted.insert("rng.safetensors");
  for (int64_t j = first_file; j <= last_file; ++j) wanted.insert(experts_file(j));
  // Every rank checks every file, so all of them accept or refuse the checkpoint together, and reads each once.
  std::map<std::string, Safetensors> files = verify_files(dir, m, wanted);

  const std::string model_file = dir + "/model.safetensors";
  const Safetensors& model = files["model.safetensors"];
  copy_into(state.replicated, model.tensors, model_file);
  for (const auto& [name, t] : model.tensors) {
    if (!state.with_optimizer && name.rfind("exp_avg", 0) == 0) continue;
    MOE_INPUT_CHECK(std::any_of(state.replicated.begin(), state.replicated.end(),
                                [&](const auto& live) { return live.first == name; }),
                    model_file, ": holds ", name, ", which this model does not have");
  }
  if (with_experts) {
    std::map<std::string, at::Tensor> experts;
    std::string names;
    for (int64_t j = first_file; j <= last_file; ++j) {
      experts.merge(files[experts_file(j)].tensors);
      names += (names.empty() ? "" : ", ") + experts_file(j);
    }
    copy_into(state.experts, experts, dir + "/" + names);
  }
  const std::string trainer_path = dir + "/trainer.json";
  const nlohmann::json trainer = nlohmann::json::parse(read_text_file(trainer_path), nullptr, /*allow_exceptions=*/false);
  MOE_INPUT_CHECK(trainer.is_object(), trainer_path, ": not a JSON object");
  const auto count = [&](const char* key) {
    MOE_INPUT_CHECK(trainer.contains(key) && trainer[key].is_number_integer() &&
                        trainer[key].get<int64_t>() >= 0,
                    trainer_path, ": ", key, " must be a non-negative integer");
    return trainer[key].get<int64_t>();
  };
  state.step = count("step");
  MOE_INPUT_CHECK(state.step == m["step"].get<int64_t>(), trainer_path, ": step ", state.step,
                  " is not the manifest's step ", m["step"].get<int64_t>());
  state.optimizer_steps = count("optimizer_steps");
  const nlohmann::json seconds = trainer.value("train_seconds", nlohmann::json(0.0));
  MOE_INPUT_CHECK(seconds.is_number() && std::isfinite(seconds.get<double>()) && seconds.get<double>() >= 0,
                  trainer_path, ": train_seconds must be a non-negative number");
  state.train_seconds = seconds.get<double>();
  if (!same_world) return false;
  const Safetensors& rng = files["rng.safetensors"];
  const auto it = rng.tensors.find("rank." + std::to_string(dims.rank));
  MOE_INPUT_CHECK(it != rng.tensors.end(), dir, "/rng.safetensors: no state for rank ", dims.rank);
  state.rng_state = it->second;
  return true;
}

}  // namespace moe
