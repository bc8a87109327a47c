// Benchmark: the training engine's peak host memory per rank against what `moe plan` predicts for the
// same config. Each rank measures its resident set before building anything (MPI and libtorch already
// initialised: the baseline), then builds the Trainer and runs --steps training steps; its high-water
// resident set (VmHWM) minus the baseline is what training took. The largest over the ranks is compared
// with the plan's total per rank.
//   mpirun -np N build/bench_memory CONFIG [--set KEY=VALUE]... [--steps S]
// Prints one JSON object (rank 0): measured and planned bytes, their ratio, and the plan's parts.
// scripts/bench_memory.sh runs it over {float32, bfloat16} x {none, full} x {sharded, not}.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "core/host_memory.h"
#include "parallel/mpi_communicator.h"
#include "train/cli/config.h"
#include "train/cli/plan.h"
#include "train/trainer.h"

namespace {

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string key;
  int64_t kb = -1;
  while (in >> key) {
    if (key == field + ":") {
      in >> kb;
      break;
    }
    in.ignore(1 << 20, '\n');
  }
  MOE_CHECK(kb >= 0, "bench_memory: no ", field, " in /proc/self/status");
  return kb * 1024;
}

}  // namespace

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();  // as moe-engine, MOE_HOST_MEMORY included
  CLI::App app{"peak training memory against moe plan"};
  std::string config_path;
  std::vector<std::string> sets;
  int64_t steps = 4;
  app.add_option("config", config_path, "Config")->required();
  app.add_option("--set", sets, "KEY=VALUE overrides, as moe train");
  app.add_option("--steps", steps, "Training steps (the peak is reached by the second)");
  CLI11_PARSE(app, argc, argv);

  moe::MpiSession mpi(&argc, &argv);
  moe::MpiCommunicator world(MPI_COMM_WORLD);
  spdlog::set_level(spdlog::level::warn);
  const moe::Config config = moe::load_config(config_path, sets, world.size());
  at::ones({64, 64}).matmul(at::ones({64, 64})).sum();  // libtorch's threads and allocator in the baseline
  world.barrier();
  const int64_t baseline = status_bytes("VmRSS");
  {
    moe::Trainer trainer(config, world, world);
    for (int64_t s = 1; s <= steps; ++s) trainer.train_step(s);
  }
  at::Tensor used = at::tensor({static_cast<double>(status_bytes("VmHWM") - baseline)}, at::kDouble);
  world.all_reduce(used, moe::ReduceOp::kMax);
  if (world.rank() != 0) return 0;
  const moe::Plan plan = moe::make_plan(config, world.size());
  const double measured = used.item<double>();
  nlohmann::json out = moe::to_json(plan);
  out["config"] = config_path;
  out["world"] = world.size();
  out["dtype"] = moe::enum_name(config.train.dtype);
  out["recompute"] = moe::enum_name(config.train.recompute);
  out["shard_optimizer"] = config.train.shard_optimizer;
  out["baseline_bytes"] = baseline;
  out["measured_bytes"] = measured;
  out["planned_bytes"] = plan.total_bytes();
  out["planned_over_measured"] = static_cast<double>(plan.total_bytes()) / measured;
  std::cout << out.dump() << std::endl;
  return 0;
}
