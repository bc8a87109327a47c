#include "train/cli/cli.h"

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "core/check.h"
#include "parallel/parallel_options.h"

#ifndef MOE_VERSION
#define MOE_VERSION "unknown"
#endif

namespace moe {
namespace {
constexpr int64_t kOne = 1, kMaxCount = int64_t{1} << 40;
}  // namespace

int parse_command_line(int argc, char** argv, CommandLine& c) {
  CLI::App app{"moe: train Mixture-of-Experts transformer language models with expert parallelism.\n"
               "Run one process per rank: mpirun -np N moe train CONFIG.yaml"};
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION + " (backends: mpi" +
                                        (nccl_built() ? ", nccl" : "") + ")");
  app.require_subcommand(0, 1);

  CLI::App* train = app.add_subcommand("train", "Train the model a config describes (run under mpirun)");
  train->add_option("config", c.config_path, "The experiment, a YAML file (see docs/config.md)")->required();
  train->add_option("--set", c.sets, "Override a config key: --set train.lr=3e-4 (repeatable)");
  train->add_option("--resume", c.resume, "Continue from a checkpoint: 'latest' (of train.out_dir) or a directory");

  CLI::App* eval = app.add_subcommand("eval", "Loss of a checkpoint on a token file; prints {\"loss\", \"tokens\"}");
  eval->add_option("--checkpoint", c.checkpoint_dir, "Checkpoint directory")->required();
  eval->add_option("--data", c.data_path, "Token file (.bin, the dtype of the checkpoint's config)")->required();
  // Ranges with readable bounds: CLI::PositiveNumber would print the largest double, 309 digits of it.
  eval->add_option("--seq-len", c.seq_len, "Predictions per window, L")->required()->check(CLI::Range(kOne, kMaxCount));
  eval->add_option("--windows", c.windows, "Windows N: window i is tokens [i*L, i*L+L]")
      ->required()
      ->check(CLI::Range(kOne, kMaxCount));
  eval->add_option("--batch", c.eval_batch, "Windows per forward on each rank (the result does not depend on the "
                   "checkpoint's train.micro_batch_size)")->check(CLI::Range(kOne, int64_t{1} << 20));
  eval->add_option("--logits", c.logits_path, "Also write every window's logits, [windows, seq-len, vocab] float32, "
                   "to this safetensors file (must not exist), to compare with another implementation");

  CLI::App* generate = app.add_subcommand("generate", "Continue a prompt with a checkpoint's model (byte-level), "
                                           "sampling token by token with a KV cache");
  generate->add_option("--checkpoint", c.checkpoint_dir, "Checkpoint directory")->required();
  generate->add_option("--prompt", c.prompt, "The text to continue")->required();
  generate->add_option("--max-new-tokens", c.max_new_tokens, "Tokens (bytes) to add")->check(CLI::Range(kOne, kMaxCount));
  generate->add_option("--temperature", c.temperature, "Softmax temperature; 0: greedy")->check(CLI::Range(0.0, 1e6));
  generate->add_option("--top-p", c.top_p, "Nucleus sampling: the most likely tokens up to this probability")
      ->check(CLI::Range(1e-9, 1.0));
  generate->add_option("--seed", c.seed, "Seed of the sampler: the same seed, the same text");

  CLI::App* exp = app.add_subcommand("export", "Write a checkpoint as a Hugging Face Mixtral checkpoint");
  exp->add_option("checkpoint", c.checkpoint_dir, "Checkpoint directory")->required();
  exp->add_option("out", c.out_path, "Output directory (must not exist)")->required();
  exp->add_option("--dtype", c.export_dtype, "Weights dtype")->check(CLI::IsMember({"float32", "bfloat16"}));
  exp->add_option("--max-shard-bytes", c.max_shard_bytes, "Split model.safetensors above this size")
      ->check(CLI::Range(kOne, int64_t{1} << 50));

