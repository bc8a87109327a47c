// Benchmark: checkpoint save and load of a training state (model, AdamW moments, expert shards), against
// a raw sequential write (write + fsync) and read of the same number of bytes, measured in the same run.
//   build/bench_checkpoint [CONFIG] [--repeats N] [--dir DIR]     (default configs/brown-moe.yaml, EP 1)
// Prints medians, throughputs and the ratios; the last line is one JSON object.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "core/host_memory.h"
#include "core/transformer.h"
#include "parallel/mpi_communicator.h"
#include "train/checkpoint/checkpoint.h"
#include "train/checkpoint/checkpoint_state.h"
#include "train/cli/config.h"
#include "train/optimizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void raw_write(const std::string& path, const std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  MOE_CHECK(fd >= 0 && ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()) &&
                ::fsync(fd) == 0,
            "raw write ", path);
  ::close(fd);
}

void raw_read(const std::string& path, std::vector<char>& bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  MOE_CHECK(fd >= 0 && ::read(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()), "raw read ", path);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();
  CLI::App app{"checkpoint save/load benchmark"};
  std::string config_path = "configs/brown-moe.yaml", dir = "/tmp/moe-bench-checkpoint";
  int repeats = 5;
  app.add_option("config", config_path, "Model config");
  app.add_option("--repeats", repeats, "Timed repetitions");
  app.add_option("--dir", dir, "Scratch directory (removed afterwards)");
  CLI11_PARSE(app, argc, argv);

  moe::MpiSession mpi(&argc, &argv);
  moe::MpiCommunicator world(MPI_COMM_WORLD);
  const moe::Config config = moe::load_config(config_path, {"parallel.expert_parallel_size=1"}, world.size());
  const moe::ParallelDims dims(world.size(), world.rank(), 1, config.model.moe.router.num_experts);
  moe::Transformer model(config.model);
  moe::AdamW adam(model->parameter_records(), {});
  const moe::OptimizerState moments = adam.state();
  for (at::Tensor m : moments[0].second) m.normal_();   // exp_avg
  for (at::Tensor v : moments[1].second) v.uniform_();  // exp_avg_sq: non-negative
  moe::CheckpointState state = moe::make_checkpoint_state(model, &moments);
  state.rng_state = at::zeros({16}, at::kByte);

  std::filesystem::remove_all(dir);
  std::vector<double> save_s, load_s, write_s, read_s;
  int64_t bytes = 0;
  for (int i = 0; i < repeats + 1; ++i) {  // the first round warms up
    state.step = i + 1;
    auto t0 = Clock::now();
    const std::string ckpt = moe::save_checkpoint(dir, state, moe::to_yaml(config), world, dims, 1);
    const double save = seconds_since(t0);
    bytes = 0;
    const nlohmann::json manifest = moe::verify_checkpoint(ckpt);
    for (const auto& f : manifest["files"]) bytes += f["bytes"].get<int64_t>();
    std::vector<char> buffer(static_cast<size_t>(bytes), 1);
    t0 = Clock::now();
    raw_write(dir + "/raw.bin", buffer);
    const double write = seconds_since(t0);
    t0 = Clock::now();
    moe::load_checkpoint(ckpt, state, dims);
    const double load = seconds_since(t0);
    t0 = Clock::now();
    raw_read(dir + "/raw.bin", buffer);
    const double read = seconds_since(t0);
    if (i == 0) continue;
    save_s.push_back(save);
    write_s.push_back(write);
    load_s.push_back(load);
    read_s.push_back(read);
  }
  std::filesystem::remove_all(dir);
  const double mb = static_cast<double>(bytes) / 1e6;
  const double save = median(save_s), write = median(write_s), load = median(load_s), read = median(read_s);
  std::printf("checkpoint of %s: %.1f MB in its files (%d repeats, medians)\n", config_path.c_str(), mb, repeats);
  std::printf("  save %8.3f s  %7.1f MB/s   raw write+fsync %8.3f s  %7.1f MB/s   ratio %.2f\n", save, mb / save,
              write, mb / write, write / save);
  std::printf("  load %8.3f s  %7.1f MB/s   raw read        %8.3f s  %7.1f MB/s   ratio %.2f\n", load, mb / load,
              read, mb / read, read / load);
  std::printf("%s\n", nlohmann::json({{"bytes", bytes}, {"save_s", save}, {"raw_write_s", write}, {"load_s", load},
                                      {"raw_read_s", read}, {"save_ratio", write / save}, {"load_ratio", read / load}})
                          .dump()
                          .c_str());
  return 0;
}
