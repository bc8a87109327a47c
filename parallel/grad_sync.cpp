#include "parallel/grad_sync.h"

#include "core/check.h"

namespace moe {

GradSync::GradSync(const ParameterList& params, Communicator& world, Communicator* edp_group, int64_t bucket_bytes)
    : scale_(1.0 / world.size()) {
  std::vector<at::Tensor> replicated, experts;
  for (const ParameterRecord& p : params) (p.is_expert() ? experts : replicated).push_back(p.tensor);
  add_buckets(replicated, &world, bucket_bytes);
  add_buckets(experts, edp_group, bucket_bytes);
}

void GradSync::add_buckets(const std::vector<at::Tensor>& params, Communicator* comm, int64_t bucket_bytes) {
  std::vector<at::Tensor> pending;
  int64_t pending_bytes = 0;
  const auto flush = [&] {
    if (pending.empty()) return;
    int64_t numel = 0;
    for (const auto& p : pending) numel += p.numel();
    buckets_.push_back({pending, at::empty({numel}, pending.front().options().requires_grad(false)), comm});
    pending.clear();
    pending_bytes = 0;
  };
  for (const auto& p : params) {
    if (!pending.empty() && (p.scalar_type() != pending.front().scalar_type() ||
                             pending_bytes + p.numel() * static_cast<int64_t>(p.element_size()) > bucket_bytes)) {
      flush();
    }
    pending.push_back(p);
    pending_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  flush();
}

void GradSync::sync() {
  at::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    int64_t offset = 0;
    for (auto& p : b.params) {
      at::Tensor slice = b.flat.narrow(0, offset, p.numel());
      if (p.grad().defined()) {
        slice.copy_(p.grad().reshape({-1}));
      } else {
        slice.zero_();
      }
      offset += p.numel();
    }
    if (b.comm && b.comm->size() > 1) b.comm->all_reduce(b.flat, ReduceOp::kSum);
    b.flat.mul_(scale_);
    offset = 0;
    for (auto& p : b.params) {
      const at::Tensor slice = b.flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(slice);
      } else {
        p.mutable_grad() = slice.clone();
      }
      offset += p.numel();
    }
  }
}

}  // namespace moe
