#pragma once
// DistributedOptimizer: AdamW with its state split over the data-parallel ranks (ZeRO stage 1, after
// Megatron's distributed optimizer). The parameters are cut into buckets as GradSync cuts them, each
// padded to a multiple of its group's size: the replicated parameters' over every rank, each expert
// shard's over its expert-data-parallel group. Rank r of a group owns chunk r of every bucket of that
// group: the float32 moments of those elements, and their reduced gradient.
//
// A step: each bucket's gradients are reduce-scattered (sum, then / world size, as GradSync), so a rank
// receives only its chunk; the global norm is the sum of every chunk's squares (each element is owned
// by exactly one rank in the world); clipping scales the chunks; AdamW updates the owned elements of the
// float32 weights; an all-gather of each bucket brings every rank the others' updated elements. The
// arithmetic per element is AdamW's (adamw_update), so a sharded run follows the unsharded one within
// the rounding of the reduction's order.
//
// The weights themselves stay whole on every rank: the forward needs them, and in bfloat16 they are
// the float32 masters cast where used (Transformer::set_compute_dtype). What is split is what only the
// update needs: per parameter 8 bytes of moments and 4 of reduced gradient become (8 + 4) / group size.
#include <ATen/ATen.h>

#include <vector>

#include "train/optimizer.h"

namespace moe {

class DistributedOptimizer : public Optimizer {
 public:
  // Collective over `world` and `edp_group` (null: no expert-data-parallel replicas).
  DistributedOptimizer(const ParameterList& params, Communicator& world, Communicator* edp_group,
                       const AdamWOptions& options, int64_t bucket_bytes = 32 << 20);

  at::Tensor reduce_gradients() override;
  void clip(const at::Tensor& norm, double max_norm) override;
  void step(double lr) override;
  int64_t steps() const override { return step_; }
  void set_steps(int64_t steps) override { step_ = steps; }
  OptimizerState gather_state() override;
  void scatter_state(const OptimizerState& state) override;

  // Elements of moments this rank holds, padding included (for tests and the memory plan).
  int64_t owned_elements() const;

 private:
  // The part of one parameter inside this rank's chunk of a bucket.
  struct Segment {
    size_t param;          // index into params_
    int64_t param_offset;  // first element, in the flattened parameter
    int64_t chunk_offset;  // where it sits in the chunk
    int64_t numel;
  };
  struct Bucket {
    std::vector<size_t> params;  // indices into params_, in flat order
    int64_t numel = 0;           // padded to a multiple of the group's size
    Communicator* comm = nullptr;
    bool expert = false;
    int64_t chunk_begin = 0, chunk_numel = 0;  // this rank's chunk of the flat bucket
    std::vector<Segment> segments;
    at::Tensor grad, exp_avg, exp_avg_sq;  // chunk_numel each
  };
  void add_buckets(const std::vector<size_t>& params, Communicator* comm, bool expert, int64_t bucket_bytes);
  std::vector<at::Tensor> bucket_tensors(const Bucket& b) const;

  std::vector<at::Tensor> params_;
  std::vector<bool> decay_;
  std::vector<Bucket> buckets_;
  at::Tensor buffer_;  // bytes: the flat bucket in turn
  Communicator& world_;
  AdamWOptions options_;
  int64_t step_ = 0;
};

}  // namespace moe
