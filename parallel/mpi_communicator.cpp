#include "parallel/mpi_communicator.h"

#include <climits>
#include <numeric>
#include <utility>

#include "parallel/watchdog.h"

namespace moe {
namespace {

int world_rank() {
  int initialized = 0, finalized = 0, rank = -1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// MPI counts are ints; larger requests are split (broadcast, all-reduce) or refused with the numbers.
constexpr int64_t kMaxCount = INT_MAX;

void check_cpu_contiguous(const at::Tensor& t, const char* op, const char* what) {
  MOE_CHECK(t.device().is_cpu(), "mpi: ", op, " needs CPU or CUDA tensors, got ", what, " on ", t.device());
  MOE_CHECK(t.is_contiguous(), "mpi: ", op, " needs a contiguous ", what);
}

MPI_Datatype reduce_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    default: break;
  }
  throw Error(detail::concat("mpi: reductions do not support dtype ", t,
                             " (float32, float64, int64, int32, uint8 are supported)"));
}

}  // namespace

void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) snprintf(text, sizeof(text), "error code %d", code);
  throw Error(detail::concat("mpi: ", call, " failed on rank ", world_rank(), ": ", text, " [", file, ":", line,
                             "]"));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MOE_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    int provided = 0;
    MOE_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
    owns_ = true;
  }
  MOE_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  MOE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MOE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MOE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::barrier() {
  watchdog::Collective watched("barrier", &name_);
  MOE_MPI_CHECK(MPI_Barrier(comm_));
}

int MpiCommunicator::local_rank() {
  watchdog::Collective watched("local_rank", &name_);
  MPI_Comm node;
  MOE_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
  int local = 0;
  const int rc = MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  if (rc != MPI_SUCCESS) throw_mpi_error(rc, "MPI_Comm_rank(node)", __FILE__, __LINE__);
  return local;
}

at::Tensor MpiCommunicator::staging(int slot, const at::Tensor& like) {
  const int64_t bytes = like.numel() * static_cast<int64_t>(like.element_size());
  at::Tensor& buffer = pinned_[slot];
  if (!buffer.defined() || buffer.numel() < bytes) {
    // Grown geometrically so that a run's varying exchange sizes settle on one allocation.
    const int64_t size = std::max<int64_t>(bytes, buffer.defined() ? 2 * buffer.numel() : int64_t{1} << 20);
    buffer = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  }
  return buffer.narrow(0, 0, bytes).view(like.scalar_type()).view(like.sizes());
}

at::Tensor MpiCommunicator::host_copy(int slot, const at::Tensor& t) {
  at::Tensor host = staging(slot, t);
  host.copy_(t);  // waits for the tensor's stream: MPI then reads finished data
  return host;
}

void MpiCommunicator::broadcast(at::Tensor& tensor, int root) {
  watchdog::Collective watched("broadcast", &name_);
  if (tensor.is_cuda()) {
    at::Tensor host = host_copy(0, tensor);
    broadcast(host, root);
    tensor.copy_(host);
    return;
  }
  check_cpu_contiguous(tensor, "broadcast", "tensor");
  MOE_CHECK(root >= 0 && root < size_, "mpi: broadcast root ", root, " is not a rank of a communicator of ",
            size_);
  auto* bytes = static_cast<char*>(tensor.data_ptr());
  const int64_t total = tensor.numel() * static_cast<int64_t>(tensor.element_size());
  for (int64_t off = 0; off < total; off += kMaxCount) {
    const int n = static_cast<int>(std::min(kMaxCount, total - off));
    MOE_MPI_CHECK(MPI_Bcast(bytes + off, n, MPI_BYTE, root, comm_));
  }
}

void MpiCommunicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  watchdog::Collective watched("all_reduce", &name_);
  if (tensor.is_cuda()) {
    at::Tensor host = host_copy(0, tensor);
    all_reduce(host, op);
    tensor.copy_(host);
    return;
  }
  check_cpu_contiguous(tensor, "all_reduce", "tensor");
  const MPI_Datatype type = reduce_type(tensor.scalar_type());
  const MPI_Op mpi_op = op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
  auto* bytes = static_cast<char*>(tensor.data_ptr());
  const int64_t total = tensor.numel(), elem = tensor.element_size();
  for (int64_t off = 0; off < total; off += kMaxCount) {
    const int n = static_cast<int>(std::min(kMaxCount, total - off));
    MOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, bytes + off * elem, n, type, mpi_op, comm_));
  }
}

