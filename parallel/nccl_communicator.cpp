#include "parallel/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>

#include "parallel/watchdog.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

void check_cuda(cudaError_t rc, const char* call, const std::string& where) {
  if (rc != cudaSuccess) throw Error(detail::concat("nccl: ", call, " failed ", where, ": ", cudaGetErrorString(rc)));
}

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: break;
  }
  throw Error(detail::concat("nccl: all_reduce does not support dtype ", t));
}

}  // namespace

struct NcclCommunicator::State {
  std::unique_ptr<MpiCommunicator> bootstrap;
  std::string group;
  int device = 0;
  double timeout_s = 600;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;  // libtorch's default stream of `device`

  // The watchdog: collectives in flight, each with the event recorded after it.
  struct InFlight {
    cudaEvent_t done;
    const char* op;
    Clock::time_point start;
  };
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<InFlight> in_flight;
  std::vector<cudaEvent_t> spare_events;
  bool stopping = false;
  std::thread watchdog;

  std::string where(const char* op) const {
    return detail::concat("in ", op, " on rank ", bootstrap->rank(), " of group ", group, " (", bootstrap->size(),
                          " ranks, GPU ", device, ")");
  }

  // Aborts the communicator and ends the process: a peer that never arrives must not leave this rank,
  // and with it the whole job, waiting for ever.
  [[noreturn]] void fail(const std::string& message) {
    spdlog::error("{}; aborting the NCCL communicator and exiting with code {}", message, kCollectiveTimeoutExit);
    spdlog::default_logger()->flush();
    ncclCommAbort(comm);
    std::_Exit(kCollectiveTimeoutExit);
  }

  // With a non-blocking communicator a call may return ncclInProgress: wait for it within the timeout.
  void check(ncclResult_t rc, const char* op) {
    const auto start = Clock::now();
    while (rc == ncclInProgress) {
      if (timeout_s > 0 && std::chrono::duration<double>(Clock::now() - start).count() > timeout_s) {
        fail(detail::concat("nccl: ", where(op), " did not complete within parallel.timeout_s = ", timeout_s, " s"));
      }
      std::this_thread::yield();
      ncclCommGetAsyncError(comm, &rc);
    }
    if (rc != ncclSuccess) {
      const char* last = ncclGetLastError(comm);
      throw Error(detail::concat("nccl: ", where(op), ": ", ncclGetErrorString(rc),
                                 last && *last ? std::string(" (") + last + ")" : std::string()));
    }
  }

  // After a collective is enqueued: the watchdog follows it to completion.
  void watch(const char* op) {
    cudaEvent_t event;
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (spare_events.empty()) {
        check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate", where(op));
      } else {
        event = spare_events.back();
        spare_events.pop_back();
      }
    }
    check_cuda(cudaEventRecord(event, stream), "cudaEventRecord", where(op));
    std::lock_guard<std::mutex> lock(mutex);
    in_flight.push_back({event, op, Clock::now()});
    wake.notify_one();
  }

  void watchdog_loop() {
    cudaSetDevice(device);
    std::unique_lock<std::mutex> lock(mutex);
    while (!stopping) {
      if (in_flight.empty()) {
        wake.wait(lock);
        continue;
      }
      const InFlight oldest = in_flight.front();
      lock.unlock();
      const cudaError_t state = cudaEventQuery(oldest.done);
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm, &async);
      lock.lock();
      if (async != ncclSuccess && async != ncclInProgress) {
        fail(detail::concat("nccl: ", where(oldest.op), " failed: ", ncclGetErrorString(async)));
      }
      if (state == cudaSuccess) {
        spare_events.push_back(oldest.done);
        in_flight.pop_front();
        continue;
      }
      const double waited = std::chrono::duration<double>(Clock::now() - oldest.start).count();
      if (state != cudaErrorNotReady) {
        fail(detail::concat("nccl: ", where(oldest.op), ": ", cudaGetErrorString(state)));
      }
      if (timeout_s > 0 && waited > timeout_s) {
        fail(detail::concat("nccl: ", where(oldest.op), " has waited ", static_cast<int64_t>(waited),
                            " s for its peers (parallel.timeout_s = ", timeout_s, ")"));
      }
      wake.wait_for(lock, std::chrono::milliseconds(50));
    }
  }

  // A CUDA tensor of this GPU holding `t`: `t` itself when it is one, else a staged copy.
  at::Tensor on_device(const at::Tensor& t) const {
    if (t.is_cuda()) {
      MOE_CHECK(t.get_device() == device, "nccl: group ", group, " works on GPU ", device, ", got a tensor on ",
                t.device());
      return t.contiguous();
    }
    return t.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device))).contiguous();
  }
};

