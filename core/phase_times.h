#pragma once
// Wall time per phase of a training step, the one timer of moe: the MoE layer's phases for the layer
// benchmark, and with train.profile the whole step's (attention and the MoE layer's phases inside the
// forward; backward, gradient reduction, optimizer and data in the trainer). A module given a PhaseTimes
// adds each phase's milliseconds to it; without one, timing costs nothing. Where the device runs ahead of
// the host (a GPU), `synchronize` is called at both ends of every phase, so each is the device's time.
#include <chrono>

namespace moe {

struct PhaseTimes {
  double route = 0, permute = 0, dispatch = 0, experts = 0, combine = 0, unpermute = 0;
  double attention = 0, backward = 0, grad_sync = 0, optimizer = 0, data = 0;
  double exchange = 0;  // inside the MoE layers' all-to-alls of rows (starting and waiting), both directions
  void (*synchronize)() = nullptr;
};

class ScopedPhase {
 public:
  // Adds the scope's wall time to times->*phase; does nothing when times is null.
  ScopedPhase(PhaseTimes* times, double PhaseTimes::*phase)
      : slot_(times ? &(times->*phase) : nullptr), synchronize_(times ? times->synchronize : nullptr) {
    if (!slot_) return;
    if (synchronize_) synchronize_();
    start_ = std::chrono::steady_clock::now();
  }
  ~ScopedPhase() {
    if (!slot_) return;
    if (synchronize_) synchronize_();
    slot_[0] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  double* slot_;
  void (*synchronize_)();
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moe
