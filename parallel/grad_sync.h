#pragma once
// GradSync: gradient synchronisation after backward, bucketed (gradients flattened into a few large
// buffers, one all-reduce per bucket) as DDP does. The buckets take turns in one buffer, the largest
// bucket's size, so synchronising costs no second copy of the gradients.
//
// With the loss of each rank being the mean over its own micro-batch, the gradient of the global-batch
// loss (the mean over all W ranks' losses) is:
//   - for a parameter replicated on every rank (attention, norms, routers, shared experts): the average
//     over all W ranks;
//   - for an expert parameter: after backward, the owning rank already holds the sum over the EP group of
//     every rank's contribution (the all-to-all brought those tokens to it), so the gradient is the sum
//     over its expert-data-parallel group divided by W, not by the EDP size (nor the EP size).
// Both are "sum, then divide by W": single-process training on the same global batch, exactly.
#include <ATen/ATen.h>

#include <vector>

#include "parallel/communicator.h"
#include "parallel/parameter.h"

namespace moe {

// `params` in order, in buckets of one dtype and at most `bucket_bytes` each (a larger tensor alone).
std::vector<std::vector<at::Tensor>> make_buckets(const std::vector<at::Tensor>& params, int64_t bucket_bytes);
// The parameters' gradients one after another at the start of `flat` (zeros for a parameter without one).
void flatten_grads(const std::vector<at::Tensor>& params, at::Tensor& flat);
// A view of `buffer` (bytes, grown when short) as `numel` elements of `dtype`.
at::Tensor view_of(at::Tensor& buffer, int64_t numel, at::ScalarType dtype);

class GradSync {
 public:
  // Replicated parameters reduce over `world`, expert shards over `edp_group` (null: no EDP replicas).
  GradSync(const ParameterList& params, Communicator& world, Communicator* edp_group,
           int64_t bucket_bytes = 32 << 20);

  // Collective: every rank calls it after backward. A parameter with no gradient counts as zero (and
  // gets one).
  void sync();

 private:
  struct Bucket {
    std::vector<at::Tensor> params;
    int64_t numel;
    Communicator* comm;
  };
  void add_buckets(const std::vector<at::Tensor>& params, Communicator* comm, int64_t bucket_bytes);

  std::vector<Bucket> buckets_;
  at::Tensor buffer_;  // bytes: every bucket's flat gradients in turn
  double scale_;
};

}  // namespace moe