NcclCommunicator::NcclCommunicator(std::unique_ptr<MpiCommunicator> bootstrap, std::string group, int device_index,
                                   double timeout_s)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.bootstrap = std::move(bootstrap);
  s.group = std::move(group);
  s.device = device_index;
  s.timeout_s = timeout_s;
  check_cuda(cudaSetDevice(device_index), "cudaSetDevice", s.where("init"));
  ncclUniqueId id;
  if (s.bootstrap->rank() == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess) throw Error(detail::concat("nccl: ncclGetUniqueId failed ", s.where("init"), ": ", ncclGetErrorString(rc)));
  }
  MOE_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, s.bootstrap->comm()));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // calls return at once; State::check waits for them within the timeout
  s.check(ncclCommInitRankConfig(&s.comm, s.bootstrap->size(), id, s.bootstrap->rank(), &config), "ncclCommInitRank");
  s.watchdog = std::thread([&s] { s.watchdog_loop(); });
}

NcclCommunicator::~NcclCommunicator() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stopping = true;
  }
  s.wake.notify_all();
  if (s.watchdog.joinable()) s.watchdog.join();
  cudaStreamSynchronize(s.stream);
  for (const auto& f : s.in_flight) cudaEventDestroy(f.done);
  for (cudaEvent_t e : s.spare_events) cudaEventDestroy(e);
  if (s.comm && std::uncaught_exceptions() > 0) {
    ncclCommAbort(s.comm);  // unwinding from an error: peers may never finalize with us
  } else if (s.comm) {
    ncclResult_t rc = ncclCommFinalize(s.comm);
    const auto start = Clock::now();
    while (rc == ncclInProgress && std::chrono::duration<double>(Clock::now() - start).count() < s.timeout_s) {
      std::this_thread::yield();
      ncclCommGetAsyncError(s.comm, &rc);
    }
    if (rc == ncclSuccess) {
      ncclCommDestroy(s.comm);
    } else {
      ncclCommAbort(s.comm);
    }
  }
}

int NcclCommunicator::rank() const { return state_->bootstrap->rank(); }
int NcclCommunicator::size() const { return state_->bootstrap->size(); }

void NcclCommunicator::barrier() {
  // Every rank's queued collectives finish first, then the ranks meet over MPI.
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, state_->device));
  all_reduce(token, ReduceOp::kSum);
  check_cuda(cudaStreamSynchronize(state_->stream), "cudaStreamSynchronize", state_->where("barrier"));
  state_->bootstrap->barrier();
}

void NcclCommunicator::broadcast(at::Tensor& tensor, int root) {
  State& s = *state_;
  MOE_CHECK(root >= 0 && root < size(), "nccl: broadcast root ", root, " is not a rank of group ", s.group);
  at::Tensor d = s.on_device(tensor);
  s.check(ncclBroadcast(d.data_ptr(), d.data_ptr(), d.numel() * d.element_size(), ncclUint8, root, s.comm, s.stream),
          "broadcast");
  s.watch("broadcast");
  if (!d.is_same(tensor)) tensor.copy_(d);
}

void NcclCommunicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  State& s = *state_;
  at::Tensor d = s.on_device(tensor);
  s.check(ncclAllReduce(d.data_ptr(), d.data_ptr(), d.numel(), nccl_type(d.scalar_type()),
                        op == ReduceOp::kSum ? ncclSum : ncclMax, s.comm, s.stream),
          "all_reduce");
  s.watch("all_reduce");
  if (!d.is_same(tensor)) tensor.copy_(d);
}

at::Tensor NcclCommunicator::all_gather(const at::Tensor& tensor) {
  State& s = *state_;
  const at::Tensor d = s.on_device(tensor);
  std::vector<int64_t> shape = {size()};
  shape.insert(shape.end(), d.sizes().begin(), d.sizes().end());
  at::Tensor out = at::empty(shape, d.options());
  s.check(ncclAllGather(d.data_ptr(), out.data_ptr(), d.numel() * d.element_size(), ncclUint8, s.comm, s.stream),
          "all_gather");
  s.watch("all_gather");
  return tensor.is_cuda() ? out : out.to(tensor.device());
}

