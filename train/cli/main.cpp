// `moe`: the command line (train/cli/cli.h). Plan and tokenize run here; the commands that need libtorch
// are handed to moe-engine by exec, so this executable starts in milliseconds.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <iostream>
#include <string>

#include "train/cli/cli.h"
#include "train/cli/config.h"
#include "train/cli/hardware.h"
#include "train/cli/plan.h"
#include "train/cli/report.h"
#include "train/cli/tokenizer.h"

namespace {

// Replaces this process by moe-engine from the same directory, keeping the arguments and the
// environment (mpirun's included), so the process mpirun started is the one that trains.
int exec_engine(char** argv) {
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  std::string engine = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string(argv[0]);
  engine = engine.substr(0, engine.find_last_of('/') + 1) + "moe-engine";
  argv[0] = engine.data();
  ::execv(engine.c_str(), argv);
  std::cerr << "moe: cannot run " << engine << ": " << std::strerror(errno) << std::endl;
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moe::CommandLine cl;
  if (const int rc = moe::parse_command_line(argc, argv, cl); rc >= 0) return rc;
  if (moe::runs_in_engine(cl.command)) return exec_engine(argv);
  moe::setup_logging(0);
  try {
    if (cl.command == moe::Command::kTokenize) {
      const int64_t n = moe::tokenize_files(cl.files, cl.out_path, cl.dtype);
      spdlog::info("wrote {} tokens to {}", n, cl.out_path);
    } else if (cl.command == moe::Command::kReport) {
      const std::string out = cl.out_path.empty() ? "report.html" : cl.out_path;
      moe::write_report(cl.files, out);
      spdlog::info("wrote {}", out);
    } else {
      const moe::Config config = moe::load_config(cl.config_path, cl.sets, cl.world_size);
      const moe::Plan plan = moe::make_plan(config, cl.world_size);
      nlohmann::json json = moe::to_json(plan, cl.gpu_memory);
      std::string text = moe::describe(plan, config, cl.world_size, cl.gpu_memory);
      if (!cl.hardware.empty()) {
        const moe::Hardware& hw = moe::find_hardware(cl.hardware);
        const moe::StepEstimate e = moe::estimate_step(config, cl.world_size, plan, hw, cl.gemm_efficiency);
        json["estimate"] = moe::to_json(e, hw, cl.gemm_efficiency);
        text += moe::describe(e, hw, cl.gemm_efficiency, cl.world_size);
      }
      std::cout << (cl.json ? json.dump() + "\n" : text);
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return moe::exit_code_of(e);
  }
  return 0;
}