namespace {

class MpiPending : public PendingCollective {
 public:
  // `keep` holds the tensors MPI reads or writes until the operation completes.
  MpiPending(MPI_Request request, std::vector<at::Tensor> keep, const char* op, const std::string* group)
      : request_(request), keep_(std::move(keep)), op_(op), group_(group) {}
  ~MpiPending() override {
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);  // errors: the job is ending
  }
  void wait() override {
    if (request_ == MPI_REQUEST_NULL) return;
    watchdog::Collective watched(op_, group_);
    MOE_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  }
  bool done() override {
    if (request_ == MPI_REQUEST_NULL) return true;
    int flag = 0;
    MOE_MPI_CHECK(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE));
    return flag != 0;
  }

 private:
  MPI_Request request_;
  std::vector<at::Tensor> keep_;
  const char* op_;
  const std::string* group_;
};

}  // namespace

std::unique_ptr<PendingCollective> MpiCommunicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  if (tensor.is_cuda() || tensor.numel() > kMaxCount) return Communicator::all_reduce_async(tensor, op);
  check_cpu_contiguous(tensor, "all_reduce", "tensor");
  MPI_Request request = MPI_REQUEST_NULL;
  MOE_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), static_cast<int>(tensor.numel()),
                               reduce_type(tensor.scalar_type()), op == ReduceOp::kSum ? MPI_SUM : MPI_MAX, comm_,
                               &request));
  return std::make_unique<MpiPending>(request, std::vector<at::Tensor>{tensor}, "all_reduce", &name_);
}

at::Tensor MpiCommunicator::all_gather(const at::Tensor& tensor) {
  watchdog::Collective watched("all_gather", &name_);
  if (tensor.is_cuda()) return all_gather(host_copy(0, tensor)).to(tensor.device());
  check_cpu_contiguous(tensor, "all_gather", "tensor");
  std::vector<int64_t> shape = {size_};
  shape.insert(shape.end(), tensor.sizes().begin(), tensor.sizes().end());
  at::Tensor out = at::empty(shape, tensor.options());
  const int64_t bytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
  MOE_CHECK(bytes <= kMaxCount, "mpi: all_gather of ", bytes, " bytes per rank exceeds MPI's int count");
  MOE_MPI_CHECK(MPI_Allgather(tensor.data_ptr(), static_cast<int>(bytes), MPI_BYTE, out.data_ptr(),
                              static_cast<int>(bytes), MPI_BYTE, comm_));
  return out;
}

void MpiCommunicator::all_gather_in_place(at::Tensor& buffer) {
  watchdog::Collective watched("all_gather", &name_);
  if (buffer.is_cuda()) {
    at::Tensor host = host_copy(0, buffer);
    all_gather_in_place(host);
    buffer.copy_(host);
    return;
  }
  check_cpu_contiguous(buffer, "all_gather", "buffer");
  MOE_CHECK(buffer.numel() % size_ == 0, "mpi: all_gather of ", buffer.numel(), " elements in ", size_,
            " equal chunks");
  const int64_t bytes = buffer.numel() / size_ * static_cast<int64_t>(buffer.element_size());
  MOE_CHECK(bytes <= kMaxCount, "mpi: all_gather of ", bytes, " bytes per rank exceeds MPI's int count");
  MOE_MPI_CHECK(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buffer.data_ptr(), static_cast<int>(bytes),
                              MPI_BYTE, comm_));
}

void MpiCommunicator::reduce_scatter(const at::Tensor& input, at::Tensor& output, ReduceOp op) {
  watchdog::Collective watched("reduce_scatter", &name_);
  if (input.is_cuda() || output.is_cuda()) {
    at::Tensor host_out = staging(1, output);
    reduce_scatter(host_copy(0, input), host_out, op);
    output.copy_(host_out);
    return;
  }
  check_cpu_contiguous(input, "reduce_scatter", "input");
  check_cpu_contiguous(output, "reduce_scatter", "output");
  MOE_CHECK(input.scalar_type() == output.scalar_type() && input.numel() == output.numel() * size_,
            "mpi: reduce_scatter of ", input.numel(), " ", input.scalar_type(), " elements into ", output.numel(),
            " ", output.scalar_type(), " per rank over ", size_, " ranks");
  MOE_CHECK(output.numel() <= kMaxCount, "mpi: reduce_scatter of ", output.numel(),
            " elements per rank exceeds MPI's int count");
  MOE_MPI_CHECK(MPI_Reduce_scatter_block(input.data_ptr(), output.data_ptr(), static_cast<int>(output.numel()),
                                         reduce_type(input.scalar_type()), op == ReduceOp::kSum ? MPI_SUM : MPI_MAX,
                                         comm_));
}

