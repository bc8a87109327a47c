#pragma once
// Watchdog: ends this rank when one of its collectives has waited past its deadline, so that a peer
// that stopped responding (hung, stopped, cut off) ends the job instead of leaving every rank waiting
// for ever. The model is NCCL's and PyTorch's ProcessGroupNCCL watchdog: a thread beside the work that
// never touches it, only reads when the current collective started. Past the deadline it logs one line
// (rank, host, group, collective, step, seconds waited) and exits with kCollectiveTimeoutExit; mpirun
// then ends the other ranks. The NCCL communicator does the same for its asynchronous work.
#include <cstdint>
#include <string>

namespace moe {

// The exit code of a rank whose collective timed out or failed asynchronously (docs/cli.md).
constexpr int kCollectiveTimeoutExit = 3;

namespace watchdog {

// Starts the watchdog thread (once per process) with the deadline of a collective; 0 turns it off.
// `slow_timeout_s`: the deadline while a Slow scope is alive (the first step, checkpoint saves and
// loads, whose collectives wait on other ranks' file work). `rank`: this rank in MPI's world, for the log.
void start(double timeout_s, double slow_timeout_s, int rank);
// The step the trainer is at, for the log line.
void set_step(int64_t step);

// While alive, this rank is inside collective `op` of group `group` (nested scopes count as the outer
// one). Costs two atomic stores.
class Collective {
 public:
  Collective(const char* op, const std::string* group);
  ~Collective();
  Collective(const Collective&) = delete;
  Collective& operator=(const Collective&) = delete;
};

// While alive, collectives get the slow deadline.
class Slow {
 public:
  Slow();
  ~Slow();
  Slow(const Slow&) = delete;
  Slow& operator=(const Slow&) = delete;
};

}  // namespace watchdog
}  // namespace moe
