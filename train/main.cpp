// `moe`: the command line. Library code throws moe::Error; this is the one place that catches, logs and
// turns it into an exit code (2: bad input, 1: anything else).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <exception>

#include "core/check.h"
#include "core/host_memory.h"

#ifndef MOE_VERSION
#define MOE_VERSION "unknown"
#endif

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();
  CLI::App app{"moe: train Mixture-of-Experts transformer language models with expert parallelism.\n"
               "Run one job per rank: mpirun -np N moe train CONFIG.yaml"};
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION);
  app.require_subcommand(0, 1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  try {
    if (app.get_subcommands().empty()) {
      std::cout << app.help();
      return 0;
    }
  } catch (const moe::Error& e) {
    spdlog::error("{}", e.what());
    return e.bad_input() ? 2 : 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
