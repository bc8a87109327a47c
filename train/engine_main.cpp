// `moe-engine`: the commands of moe that need libtorch (train, eval, export, import, upcycle, checkpoint
// verify); `moe` execs it with the same arguments (train/cli/cli.h). Library code throws moe::Error; this is
// the one place that catches, logs (with the rank) and turns it into an exit code (2: bad input, 1: anything
// else). A failure that not every rank saw aborts the whole job, so no peer waits forever in a collective.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <exception>
#include <functional>
#include <iostream>
#include <memory>

#include <c10/util/Exception.h>

#include "core/check.h"
#include "core/host_memory.h"
#include "parallel/mpi_communicator.h"
#include "parallel/watchdog.h"
#include "train/checkpoint/checkpoint.h"
#include "train/checkpoint/huggingface.h"
#include "train/checkpoint/upcycle.h"
#include "train/device.h"
#include "train/cli/cli.h"
#include "train/cli/config.h"
#include "train/evaluation.h"
#include "train/generation.h"
#include "train/trainer.h"

namespace {

// libtorch's errors carry a backtrace of frame addresses: users get the first line, the message;
// MOE_DEBUG=1 (scripts/moe-launch passes it to every rank) shows the backtrace too.
std::string message_of(const std::exception& e) {
  const char* debug = std::getenv("MOE_DEBUG");
  const bool full = debug != nullptr && std::string(debug) == "1";
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return full ? c10->what() : c10->what_without_backtrace();
  return e.what();
}

// Runs `body` on every rank of an MPI job (it may be one process without mpirun), with the error
// handling of the header comment. Every run starts on MPI's world, which agrees on inputs and errors;
// the collectives of training and evaluation run on the config's backend, from make_communicator.
int run_mpi(int* argc, char*** argv, const std::function<int(moe::MpiCommunicator&)>& body) {
  moe::MpiSession mpi(argc, argv);
  moe::MpiCommunicator world(MPI_COMM_WORLD);
  moe::setup_logging(world.rank());
  try {
    return body(world);
  } catch (const moe::CollectiveError& e) {
    if (e.reported()) spdlog::error("{}", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    const int code = moe::exit_code_of(e);
    spdlog::error("{}", message_of(e));
    spdlog::default_logger()->flush();
    if (world.size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
    return code;
  }
}

}  // namespace

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();
  moe::CommandLine cl;
  if (const int rc = moe::parse_command_line(argc, argv, cl); rc >= 0) return rc;
  switch (cl.command) {
    case moe::Command::kTrain:
      return run_mpi(&argc, &argv, [&](moe::MpiCommunicator& world) {
        const int local_rank = world.local_rank();
        moe::Config config;
        moe::RankPlacement placement;
        moe::all_ranks_succeed(world, [&] {
          config = moe::load_config(cl.config_path, cl.sets, world.size());
          placement = moe::select_placement(config, local_rank);
          moe::check_memory(config, world.size(), placement.device);
        });
        moe::watchdog::start(config.parallel.timeout_s, config.parallel.slow_timeout_s, world.rank());
        spdlog::info("device {}, backend {}", moe::describe(placement.device), moe::enum_name(placement.backend));
        const std::unique_ptr<moe::Communicator> comm = moe::make_communicator(placement, config);
        moe::Trainer trainer(config, *comm, world, placement.device, cl.resume);
        const double loss = trainer.train();
        if (trainer.stopped_by() != 0) return 128 + trainer.stopped_by();
        spdlog::info("done: validation loss {:.4f} (nats per token) after {} steps; run directory {}", loss,
                     config.train.steps, config.train.out_dir);
        return 0;
      });
    case moe::Command::kEval:
      return run_mpi(&argc, &argv, [&](moe::MpiCommunicator& world) {
        const std::string& out = cl.logits_path;
        moe::all_ranks_succeed(world, [&] {
          MOE_INPUT_CHECK(out.empty() || !std::filesystem::exists(out), "eval: --logits ", out,
                          " already exists; nothing was overwritten");
        });
        const moe::EvalResult r = moe::evaluate_checkpoint(cl.checkpoint_dir, cl.data_path, cl.seq_len, cl.windows,
                                                           cl.eval_batch, world, world.local_rank(), !out.empty());
        moe::all_ranks_succeed(world, [&] {  // rank 0 writes; every rank learns whether it could
          if (world.rank() != 0 || out.empty()) return;
          moe::write_safetensors(out + ".tmp", {{"logits", r.logits}}, {{"checkpoint", cl.checkpoint_dir}});
          MOE_INPUT_CHECK(std::rename((out + ".tmp").c_str(), out.c_str()) == 0, "eval: cannot write ", out);
        });
        if (world.rank() == 0) {
          std::cout << nlohmann::json({{"loss", r.loss}, {"tokens", r.tokens}}).dump() << std::endl;
        }
        return 0;
      });
    case moe::Command::kGenerate:
      return run_mpi(&argc, &argv, [&](moe::MpiCommunicator& world) {
        moe::SamplingOptions o;
        o.max_new_tokens = cl.max_new_tokens;
        o.temperature = cl.temperature;
        o.top_p = cl.top_p;
        o.seed = cl.seed;
        const std::string text = moe::generate_from_checkpoint(cl.checkpoint_dir, cl.prompt, o, world, world.local_rank());
        if (world.rank() == 0) std::cout << cl.prompt << text << std::endl;
        return 0;
      });
    default:
      break;
  }
  moe::setup_logging(0);
  try {
    if (cl.command == moe::Command::kExport) {
      moe::ExportOptions options;
      options.dtype = cl.export_dtype;
      options.max_shard_bytes = cl.max_shard_bytes;
      moe::export_huggingface(cl.checkpoint_dir, cl.out_path, options);
    } else if (cl.command == moe::Command::kImport) {
      moe::ImportOptions options;
      options.expert_parallel_size = cl.import_ep;
      moe::import_huggingface(cl.hf_dir, cl.out_path, options);
    } else if (cl.command == moe::Command::kUpcycle) {
      moe::upcycle_checkpoint(cl.checkpoint_dir, moe::load_config(cl.config_path, cl.sets, 0), cl.out_path);
    } else if (cl.command == moe::Command::kCheckpointVerify) {
      const nlohmann::json manifest = moe::verify_checkpoint(cl.checkpoint_dir);
      std::cout << cl.checkpoint_dir << ": ok (step " << manifest["step"] << ", " << manifest["files"].size()
                << " files, saved on " << manifest["world_size"] << " ranks with expert parallel "
                << manifest["expert_parallel_size"] << ")" << std::endl;
    } else {
      std::cerr << "moe-engine runs train, eval, generate, export, import, upcycle and checkpoint; run moe for the "
                   "other commands" << std::endl;
      return 2;
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", message_of(e));
    return moe::exit_code_of(e);
  }
  return 0;
}
