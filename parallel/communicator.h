#pragma once
// Communicator: the only collective operations the rest of moe calls, on tensors. Backends live behind
// it and are chosen by the config at run time through make_communicator (MPI for CPU tensors is the one
// built today); every error names the backend, the operation and the rank. Operations are collective:
// every rank of the communicator calls them in the same order.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "parallel/parallel_options.h"

namespace moe {

enum class ReduceOp { kSum, kMax };

// A collective in flight (Communicator::all_reduce_async, all_to_all_v_async). wait() finishes it and throws what the
// blocking form would have thrown; done() asks without waiting, and lets MPI move it along. Destroying
// an unfinished one waits for it.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
  virtual bool done() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual std::string backend() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  virtual void barrier() = 0;
  // In place: after the call every rank holds root's tensor.
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  // In place, elementwise over ranks.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  // all_reduce, returning once the operation has started so that work can go on while it runs (DDP's
  // gradient buckets reduced during backward). The tensor is off limits until wait(). The base form
  // completes it before returning. NCCL's collectives return to the host at once but run on the compute
  // stream, so on GPUs nothing overlaps the device's compute yet (a side stream needs a GPU to test).
  virtual std::unique_ptr<PendingCollective> all_reduce_async(at::Tensor& tensor, ReduceOp op);
  // Every rank's tensor (all the same shape), stacked along a new leading dimension: [size, ...].
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  // `buffer` holds size() equal chunks in rank order; each rank's chunk rank() reaches every rank, in
  // place (ZeRO's parameter gather).
  virtual void all_gather_in_place(at::Tensor& buffer) = 0;
  // `input` holds size() equal chunks in rank order; `output` (one chunk's elements, same dtype) gets
  // chunk rank() reduced elementwise over the ranks (ZeRO's gradient reduction). Both contiguous.
  virtual void reduce_scatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) = 0;
  // Sends rows [offset_r, offset_r + send_rows[r]) of `input` (rows along dim 0, in rank order) to rank r
  // and writes the recv_rows[r] rows from rank r, in rank order, into `output`. Both contiguous, same
  // dtype and row shape; output already sized to the sum of recv_rows. Zero-row splits are fine.
  virtual void all_to_all_v(const at::Tensor& input, const std::vector<int64_t>& send_rows, at::Tensor& output,
                            const std::vector<int64_t>& recv_rows) = 0;
  // all_to_all_v, returning once the exchange has started (the MoE layer's exchanges overlapped with its
  // experts). `input` is kept alive until then; `output` is off limits until wait(). The base form
  // completes it before returning, as all_reduce_async's does.
  virtual std::unique_ptr<PendingCollective> all_to_all_v_async(const at::Tensor& input,
                                                                const std::vector<int64_t>& send_rows,
                                                                at::Tensor& output,
                                                                const std::vector<int64_t>& recv_rows);
  // Ranks passing the same color form a new communicator, ordered by key (then by rank here). `name`
  // ("ep", "edp") names the group in errors.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name = "") = 0;
};

// What all_ranks_succeed throws when any rank failed: on the lowest failing rank, that rank's message
// (reported() true: log it); on every other rank, the same exit code and nothing to log.
class CollectiveError : public Error {
 public:
  CollectiveError(const std::string& what, int exit_code, bool reported)
      : Error(what, exit_code == 2), exit_code_(exit_code), reported_(reported) {}
  int exit_code() const { return exit_code_; }
  bool reported() const { return reported_; }

 private:
  int exit_code_;
  bool reported_;
};

// Runs `fn` (local work: checking a config, opening files) on every rank and agrees on the outcome, so
// that one rank's failure cannot leave the others waiting in the next collective, and a failure every
// rank shares is reported once. Collective.
void all_ranks_succeed(Communicator& comm, const std::function<void()>& fn);

// The one factory of communicators: the world of `backend` (parallel.backend, already resolved from
// auto: train/device.h), from which the process groups are split. MPI must already be initialised
// (MpiSession); NCCL's world is bootstrapped over MPI's, on GPU `device_index`, its collectives aborted
// after `timeout_s`. A backend this build lacks is refused as bad input, naming the key.
std::unique_ptr<Communicator> make_communicator(Backend backend, int device_index = -1, double timeout_s = 600);

}  // namespace moe
