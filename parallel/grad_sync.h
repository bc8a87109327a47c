#pragma once
// GradSync: gradient synchronisation, bucketed as DDP does. Each parameter's `.grad` is a view into its
// bucket's flat buffer (DDP's gradient_as_bucket_view), so backward accumulates straight into the
// buffers and a bucket is all-reduced in place, with no flattening copy and no second copy of the
// gradients. With overlap (DDP's default, Megatron's overlap_grad_reduce), a bucket's all-reduce starts
// during backward as soon as the last of its gradients is accumulated, and runs while backward computes
// the earlier layers; sync() then only waits.
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

#include <memory>
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
  // `overlap`: reduce buckets during the backward that follows reduce_in_next_backward(), on
  // communicators of its own (split from world and edp_group: collective), so that their non-blocking
  // all-reduces never interleave with the model's all-to-alls on the same communicator.
  GradSync(const ParameterList& params, Communicator& world, Communicator* edp_group,
           int64_t bucket_bytes = 32 << 20, bool overlap = false);
  ~GradSync();
  GradSync(const GradSync&) = delete;
  GradSync& operator=(const GradSync&) = delete;

  // With overlap: the next backward starts each bucket's all-reduce once its gradients are complete. Call
  // it before the last micro-batch's backward only (earlier ones accumulate). Without overlap: nothing.
  void reduce_in_next_backward();
  // Collective: every rank calls it after backward; completes every bucket's reduction. A parameter with
  // no gradient counts as zero; a gradient replaced by another tensor is taken in and made a view again.
  void sync();
  // How many buckets the last overlapped backward started before sync() was called.
  int64_t started_in_backward() const { return started_in_backward_; }

  struct Bucket;
  struct Hooks;

 private:
  std::vector<std::unique_ptr<Bucket>> buckets_;  // in launch order: the order backward completes them
  std::unique_ptr<Communicator> own_world_, own_edp_;
  std::shared_ptr<Hooks> hooks_;  // null without overlap; the autograd hooks hold it weakly
  double scale_;
  int64_t started_in_backward_ = 0;
};

}  // namespace moe