  CLI::App* imp = app.add_subcommand("import", "Turn a Hugging Face Mixtral checkpoint into a checkpoint to train from");
  imp->add_option("hf_dir", c.hf_dir, "Folder with config.json and model.safetensors (or its index and shards)")
      ->required();
  imp->add_option("out", c.out_path, "Checkpoint directory to write (must not exist)")->required();
  imp->add_option("--ep", c.import_ep, "Write the experts in this many files, as an EP run saves them (any EP loads "
                  "them)")->check(CLI::Range(1, 1 << 20));

  CLI::App* upcycle = app.add_subcommand("upcycle", "Turn a dense checkpoint into an MoE one, every expert a copy of "
                                          "its layer's FFN");
  upcycle->add_option("dense", c.checkpoint_dir, "The dense checkpoint directory")->required();
  upcycle->add_option("config", c.config_path, "The MoE experiment, a YAML file (its model as the dense one's)")
      ->required();
  upcycle->add_option("out", c.out_path, "Checkpoint directory to write (must not exist)")->required();
  upcycle->add_option("--set", c.sets, "Override a config key (repeatable)");

  CLI::App* checkpoint = app.add_subcommand("checkpoint", "Checkpoint tools");
  CLI::App* verify = checkpoint->add_subcommand("verify", "Check every file of a checkpoint against its manifest");
  verify->add_option("dir", c.checkpoint_dir, "Checkpoint directory")->required();
  checkpoint->require_subcommand(1);

  CLI::App* tokenize = app.add_subcommand("tokenize", "Turn text files into a byte-level token file (vocab 256)");
  tokenize->add_option("files", c.files, "Input text files, concatenated in order")->required();
  tokenize->add_option("--out", c.out_path, "The token file to write (.bin)")->required();
  tokenize->add_option("--dtype", c.dtype, "Element type of the token file")->check(CLI::IsMember({"uint16", "uint32"}));

  CLI::App* report = app.add_subcommand("report", "Write one HTML page of one or more runs: losses, speed, routing, "
                                         "expert load, config");
  report->add_option("runs", c.files, "Run directories (train.out_dir), overlaid in order")->required();
  report->add_option("-o,--out", c.out_path, "The page to write (default report.html)");

  CLI::App* plan = app.add_subcommand("plan", "Parameters, per-rank memory and all-to-all traffic of a config");
  plan->add_option("config", c.config_path, "The experiment, a YAML file")->required();
  plan->add_option("--world", c.world_size, "Number of ranks")->required()->check(CLI::Range(1, 1 << 20));
  plan->add_option("--set", c.sets, "Override a config key (repeatable)");
  plan->add_flag("--json", c.json, "Print one JSON object instead of the table");
  plan->add_option("--gpu-memory", c.gpu_memory, "Say whether one rank's memory fits in this much (80GiB, 141GB)")
      ->transform(CLI::AsSizeValue(/*kb_is_1000=*/true))
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 60));
  plan->add_option("--hardware", c.hardware,
                   "Estimate the step time, all-to-all share and MFU on this system (h100-sxm, h200, a100-sxm)");
  plan->add_option("--gemm-efficiency", c.gemm_efficiency,
                   "With --hardware: the fraction of the dense peak the GEMMs reach (default 0.75)")
      ->check(CLI::Range(0.01, 1.0));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  const std::pair<CLI::App*, Command> commands[] = {
      {train, Command::kTrain},       {eval, Command::kEval},         {exp, Command::kExport},   {imp, Command::kImport},
      {upcycle, Command::kUpcycle},
      {verify, Command::kCheckpointVerify}, {tokenize, Command::kTokenize}, {plan, Command::kPlan},
      {report, Command::kReport},     {generate, Command::kGenerate}};
  for (const auto& [sub, command] : commands) {
    if (sub->parsed()) {
      c.command = command;
      return -1;
    }
  }
  std::cout << app.help();
  return 0;
}

bool runs_in_engine(Command command) {
  return command == Command::kTrain || command == Command::kEval || command == Command::kGenerate ||
         command == Command::kExport || command == Command::kImport ||
         command == Command::kUpcycle ||
         command == Command::kCheckpointVerify;
}

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

int exit_code_of(const std::exception& e) {
  const auto* error = dynamic_cast<const Error*>(&e);
  return error && error->bad_input() ? 2 : 1;
}

}  // namespace moe
