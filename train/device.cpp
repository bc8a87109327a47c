#include "train/device.h"

#include <algorithm>
#include <chrono>

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <cstdlib>

#include "core/check.h"
#include "train/cli/plan.h"

namespace moe {

at::Device select_device(DeviceKind requested, int local_rank) {
  const bool built = at::hasCUDA();
  const auto count = static_cast<int>(built ? torch::cuda::device_count() : 0);
  if (requested == DeviceKind::kCpu || (requested == DeviceKind::kAuto && count == 0)) return at::kCPU;
  MOE_INPUT_CHECK(built, "train.device: cuda: this libtorch was built without CUDA (build moe against a CUDA "
                  "libtorch, see docs/gpu.md), or set train.device: cpu");
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  MOE_INPUT_CHECK(count > 0, "train.device: cuda: libtorch has CUDA but sees no GPU (CUDA_VISIBLE_DEVICES='",
                  visible ? visible : "", "'), or set train.device: cpu");
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % count));
  // The current device too, so that libtorch's handles, its caching allocator and NCCL's context are
  // made on this GPU and not on GPU 0.
  c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(device);
  return device;
}

void check_memory(const Config& config, int world_size, const at::Device& device) {
  const Plan plan = make_plan(config, world_size);
  if (device.is_cuda()) return;
  const int64_t needed = plan.param_bytes + plan.grad_bytes + plan.optimizer_bytes;
  const int64_t machine = static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGE_SIZE);
  MOE_INPUT_CHECK(machine <= 0 || needed <= machine, config.source, ": one rank needs ", needed / double(1 << 30),
                  " GiB for its weights, gradients and AdamW state (", plan.params_per_rank,
                  " parameters; see moe plan), this machine has ", machine / double(1 << 30), " GiB");
}

double measure_gemm_peak(const at::Device& device, at::ScalarType dtype, double seconds) {
  at::NoGradGuard no_grad;
  const int64_t n = device.is_cuda() ? 8192 : 1536;
  const int products = device.is_cuda() ? 10 : 1;  // per timing: a GPU's product takes ~1 ms
  const at::TensorOptions options = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor a = at::randn({n, n}, options).to(dtype), b = at::randn({n, n}, options).to(dtype);
  at::Tensor c = at::empty({n, n}, options.dtype(dtype));
  const auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  at::mm_out(c, a, b);  // warm-up: the kernel's first call and the output's first touch
  sync();
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3 || std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < products; ++k) at::mm_out(c, a, b);
    sync();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, products * 2.0 * n * n * n / s);
  }
  return best;
}

Backend select_backend(Backend requested, const at::Device& device) {
  if (requested == Backend::kAuto) return device.is_cuda() && nccl_built() ? Backend::kNccl : Backend::kMpi;
  MOE_INPUT_CHECK(requested != Backend::kNccl || device.is_cuda(), "parallel.backend: nccl needs CUDA tensors, "
                  "but this run's device is ", describe(device), " (train.device); use mpi or auto on the CPU");
  return requested;
}

std::string describe(const at::Device& device) {
  if (!device.is_cuda()) return device.str();
  return device.str() + " (" + std::to_string(torch::cuda::device_count()) + " GPUs visible)";
}

RankPlacement select_placement(const Config& config, int local_rank) {
  RankPlacement p;
  p.device = select_device(config.train.device, local_rank);
  p.backend = select_backend(config.parallel.backend, p.device);
  return p;
}

std::unique_ptr<Communicator> make_communicator(const RankPlacement& placement, const Config& config) {
  return make_communicator(placement.backend, placement.device.is_cuda() ? placement.device.index() : -1,
                           config.parallel.timeout_s);
}

}  // namespace moe
