#pragma once
// The command line of moe, defined once for its two executables. `moe` itself runs plan, tokenize,
// --help and --version without loading libtorch (whose start-up alone takes about a second); for
// train, eval, export and checkpoint it execs `moe-engine` beside it with the same arguments, before
// MPI starts, so that under mpirun each rank simply becomes an engine process.
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace moe {

enum class Command { kNone, kTrain, kEval, kExport, kImport, kUpcycle, kCheckpointVerify, kTokenize, kPlan, kReport, kGenerate };

struct CommandLine {
  Command command = Command::kNone;
  std::string config_path;       // train, plan, upcycle
  std::vector<std::string> sets;  // train, plan, upcycle: --set key=value
  std::string resume;             // train
  std::string checkpoint_dir;     // eval, export, upcycle (the dense one), checkpoint verify
  std::string hf_dir;             // import
  int64_t import_ep = 1;          // import --ep
  std::string data_path;          // eval
  int64_t seq_len = 0, windows = 0;  // eval
  std::string logits_path;           // eval --logits: where to write every window's logits ("": nowhere)
  int64_t eval_batch = 8;            // eval --batch: windows per forward on each rank
  std::string prompt;                // generate
  int64_t max_new_tokens = 128;      // generate
  double temperature = 1.0, top_p = 1.0;  // generate
  uint64_t seed = 0;                 // generate
  std::string out_path;           // export, import, upcycle, tokenize, report
  std::string export_dtype = "float32";
  int64_t max_shard_bytes = 5'000'000'000LL;
  std::vector<std::string> files;  // tokenize; report: the run directories
  std::string dtype = "uint16";    // tokenize
  int world_size = 1;              // plan
  bool json = false;               // plan
  int64_t gpu_memory = 0;          // plan: bytes one GPU holds, to check the plan against (0: not asked)
  std::string hardware;            // plan: a named system to estimate the step on ("": none)
  double gemm_efficiency = 0.75;   // plan --hardware: the fraction of the dense peak GEMMs reach
};

// Parses argv into `out`. Returns -1 when a command is to run; otherwise the exit code once help, the
// version or a usage error (exit 2) has been printed.
int parse_command_line(int argc, char** argv, CommandLine& out);

// Whether the command needs libtorch, and so runs in moe-engine.
bool runs_in_engine(Command command);

// Logs go to stderr (stdout is for results such as `plan --json`). Rank 0 prints progress; the other
// ranks only warnings and errors, prefixed with their rank.
void setup_logging(int rank);

// The exit code for an error that reached main: 2 for bad input (moe::Error marked so), 1 otherwise.
int exit_code_of(const std::exception& e);

}  // namespace moe