void NcclCommunicator::all_gather_in_place(at::Tensor& buffer) {
  State& s = *state_;
  MOE_CHECK(buffer.numel() % size() == 0, "nccl: all_gather of ", buffer.numel(), " elements in ", size(),
            " equal chunks");
  at::Tensor d = s.on_device(buffer);
  const int64_t chunk = d.numel() / size() * d.element_size();
  auto* bytes = static_cast<char*>(d.data_ptr());
  s.check(ncclAllGather(bytes + rank() * chunk, bytes, chunk, ncclUint8, s.comm, s.stream), "all_gather");
  s.watch("all_gather");
  if (!d.is_same(buffer)) buffer.copy_(d);
}

void NcclCommunicator::reduce_scatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) {
  State& s = *state_;
  MOE_CHECK(input.scalar_type() == output.scalar_type() && input.numel() == output.numel() * size(),
            "nccl: reduce_scatter of ", input.numel(), " ", input.scalar_type(), " elements into ", output.numel(),
            " ", output.scalar_type(), " per rank over ", size(), " ranks");
  const at::Tensor in = s.on_device(input);
  at::Tensor out = output.is_cuda() && output.is_contiguous() ? output : s.on_device(output);
  s.check(ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in.scalar_type()),
                            op == ReduceOp::kSum ? ncclSum : ncclMax, s.comm, s.stream),
          "reduce_scatter");
  s.watch("reduce_scatter");
  if (!out.is_same(output)) output.copy_(out);
}

void NcclCommunicator::all_to_all_v(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                    at::Tensor& output, const std::vector<int64_t>& recv_rows) {
  State& s = *state_;
  const int R = size();
  MOE_CHECK(static_cast<int>(send_rows.size()) == R && static_cast<int>(recv_rows.size()) == R,
            "nccl: all_to_all_v needs one split per rank (", R, "), got ", send_rows.size(), " send and ",
            recv_rows.size(), " receive splits");
  MOE_CHECK(input.scalar_type() == output.scalar_type() && input.dim() >= 1 && output.dim() >= 1 &&
                input.sizes().slice(1) == output.sizes().slice(1),
            "nccl: all_to_all_v input ", input.sizes(), " and output ", output.sizes(), " differ in row shape or dtype");
  const int64_t total_send = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  const int64_t total_recv = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
  MOE_CHECK(total_send == input.size(0) && total_recv == output.size(0), "nccl: all_to_all_v splits send ",
            total_send, " and receive ", total_recv, " rows, but the tensors hold ", input.size(0), " and ",
            output.size(0));
  const at::Tensor in = s.on_device(input);
  at::Tensor out = output.is_cuda() && output.is_contiguous() ? output : s.on_device(output);
  const int64_t row_bytes = input.size(0) > 0 ? in.numel() / in.size(0) * in.element_size()
                                              : (output.size(0) > 0 ? out.numel() / out.size(0) * out.element_size() : 0);
  auto* send = static_cast<char*>(in.data_ptr());
  auto* recv = static_cast<char*>(out.data_ptr());
  s.check(ncclGroupStart(), "all_to_all_v");
  for (int r = 0; r < R; ++r) {
    if (send_rows[r] > 0) {
      s.check(ncclSend(send, send_rows[r] * row_bytes, ncclUint8, r, s.comm, s.stream), "all_to_all_v");
    }
    if (recv_rows[r] > 0) {
      s.check(ncclRecv(recv, recv_rows[r] * row_bytes, ncclUint8, r, s.comm, s.stream), "all_to_all_v");
    }
    send += send_rows[r] * row_bytes;
    recv += recv_rows[r] * row_bytes;
  }
  s.check(ncclGroupEnd(), "all_to_all_v");
  s.watch("all_to_all_v");
  if (!out.is_same(output)) output.copy_(out);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key, const std::string& name) {
  State& s = *state_;
  std::unique_ptr<Communicator> sub = s.bootstrap->split(color, key);
  std::unique_ptr<MpiCommunicator> mpi(static_cast<MpiCommunicator*>(sub.release()));
  return std::make_unique<NcclCommunicator>(std::move(mpi), (name.empty() ? s.group : name) + " " + std::to_string(color),
                                            s.device, s.timeout_s);
}

}  // namespace moe
