#include "parallel/grad_sync.h"

#include <algorithm>

#include "core/check.h"

namespace moe {

GradSync::GradSync(const ParameterList& params, Communicator& world, Communicator* edp_group, int64_t bucket_bytes)
    : scale_(1.0 / world.size()) {
  std::vector<at::Tensor> replicated, experts;
  for (const ParameterRecord& p : params) (p.is_expert() ? experts : replicated).push_back(p.tensor);
  add_buckets(replicated, &world, bucket_bytes);
  add_buckets(experts, edp_group, bucket_bytes);
  int64_t largest = 0;
  for (const Bucket& b : buckets_) {
    largest = std::max<int64_t>(largest, b.numel * static_cast<int64_t>(b.params.front().element_size()));
  }
  if (!params.empty()) buffer_ = at::empty({largest}, params.front().tensor.options().dtype(at::kByte).requires_grad(false));
}

std::vector<std::vector<at::Tensor>> make_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes) {
  std::vector<std::vector<at::Tensor>> buckets;
  int64_t bytes = 0;
  for (const auto& p : params) {
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    if (buckets.empty() || p.scalar_type() != buckets.back().front().scalar_type() || bytes + size > bucket_bytes) {
      buckets.emplace_back();
      bytes = 0;
    }
    buckets.back().push_back(p);
    bytes += size;
  }
  return buckets;
}

void flatten_grads(const std::vector<at::Tensor>& params, at::Tensor& flat) {
  int64_t offset = 0;
  for (const auto& p : params) {
    at::Tensor slice = flat.narrow(0, offset, p.numel());
    if (p.grad().defined()) {
      slice.copy_(p.grad().reshape({-1}));
    } else {
      slice.zero_();
    }
    offset += p.numel();
  }
}

at::Tensor view_of(at::Tensor& buffer, int64_t numel, at::ScalarType dtype) {
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  if (buffer.numel() < bytes) buffer = at::empty({bytes}, buffer.options());
  return buffer.narrow(0, 0, bytes).view(dtype);
}

void GradSync::add_buckets(const std::vector<at::Tensor>& params, Communicator* comm, int64_t bucket_bytes) {
  for (auto& bucket : make_buckets(params, bucket_bytes)) {
    int64_t numel = 0;
    for (const auto& p : bucket) numel += p.numel();
    buckets_.push_back({std::move(bucket), numel, comm});
  }
}

void GradSync::sync() {
  at::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    at::Tensor flat = view_of(buffer_, b.numel, b.params.front().scalar_type());
    flatten_grads(b.params, flat);
    if (b.comm && b.comm->size() > 1) b.comm->all_reduce(flat, ReduceOp::kSum);
    flat.mul_(scale_);
    int64_t offset = 0;
    for (auto& p : b.params) {
      const at::Tensor slice = flat.narrow(0, offset, p.numel()).view(p.sizes());
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