void MpiCommunicator::all_to_all_v(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                   at::Tensor& output, const std::vector<int64_t>& recv_rows) {
  if (input.is_cuda() || output.is_cuda()) {
    watchdog::Collective watched("all_to_all_v", &name_);
    at::Tensor host_out = staging(1, output);
    all_to_all_v(host_copy(0, input), send_rows, host_out, recv_rows);
    output.copy_(host_out);
    return;
  }
  all_to_all_v_async(input, send_rows, output, recv_rows)->wait();
}

std::unique_ptr<PendingCollective> MpiCommunicator::all_to_all_v_async(const at::Tensor& input,
                                                                       const std::vector<int64_t>& send_rows,
                                                                       at::Tensor& output,
                                                                       const std::vector<int64_t>& recv_rows) {
  if (input.is_cuda() || output.is_cuda()) return Communicator::all_to_all_v_async(input, send_rows, output, recv_rows);
  check_cpu_contiguous(input, "all_to_all_v", "input");
  check_cpu_contiguous(output, "all_to_all_v", "output");
  MOE_CHECK(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_,
            "mpi: all_to_all_v needs one split per rank (", size_, "), got ", send_rows.size(), " send and ",
            recv_rows.size(), " receive splits");
  MOE_CHECK(input.scalar_type() == output.scalar_type() && input.dim() >= 1 && output.dim() >= 1 &&
                input.sizes().slice(1) == output.sizes().slice(1),
            "mpi: all_to_all_v input ", input.sizes(), " ", input.scalar_type(), " and output ", output.sizes(),
            " ", output.scalar_type(), " differ in row shape or dtype");
  const int64_t total_send = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  const int64_t total_recv = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
  MOE_CHECK(total_send == input.size(0) && total_recv == output.size(0), "mpi: all_to_all_v splits send ",
            total_send, " and receive ", total_recv, " rows, but the tensors hold ", input.size(0), " and ",
            output.size(0));
  int64_t row_bytes = static_cast<int64_t>(input.element_size());
  for (int64_t d = 1; d < input.dim(); ++d) row_bytes *= input.size(d);
  MOE_CHECK(row_bytes <= kMaxCount, "mpi: all_to_all_v row of ", row_bytes, " bytes exceeds MPI's int count");
  MOE_CHECK(total_send <= kMaxCount && total_recv <= kMaxCount, "mpi: all_to_all_v of ", total_send, "/",
            total_recv, " rows exceeds MPI's int count and displacement range");
  if (row_bytes == 0) return std::make_unique<MpiPending>(MPI_REQUEST_NULL, std::vector<at::Tensor>{}, "", &name_);

  // Counts and displacements are in rows of one derived datatype, so a message may hold up to INT_MAX
  // rows whatever their width. MPI keeps a freed type alive for the operations still using it.
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  for (int r = 0, so = 0, ro = 0; r < size_; ++r) {
    sc[r] = static_cast<int>(send_rows[r]);
    rc[r] = static_cast<int>(recv_rows[r]);
    sd[r] = so;
    rd[r] = ro;
    so += sc[r];
    ro += rc[r];
  }
  MPI_Datatype row;
  MOE_MPI_CHECK(MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row));
  MOE_MPI_CHECK(MPI_Type_commit(&row));
  MPI_Request request = MPI_REQUEST_NULL;
  const int rc_call = MPI_Ialltoallv(input.data_ptr(), sc.data(), sd.data(), row, output.data_ptr(), rc.data(),
                                     rd.data(), row, comm_, &request);
  MPI_Type_free(&row);
  if (rc_call != MPI_SUCCESS) throw_mpi_error(rc_call, "MPI_Ialltoallv", __FILE__, __LINE__);
  return std::make_unique<MpiPending>(request, std::vector<at::Tensor>{input, output}, "all_to_all_v", &name_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const std::string& name) {
  watchdog::Collective watched("split", &name_);
  MPI_Comm sub;
  MOE_MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  return std::make_unique<MpiCommunicator>(sub, (name.empty() ? name_ : name) + " " + std::to_string(color));
}

}  // namespace moe
