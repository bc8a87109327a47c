#include "train/distributed_optimizer.h"

#include <algorithm>

#include "core/check.h"
#include "parallel/grad_sync.h"

namespace moe {
namespace {

int size_of(const Communicator* comm) { return comm ? comm->size() : 1; }

}  // namespace

DistributedOptimizer::DistributedOptimizer(const ParameterList& params, Communicator& world, Communicator* edp_group,
                                           const AdamWOptions& options, int64_t bucket_bytes)
    : world_(world), options_(options) {
  MOE_CHECK(!params.empty(), "distributed optimizer: no parameters");
  std::vector<size_t> replicated, experts;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i].tensor;
    // The update writes through flat views of each weight, and the moments are float32 like it.
    MOE_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous(), "distributed optimizer: parameter ",
              params[i].name, " is not a contiguous float32 tensor");
    params_.push_back(p);
    decay_.push_back(p.dim() >= 2);  // as AdamW: no weight decay for norm weights
    (params[i].is_expert() ? experts : replicated).push_back(i);
  }
  add_buckets(replicated, &world, false, bucket_bytes);
  add_buckets(experts, edp_group, true, bucket_bytes);
  int64_t largest = 0;
  for (const Bucket& b : buckets_) largest = std::max(largest, b.numel);
  buffer_ = at::empty({largest * 4}, params_.front().options().dtype(at::kByte).requires_grad(false));
}

void DistributedOptimizer::add_buckets(const std::vector<size_t>& indices, Communicator* comm, bool expert,
                                       int64_t bucket_bytes) {
  std::vector<at::Tensor> tensors;
  for (size_t i : indices) tensors.push_back(params_[i]);
  const int64_t ranks = size_of(comm), rank = comm ? comm->rank() : 0;
  size_t next = 0;
  for (const auto& group : make_buckets(tensors, bucket_bytes)) {
    Bucket b;
    b.comm = comm;
    b.expert = expert;
    for (size_t k = 0; k < group.size(); ++k) b.params.push_back(indices[next++]);
    int64_t numel = 0;
    for (const at::Tensor& t : group) numel += t.numel();
    b.chunk_numel = (numel + ranks - 1) / ranks;
    b.numel = b.chunk_numel * ranks;
    b.chunk_begin = rank * b.chunk_numel;
    const int64_t chunk_end = b.chunk_begin + b.chunk_numel;
    int64_t offset = 0;
    for (size_t i : b.params) {
      const int64_t lo = std::max(offset, b.chunk_begin), hi = std::min(offset + params_[i].numel(), chunk_end);
      if (lo < hi) b.segments.push_back({i, lo - offset, lo - b.chunk_begin, hi - lo});
      offset += params_[i].numel();
    }
    const at::TensorOptions options = params_.front().options().requires_grad(false);
    b.grad = at::zeros({b.chunk_numel}, options);
    b.exp_avg = at::zeros({b.chunk_numel}, options);
    b.exp_avg_sq = at::zeros({b.chunk_numel}, options);
    buckets_.push_back(std::move(b));
  }
}

std::vector<at::Tensor> DistributedOptimizer::bucket_tensors(const Bucket& b) const {
  std::vector<at::Tensor> tensors;
  for (size_t i : b.params) tensors.push_back(params_[i]);
  return tensors;
}

at::Tensor DistributedOptimizer::reduce_gradients() {
  at::NoGradGuard no_grad;
  at::Tensor squares = at::zeros({2}, params_.front().options().dtype(at::kDouble).requires_grad(false));
  for (Bucket& b : buckets_) {
    at::Tensor flat = view_of(buffer_, b.numel, at::kFloat);
    const std::vector<at::Tensor> tensors = bucket_tensors(b);
    flatten_grads(tensors, flat);
    int64_t used = 0;
    for (const at::Tensor& t : tensors) used += t.numel();
    flat.narrow(0, used, b.numel - used).zero_();  // the padding
    if (size_of(b.comm) > 1) {
      b.comm->reduce_scatter(flat, b.grad, ReduceOp::kSum);
    } else {
      b.grad.copy_(flat);
    }
    b.grad.mul_(1.0 / world_.size());
    // Parameter by parameter, as grad_square_sums adds them: on one rank the norm is the unsharded one's bits.
    for (const Segment& s : b.segments) {
      squares.select(0, b.expert ? 1 : 0).add_(b.grad.narrow(0, s.chunk_offset, s.numel).to(at::kDouble).square().sum());
    }
  }
  if (world_.size() > 1) world_.all_reduce(squares, ReduceOp::kSum);
  return squares;
}

