#include "parallel/watchdog.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

namespace moe::watchdog {
namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// What the thread reads; the work thread writes it. Only one thread runs collectives (MPI is
// initialised MPI_THREAD_SERIALIZED and autograd's exchanges run one at a time).
std::atomic<int64_t> g_started_ns{0};  // 0: not in a collective
std::atomic<const char*> g_op{nullptr};
std::atomic<const std::string*> g_group{nullptr};
std::atomic<int> g_depth{0};
std::atomic<int> g_slow{0};
std::atomic<int64_t> g_step{0};
std::atomic<double> g_timeout_s{0}, g_slow_timeout_s{0};
std::atomic<int> g_rank{-1};
std::once_flag g_started;

void run() {
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int64_t started = g_started_ns.load(std::memory_order_acquire);
    if (started == 0) continue;
    const double limit = g_slow.load() > 0 ? g_slow_timeout_s.load() : g_timeout_s.load();
    const double waited = static_cast<double>(now_ns() - started) * 1e-9;
    if (limit <= 0 || waited <= limit || g_started_ns.load(std::memory_order_acquire) != started) continue;
    const char* op = g_op.load();
    const std::string* group = g_group.load();
    spdlog::error("watchdog: rank {} on {} has waited {:.0f} s in {} of group {} at step {} (limit {:.0f} s: "
                  "parallel.{}); a peer stopped responding or is gone. Ending the job (exit code {})",
                  g_rank.load(), host, waited, op ? op : "?", group ? *group : "?", g_step.load(), limit,
                  g_slow.load() > 0 ? "slow_timeout_s" : "timeout_s", kCollectiveTimeoutExit);
    spdlog::default_logger()->flush();
    std::_Exit(kCollectiveTimeoutExit);
  }
}

}  // namespace

void start(double timeout_s, double slow_timeout_s, int rank) {
  g_rank = rank;
  g_timeout_s = timeout_s;
  g_slow_timeout_s = slow_timeout_s;
  if (timeout_s <= 0) return;
  std::call_once(g_started, [] { std::thread(run).detach(); });
}

void set_step(int64_t step) { g_step.store(step, std::memory_order_relaxed); }

Collective::Collective(const char* op, const std::string* group) {
  if (g_depth.fetch_add(1, std::memory_order_relaxed) > 0) return;
  g_op.store(op, std::memory_order_relaxed);
  g_group.store(group, std::memory_order_relaxed);
  g_started_ns.store(now_ns(), std::memory_order_release);
}

Collective::~Collective() {
  if (g_depth.fetch_sub(1, std::memory_order_relaxed) == 1) g_started_ns.store(0, std::memory_order_release);
}

Slow::Slow() { g_slow.fetch_add(1); }
Slow::~Slow() { g_slow.fetch_sub(1); }

}  // namespace moe::watchdog
