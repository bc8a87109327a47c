#pragma once
// Wall time per phase of an MoE layer, for the benchmark: a layer given a PhaseTimes adds each phase's
// milliseconds to it; without one, timing costs nothing.
#include <chrono>

namespace moe {

struct PhaseTimes {
  double route = 0, permute = 0, dispatch = 0, experts = 0, combine = 0, unpermute = 0;
};

class ScopedPhase {
 public:
  // Adds the scope's wall time to times->*phase; does nothing when times is null.
  ScopedPhase(PhaseTimes* times, double PhaseTimes::*phase) : slot_(times ? &(times->*phase) : nullptr) {
    if (slot_) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedPhase() {
    if (slot_) slot_[0] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  double* slot_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moe