void DistributedOptimizer::clip(const at::Tensor& norm, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const Bucket& b : buckets_) grads.push_back(b.grad);
  clip_tensors(grads, norm, max_norm);
}

void DistributedOptimizer::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  for (Bucket& b : buckets_) {
    const bool gather = size_of(b.comm) > 1;  // else the whole bucket was this rank's, updated in place
    at::Tensor flat = view_of(buffer_, b.numel, at::kFloat);
    for (const Segment& s : b.segments) {
      at::Tensor part = params_[s.param].view({-1}).narrow(0, s.param_offset, s.numel);
      adamw_update(part, b.grad.narrow(0, s.chunk_offset, s.numel), b.exp_avg.narrow(0, s.chunk_offset, s.numel),
                   b.exp_avg_sq.narrow(0, s.chunk_offset, s.numel), decay_[s.param], lr, step_, options_);
      if (gather) flat.narrow(0, b.chunk_begin + s.chunk_offset, s.numel).copy_(part);
    }
    if (!gather) continue;
    b.comm->all_gather_in_place(flat);
    int64_t offset = 0;
    for (size_t i : b.params) {
      params_[i].view({-1}).copy_(flat.narrow(0, offset, params_[i].numel()));
      offset += params_[i].numel();
    }
  }
}

OptimizerState DistributedOptimizer::gather_state() {
  at::NoGradGuard no_grad;
  OptimizerState state = {{"exp_avg", {}}, {"exp_avg_sq", {}}};
  for (auto& [kind, tensors] : state) {
    for (const at::Tensor& p : params_) tensors.push_back(at::empty(p.sizes(), at::dtype(at::kFloat)));
  }
  for (Bucket& b : buckets_) {
    for (int k = 0; k < 2; ++k) {
      at::Tensor flat = view_of(buffer_, b.numel, at::kFloat);
      flat.narrow(0, b.chunk_begin, b.chunk_numel).copy_(k == 0 ? b.exp_avg : b.exp_avg_sq);
      if (size_of(b.comm) > 1) b.comm->all_gather_in_place(flat);
      int64_t offset = 0;
      for (size_t i : b.params) {
        state[k].second[i].view({-1}).copy_(flat.narrow(0, offset, params_[i].numel()));
        offset += params_[i].numel();
      }
    }
  }
  return state;
}

void DistributedOptimizer::scatter_state(const OptimizerState& state) {
  at::NoGradGuard no_grad;
  MOE_CHECK(state.size() == 2 && state[0].second.size() == params_.size() && state[1].second.size() == params_.size(),
            "distributed optimizer: a state of ", state.size(), " kinds for ", params_.size(), " parameters");
  for (Bucket& b : buckets_) {
    for (const Segment& s : b.segments) {
      b.exp_avg.narrow(0, s.chunk_offset, s.numel)
          .copy_(state[0].second[s.param].reshape({-1}).narrow(0, s.param_offset, s.numel));
      b.exp_avg_sq.narrow(0, s.chunk_offset, s.numel)
          .copy_(state[1].second[s.param].reshape({-1}).narrow(0, s.param_offset, s.numel));
    }
  }
}

int64_t DistributedOptimizer::owned_elements() const {
  int64_t total = 0;
  for (const Bucket& b : buckets_) total += b.chunk_numel;
  return total;
}

}  // namespace moe
