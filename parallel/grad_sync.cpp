#include "parallel/grad_sync.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <numeric>

#include "core/check.h"

namespace moe {

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

struct GradSync::Bucket {
  std::vector<at::Tensor> params, views;  // views[i]: params[i]'s gradient, inside flat
  std::vector<std::string> names;
  at::Tensor flat;
  Communicator* comm = nullptr;  // null: nothing to reduce over
  int64_t first_index = 0;       // of its first parameter in the model's list
  // During an overlapped backward:
  std::vector<bool> ready;
  int64_t num_ready = 0, num_hooked = 0;
  std::unique_ptr<PendingCollective> pending;

  // Gradients that are not (or no longer) views of flat are taken in: a parameter that got none counts
  // as zero, one whose gradient was replaced is copied in. Then each .grad is its view again.
  void adopt_grads() {
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor g = params[i].grad();
      if (g.defined() && g.is_same(views[i])) continue;
      if (g.defined()) {
        views[i].copy_(g);
      } else {
        views[i].zero_();
      }
      params[i].mutable_grad() = views[i];
    }
  }

  void launch(bool async) {
    adopt_grads();
    if (!comm) return;
    if (async) {
      pending = comm->all_reduce_async(flat, ReduceOp::kSum);
    } else {
      comm->all_reduce(flat, ReduceOp::kSum);
    }
  }
};

struct GradSync::Hooks {
  std::vector<Bucket*> order;  // launch order, the same on every rank
  size_t next = 0;             // the first bucket not launched yet
  bool armed = false;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> installed;

  // Buckets start strictly in order, so every rank issues the same collectives in the same order.
  void launch_ready() {
    while (next < order.size() && order[next]->num_ready == order[next]->num_hooked) order[next++]->launch(true);
    // MPI moves a non-blocking collective along only inside MPI calls: ask the ones in flight.
    for (size_t i = 0; i < next; ++i) {
      if (order[i]->pending) order[i]->pending->done();
    }
  }
};

namespace {

// Runs after AccumulateGrad has added a backward's gradient into the parameter's .grad.
class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  GradReadyHook(GradSync::Hooks* hooks, GradSync::Bucket* bucket, size_t index)
      : hooks_(hooks), bucket_(bucket), index_(index) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    if (!hooks_->armed) return outputs;
    GradSync::Bucket& b = *bucket_;
    MOE_CHECK(!b.ready[index_], "grad sync: parameter ", b.names[index_], " received its gradient twice in one "
              "backward, after its bucket may have been reduced; set train.overlap_grad_reduce: false");
    b.ready[index_] = true;
    if (++b.num_ready == b.num_hooked) hooks_->launch_ready();
    return outputs;
  }

 private:
  GradSync::Hooks* hooks_;
  GradSync::Bucket* bucket_;
  size_t index_;
};

}  // namespace

GradSync::GradSync(const ParameterList& params, Communicator& world, Communicator* edp_group, int64_t bucket_bytes,
                   bool overlap)
    : scale_(1.0 / world.size()) {
  Communicator* world_comm = world.size() > 1 ? &world : nullptr;
  Communicator* edp_comm = edp_group && edp_group->size() > 1 ? edp_group : nullptr;
  if (overlap && world_comm) {
    own_world_ = world.split(0, world.rank(), "grad");
    world_comm = own_world_.get();
  }
  if (overlap && edp_comm) {
    own_edp_ = edp_group->split(0, edp_group->rank(), "edp-grad");
    edp_comm = own_edp_.get();
  }
  for (const bool experts : {false, true}) {
    std::vector<at::Tensor> tensors;
    std::vector<size_t> index;
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].is_expert() != experts) continue;
      tensors.push_back(params[i].tensor);
      index.push_back(i);
    }
    size_t at_param = 0;
    for (auto& group : make_buckets(tensors, bucket_bytes)) {
      auto b = std::make_unique<Bucket>();
      b->comm = experts ? edp_comm : world_comm;
      b->first_index = static_cast<int64_t>(index[at_param]);
      int64_t numel = 0;
      for (const at::Tensor& p : group) numel += p.numel();
      b->flat = at::zeros({numel}, group.front().options().requires_grad(false));
      int64_t offset = 0;
      for (const at::Tensor& p : group) {
        b->views.push_back(b->flat.narrow(0, offset, p.numel()).view(p.sizes()));
        b->names.push_back(params[index[at_param++]].name);
        offset += p.numel();
      }
      b->params = std::move(group);
      b->ready.assign(b->params.size(), false);
      b->adopt_grads();
      buckets_.push_back(std::move(b));
    }
  }
  // Backward completes the last parameters first: the bucket whose first parameter comes latest in the
  // model goes first.
  std::sort(buckets_.begin(), buckets_.end(), [](const auto& a, const auto& b) { return a->first_index > b->first_index; });
  if (!overlap) return;
  hooks_ = std::make_shared<Hooks>();
  for (auto& b : buckets_) {
    hooks_->order.push_back(b.get());
    for (size_t i = 0; i < b->params.size(); ++i) {
      if (!b->params[i].requires_grad()) continue;
      std::shared_ptr<torch::autograd::Node> acc = torch::autograd::impl::grad_accumulator(b->params[i]);
      const uintptr_t key = acc->add_post_hook(std::make_unique<GradReadyHook>(hooks_.get(), b.get(), i));
      hooks_->installed.emplace_back(std::move(acc), key);
      ++b->num_hooked;
    }
  }
}

GradSync::~GradSync() {
  if (!hooks_) return;
  for (auto& [acc, key] : hooks_->installed) acc->del_post_hook(key);
}

void GradSync::reduce_in_next_backward() {
  if (!hooks_) return;
  for (auto& b : buckets_) {
    std::fill(b->ready.begin(), b->ready.end(), false);
    b->num_ready = 0;
  }
  hooks_->next = 0;
  hooks_->armed = true;
}

void GradSync::sync() {
  at::NoGradGuard no_grad;
  const bool overlapped = hooks_ && hooks_->armed;
  if (hooks_) hooks_->armed = false;
  started_in_backward_ = overlapped ? static_cast<int64_t>(hooks_->next) : 0;
  // Buckets before started_in_backward_ are in flight already; the rest go now, in the same order.
  for (size_t i = static_cast<size_t>(started_in_backward_); i < buckets_.size(); ++i) {
    buckets_[i]->launch(/*async=*/false);
  }
  for (auto& b : buckets_) {
    if (b->pending) b->pending->wait();
    b->pending.reset();
    b->flat.mul_(scale_);
  }
}

}  // namespace moe
