// `moe`: the command line. Library code throws moe::Error; this is the one place that catches, logs
// (with the rank) and turns it into an exit code (2: bad input, 1: anything else). A failure that not
// every rank saw aborts the whole job, so no peer waits forever in a collective.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <exception>
#include <functional>
#include <iostream>

#include <c10/util/Exception.h>

#include "core/check.h"
#include "core/host_memory.h"
#include "parallel/mpi_communicator.h"
#include "train/config.h"
#include "train/data.h"
#include "train/export.h"
#include "train/plan.h"
#include "train/trainer.h"

#ifndef MOE_VERSION
#define MOE_VERSION "unknown"
#endif

namespace {

// Logs go to stderr (stdout is for results such as `plan --json`). Rank 0 prints progress; the other
// ranks only warnings and errors, prefixed with their rank.
void setup_logging(int rank) {
  auto logger = spdlog::stderr_color_mt("moe");
  if (rank == 0) {
    logger->set_pattern("%^[%H:%M:%S %l]%$ %v");
    logger->set_level(spdlog::level::info);
  } else {
    logger->set_pattern("%^[%H:%M:%S %l rank " + std::to_string(rank) + "]%$ %v");
    logger->set_level(spdlog::level::warn);
  }
  spdlog::set_default_logger(logger);
}

// libtorch's errors carry a backtrace of frame addresses: the first line is the message.
std::string message_of(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

// Runs `body` on every rank of an MPI job (it may be one process without mpirun), with the error
// handling of the header comment.
int run_mpi(int* argc, char*** argv, const std::function<int(moe::Communicator&)>& body) {
  moe::MpiSession mpi(argc, argv);
  moe::MpiCommunicator world(MPI_COMM_WORLD);
  setup_logging(world.rank());
  try {
    return body(world);
  } catch (const moe::CollectiveError& e) {
    if (e.reported()) spdlog::error("{}", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const moe::Error*>(&e);
    const int code = error && error->bad_input() ? 2 : 1;
    spdlog::error("{}", message_of(e));
    spdlog::default_logger()->flush();
    if (world.size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
    return code;
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();
  CLI::App app{"moe: train Mixture-of-Experts transformer language models with expert parallelism.\n"
               "Run one process per rank: mpirun -np N moe train CONFIG.yaml"};
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION);
  app.require_subcommand(0, 1);

  std::string config_path, out_path, dtype = "uint16", resume, checkpoint_dir, data_path, export_dtype = "float32";
  std::vector<std::string> sets, files;
  int world_size = 1;
  int64_t seq_len = 0, windows = 0, max_shard_bytes = 5'000'000'000LL;
  bool json = false;

  CLI::App* train_cmd = app.add_subcommand("train", "Train the model a config describes (run under mpirun)");
  train_cmd->add_option("config", config_path, "The experiment, a YAML file (see docs/config.md)")->required();
  train_cmd->add_option("--set", sets, "Override a config key: --set train.lr=3e-4 (repeatable)");
  train_cmd->add_option("--resume", resume, "Continue from a checkpoint: 'latest' (of train.out_dir) or a directory");

  CLI::App* eval_cmd = app.add_subcommand("eval", "Loss of a checkpoint on a token file; prints {\"loss\", \"tokens\"}");
  eval_cmd->add_option("--checkpoint", checkpoint_dir, "Checkpoint directory")->required();
  eval_cmd->add_option("--data", data_path, "Token file (.bin, the dtype of the checkpoint's config)")->required();
  eval_cmd->add_option("--seq-len", seq_len, "Predictions per window, L")->required();
  eval_cmd->add_option("--windows", windows, "Windows N: window i is tokens [i*L, i*L+L]")->required();

  CLI::App* export_cmd = app.add_subcommand("export", "Write a checkpoint as a Hugging Face Mixtral checkpoint");
  export_cmd->add_option("checkpoint", checkpoint_dir, "Checkpoint directory")->required();
  export_cmd->add_option("out", out_path, "Output directory (must not exist)")->required();
  export_cmd->add_option("--dtype", export_dtype, "Weights dtype")->check(CLI::IsMember({"float32", "bfloat16"}));
  export_cmd->add_option("--max-shard-bytes", max_shard_bytes, "Split model.safetensors above this size")
      ->check(CLI::PositiveNumber);

  CLI::App* checkpoint_cmd = app.add_subcommand("checkpoint", "Checkpoint tools");
  CLI::App* verify_cmd = checkpoint_cmd->add_subcommand("verify", "Check every file of a checkpoint against its manifest");
  verify_cmd->add_option("dir", checkpoint_dir, "Checkpoint directory")->required();
  checkpoint_cmd->require_subcommand(1);

  CLI::App* tokenize_cmd = app.add_subcommand("tokenize", "Turn text files into a byte-level token file (vocab 256)");
  tokenize_cmd->add_option("files", files, "Input text files, concatenated in order")->required();
  tokenize_cmd->add_option("--out", out_path, "The token file to write (.bin)")->required();
  tokenize_cmd->add_option("--dtype", dtype, "Element type of the token file")->check(CLI::IsMember({"uint16", "uint32"}));

  CLI::App* plan_cmd = app.add_subcommand("plan", "Parameters, per-rank memory and all-to-all traffic of a config");
  plan_cmd->add_option("config", config_path, "The experiment, a YAML file")->required();
  plan_cmd->add_option("--world", world_size, "Number of ranks")->required()->check(CLI::PositiveNumber);
  plan_cmd->add_option("--set", sets, "Override a config key (repeatable)");
  plan_cmd->add_flag("--json", json, "Print one JSON object instead of the table");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (train_cmd->parsed()) {
    return run_mpi(&argc, &argv, [&](moe::Communicator& world) {
      moe::Config config;
      moe::all_ranks_succeed(world, [&] { config = moe::load_config(config_path, sets, world.size()); });
      moe::Trainer trainer(config, world, resume);
      const double loss = trainer.train();
      if (trainer.stopped_by() != 0) return 128 + trainer.stopped_by();
      spdlog::info("done: validation loss {:.4f} (nats per token) after {} steps; run directory {}", loss,
                   config.train.steps, config.train.out_dir);
      return 0;
    });
  }
  if (eval_cmd->parsed()) {
    return run_mpi(&argc, &argv, [&](moe::Communicator& world) {
      const moe::EvalResult r = moe::evaluate_checkpoint(checkpoint_dir, data_path, seq_len, windows, world);
      if (world.rank() == 0) {
        std::cout << nlohmann::json({{"loss", r.loss}, {"tokens", r.tokens}}).dump() << std::endl;
      }
      return 0;
    });
  }
  setup_logging(0);
  try {
    if (export_cmd->parsed()) {
      moe::ExportOptions options;
      options.dtype = export_dtype;
      options.max_shard_bytes = max_shard_bytes;
      moe::export_huggingface(checkpoint_dir, out_path, options);
    } else if (verify_cmd->parsed()) {
      const nlohmann::json manifest = moe::verify_checkpoint(checkpoint_dir);
      std::cout << checkpoint_dir << ": ok (step " << manifest["step"] << ", " << manifest["files"].size()
                << " files, saved on " << manifest["world_size"] << " ranks with expert parallel "
                << manifest["expert_parallel_size"] << ")" << std::endl;
    } else if (tokenize_cmd->parsed()) {
      const int64_t n = moe::tokenize_files(files, out_path, dtype);
      spdlog::info("wrote {} tokens to {}", n, out_path);
    } else if (plan_cmd->parsed()) {
      const moe::Config config = moe::load_config(config_path, sets, world_size);
      const moe::Plan plan = moe::make_plan(config, world_size);
      std::cout << (json ? moe::to_json(plan).dump() + "\n" : moe::describe(plan, config, world_size));
    } else {
      std::cout << app.help();
    }
  } catch (const moe::Error& e) {
    spdlog::error("{}", e.what());
    return e.bad_input() ? 2 : 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", message_of(e));
    return 1;
  }
  return 0;
}
