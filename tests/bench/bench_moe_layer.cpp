// Benchmark: one MoE layer, forward + backward, experts sharded over all ranks (EP = world size).
//   mpirun -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 build/bench_moe_layer [flags]
//   build/bench_moe_layer --device cuda --tokens 8192 --hidden 4096 --ffn 14336 --capacity-factor null
// Prints the median step time with its breakdown, the routing statistics, and three floors measured in
// the same run: the experts' forward and backward GEMMs alone on the same token counts (compute floor),
// raw MPI_Alltoallv calls moving the bytes of the four exchanges (communication floor), and one plain
// [tokens, hidden] x [hidden, ffn] GEMM, whose rate the layer's useful FLOP rate is compared with. The
// last line is one JSON object.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>

#include <torch/cuda.h>

#include "core/host_memory.h"
#include "core/moe_layer.h"
#include "parallel/mpi_communicator.h"
#include "parallel/parallel_dims.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The slowest rank sets the pace of a collective step.
// Timings on a GPU wait for its queued work.
at::Device g_device = at::kCPU;
void sync_device() {
  if (g_device.is_cuda()) torch::cuda::synchronize();
}

double max_over_ranks(moe::Communicator& world, double v) {
  at::Tensor t = at::full({1}, v, at::kDouble);
  world.all_reduce(t, moe::ReduceOp::kMax);
  return t.item<double>();
}

// Median over steps of the slowest rank's time for fn().
double time_steps(moe::Communicator& world, int warmup, int steps, const std::function<void()>& fn) {
  std::vector<double> times;
  for (int i = 0; i < warmup + steps; ++i) {
    world.barrier();
    sync_device();
    const auto t0 = Clock::now();
    fn();
    sync_device();
    const double t = max_over_ranks(world, ms_since(t0));
    if (i >= warmup) times.push_back(t);
  }
  return median(times);
}

}  // namespace

int main(int argc, char** argv) {
  moe::retain_freed_host_memory();
  moe::MpiSession mpi(&argc, &argv);
  CLI::App app{"MoE layer benchmark (forward + backward, EP = world size)"};
  int64_t tokens = 4096, hidden = 512, ffn = 1024, experts = 8, top_k = 2, num_groups = 0, group_topk = 0;
  std::string capacity = "1.25", expert_type = "swiglu";
  int steps = 20, warmup = 3;
  std::string device = "cpu";
  std::string dtype = "float32";
  app.add_option("--tokens", tokens, "tokens per rank");
  app.add_option("--hidden", hidden, "hidden size");
  app.add_option("--ffn", ffn, "expert FFN hidden size");
  app.add_option("--experts", experts, "number of experts");
  app.add_option("--top-k", top_k, "experts per token");
  app.add_option("--capacity-factor", capacity, "capacity factor, or null for dropless");
  app.add_option("--groups", num_groups, "node-limited routing: expert groups (moe.num_groups; 0 off)");
  app.add_option("--group-topk", group_topk, "groups a token may use (moe.group_topk)");
  bool once_per_rank = true;
  app.add_option("--dispatch-once-per-rank", once_per_rank, "moe.dispatch_once_per_rank: true | false");
  app.add_option("--expert-type", expert_type, "swiglu | gelu")->check(CLI::IsMember({"swiglu", "gelu"}));
  app.add_option("--steps", steps, "timed steps (median reported)")->check(CLI::Range(1, 100000));
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_option("--device", device, "cpu | cuda (GPU local rank % count)")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype, "float32 | bfloat16: what the layer computes in (train.dtype); weights stay float32")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    moe::MpiCommunicator world(MPI_COMM_WORLD);
    const int R = world.size(), me = world.rank();
    if (device == "cuda") {
      MOE_CHECK(at::hasCUDA() && torch::cuda::device_count() > 0, "--device cuda: no GPU visible to libtorch");
      g_device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(world.local_rank() % torch::cuda::device_count()));
    }
    const at::ScalarType compute = dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
    const auto on_device = at::TensorOptions().device(g_device).dtype(compute);
    const moe::ParallelDims dims(R, me, R, experts);
    moe::ProcessGroups groups = moe::make_process_groups(world, dims);

    moe::TransformerOptions o;
    o.hidden_size = hidden;
    o.num_attention_heads = 1;
    o.moe.router.num_experts = experts;
    o.moe.router.top_k = top_k;
    o.moe.router.aux_loss_coeff = 0.01;
    if (capacity != "null") o.moe.router.capacity_factor = std::stod(capacity);
    o.moe.router.num_groups = num_groups;
    o.moe.router.group_topk = group_topk;
    o.moe.dispatch_once_per_rank = once_per_rank;
    o.moe.ffn_hidden_size = ffn;
    o.moe.expert_type = expert_type == "gelu" ? moe::ExpertType::kGELU : moe::ExpertType::kSwiGLU;
    at::manual_seed(1);
    moe::MoELayer layer(o, moe::ExpertParallel{dims, groups.ep.get(), &world});
    layer->to(g_device);
    at::manual_seed(100 + me);
    const at::Tensor x0 = at::randn({tokens, hidden}).to(g_device, compute);
    const at::Tensor g = at::randn({tokens, hidden}).to(g_device, compute);

    // The layer: forward and backward, with the breakdown of the forward.
    std::vector<moe::PhaseTimes> phases;
    std::vector<double> backward_ms, layer_ms;
    moe::Routing last;
    for (int i = 0; i < warmup + steps; ++i) {
      moe::PhaseTimes pt;
      layer->set_phase_times(&pt);
      layer->zero_grad();
      at::Tensor x = x0.clone().requires_grad_(true);
      world.barrier();
      sync_device();
      const auto t0 = Clock::now();
      moe::MoEOutput out = layer->forward(x);
      const at::Tensor loss = (out.y * g).sum() + out.routing.loss;
      sync_device();
      const auto t1 = Clock::now();
      loss.backward();
      sync_device();
      const double bwd = ms_since(t1), total = ms_since(t0);
      if (i >= warmup) {
        phases.push_back(pt);
        backward_ms.push_back(max_over_ranks(world, bwd));
        layer_ms.push_back(max_over_ranks(world, total));
      } else {
        max_over_ranks(world, bwd);
        max_over_ranks(world, total);
      }
      last = out.routing;
    }
    layer->set_phase_times(nullptr);

    // Token counts of the last step, for the floors: what this rank sends to each rank, what its
    // local experts receive.
    const int64_t El = dims.num_local_experts;
    const at::Tensor counts_E = last.tokens_per_expert_E.cpu();
    // Rows to each rank: per kept assignment, or once per rank a row per distinct token reaching it
    // (dispatch and combine alike; the gate weights and masks beside them are left out).
    const at::Tensor dest_TK = last.expert_ids_TK.cpu().div(El, "floor");
    at::Tensor kept_TR = at::zeros({tokens, R}, at::kLong);
    kept_TR.scatter_add_(1, dest_TK, last.keep_TK.cpu().to(at::kLong));
    const at::Tensor send_counts = once_per_rank ? kept_TR.gt(0).sum(0).contiguous() : counts_E.view({R, El}).sum(1).contiguous();
    at::Tensor recv_counts = at::empty({R}, at::kLong);
    MOE_MPI_CHECK(MPI_Alltoall(send_counts.data_ptr(), 1, MPI_INT64_T, recv_counts.data_ptr(), 1, MPI_INT64_T,
                               world.comm()));
    at::Tensor per_expert = counts_E.contiguous();
    at::Tensor all_counts = per_expert.clone();
    world.all_reduce(all_counts, moe::ReduceOp::kSum);
    // Tokens each local expert received from all ranks.
    at::Tensor recv_by_expert = at::empty({R * El}, at::kLong);
    MOE_MPI_CHECK(MPI_Alltoall(per_expert.data_ptr(), static_cast<int>(El), MPI_INT64_T, recv_by_expert.data_ptr(),
                               static_cast<int>(El), MPI_INT64_T, world.comm()));
    const at::Tensor local_tokens = recv_by_expert.view({R, El}).sum(0);

    // Compute floor: the experts' GEMMs alone (forward 3, backward 6 for SwiGLU; 2 and 4 for GELU) on
    // the same per-expert token counts, into preallocated outputs.
    const bool swiglu = o.moe.expert_type == moe::ExpertType::kSwiGLU;
    struct ExpertBufs { at::Tensor x, h1, h3, h, y, dy, dh, dh1, dh3, dx, dw1, dw3, dw2; };
    std::vector<ExpertBufs> bufs;
    for (int64_t j = 0; j < El; ++j) {
      const int64_t n = local_tokens[j].item<int64_t>();
      ExpertBufs b;
      b.x = at::randn({n, hidden}, on_device);
      for (at::Tensor* t : {&b.h1, &b.h3, &b.h, &b.dh, &b.dh1, &b.dh3}) *t = at::randn({n, ffn}, on_device);
      for (at::Tensor* t : {&b.y, &b.dy, &b.dx}) *t = at::randn({n, hidden}, on_device);
      for (at::Tensor* t : {&b.dw1, &b.dw3}) *t = at::empty({hidden, ffn}, on_device);
      b.dw2 = at::empty({ffn, hidden}, on_device);
      bufs.push_back(b);
    }
    // The floor's weights in the compute dtype, cast once outside the timing.
    const at::Tensor w1 = layer->experts->w1.detach().to(compute);
    const at::Tensor w2 = layer->experts->w2.detach().to(compute);
    const at::Tensor w3 = swiglu ? layer->experts->w3.detach().to(compute) : at::Tensor();
    const double compute_floor = time_steps(world, warmup, steps, [&] {
      at::NoGradGuard no_grad;
      for (int64_t j = 0; j < El; ++j) {
        auto& b = bufs[j];
        if (b.x.size(0) == 0) continue;
        at::mm_out(b.h1, b.x, w1[j]);
        if (swiglu) at::mm_out(b.h3, b.x, w3[j]);
        at::mm_out(b.y, b.h, w2[j]);
        at::mm_out(b.dh, b.dy, w2[j].t());
        at::mm_out(b.dw2, b.h.t(), b.dy);
        at::mm_out(b.dw1, b.x.t(), b.dh1);
        at::mm_out(b.dx, b.dh1, w1[j].t());
        if (swiglu) {
          at::mm_out(b.dw3, b.x.t(), b.dh3);
          at::addmm_out(b.dx, b.dx, b.dh3, w3[j].t());
        }
      }
    });

    // The GEMM rate of this device and dtype: one plain [tokens, hidden] x [hidden, ffn] product.
    const at::Tensor ga = at::randn({tokens, hidden}, on_device), gb = at::randn({hidden, ffn}, on_device);
    at::Tensor gc = at::empty({tokens, ffn}, on_device);
    const double gemm_ms = time_steps(world, warmup, steps, [&] { at::mm_out(gc, ga, gb); });
    const double gemm_tflops = 2.0 * tokens * hidden * ffn / (gemm_ms * 1e-3) / 1e12;
    // The layer's useful FLOPs: its experts' GEMMs, forward and backward, on the tokens they received.
    const double expert_flops =
        (swiglu ? 18.0 : 12.0) * static_cast<double>(local_tokens.sum().item<int64_t>()) * hidden * ffn;

    // Communication floor: raw MPI_Alltoallv of the same rows, dispatch and combine, forward and backward.
    std::vector<int> sc(R), sd(R), rc(R), rd(R);
    int64_t send_total = 0, recv_total = 0;
    for (int r = 0; r < R; ++r) {
      sc[r] = static_cast<int>(send_counts[r].item<int64_t>() * hidden);
      rc[r] = static_cast<int>(recv_counts[r].item<int64_t>() * hidden);
      sd[r] = static_cast<int>(send_total);
      rd[r] = static_cast<int>(recv_total);
      send_total += sc[r];
      recv_total += rc[r];
    }
    // The rows in the compute dtype's bytes: bf16 rows as pairs of bytes.
    const MPI_Datatype element = compute == at::kBFloat16 ? MPI_UINT16_T : MPI_FLOAT;
    at::Tensor sbuf = at::randn({send_total}).to(compute), rbuf = at::randn({recv_total}).to(compute);
    const double comm_floor = time_steps(world, warmup, steps, [&] {
      for (int rep = 0; rep < 2; ++rep) {  // forward, then backward
        MOE_MPI_CHECK(MPI_Alltoallv(sbuf.data_ptr(), sc.data(), sd.data(), element, rbuf.data_ptr(), rc.data(),
                                    rd.data(), element, world.comm()));
        MOE_MPI_CHECK(MPI_Alltoallv(rbuf.data_ptr(), rc.data(), rd.data(), element, sbuf.data_ptr(), sc.data(),
                                    sd.data(), element, world.comm()));
      }
    });

    const auto phase_median = [&](double moe::PhaseTimes::*field) {
      std::vector<double> v;
      for (const auto& p : phases) v.push_back(p.*field);
      return max_over_ranks(world, median(v));
    };
    const double route = phase_median(&moe::PhaseTimes::route), permute = phase_median(&moe::PhaseTimes::permute),
                 dispatch = phase_median(&moe::PhaseTimes::dispatch),
                 experts_ms = phase_median(&moe::PhaseTimes::experts),
                 combine = phase_median(&moe::PhaseTimes::combine),
                 unpermute = phase_median(&moe::PhaseTimes::unpermute);
    const double step_ms = median(layer_ms), backward = median(backward_ms);
    const double layer_tflops = expert_flops / (step_ms * 1e-3) / 1e12;
    at::Tensor dropped = at::full({1}, last.num_dropped, at::kLong);
    world.all_reduce(dropped, moe::ReduceOp::kSum);
    // What the exchanges carry (last step, all ranks): combine and its backward a row per kept
    // assignment on another rank; dispatch and its backward the same, or once per rank a row per
    // distinct other rank a token reaches (which node-limited routing bounds).
    const at::Tensor remote_TK = last.keep_TK.cpu().logical_and(dest_TK.ne(me));
    at::Tensor reached_TR = at::zeros({tokens, R}, at::kLong);
    reached_TR.scatter_add_(1, dest_TK, remote_TK.to(at::kLong));
    at::Tensor traffic = at::stack({remote_TK.sum(), reached_TR.gt(0).sum()}).to(at::kLong);
    world.all_reduce(traffic, moe::ReduceOp::kSum);
    const double remote_rows = static_cast<double>(traffic[0].item<int64_t>()) / static_cast<double>(R * tokens);
    const double remote_ranks = static_cast<double>(traffic[1].item<int64_t>()) / static_cast<double>(R * tokens);
    const double row_bytes = static_cast<double>(hidden * at::elementSize(compute));
    const double a2a_mb = 4.0 * traffic[once_per_rank ? 1 : 0].item<int64_t>() * row_bytes / 1e6;  // 4 exchanges

    if (me == 0) {
      std::printf("moe layer: %d ranks (EP %d), %lld tokens/rank, hidden %lld, ffn %lld, %lld experts, top-%lld, "
                  "capacity factor %s, %s, %s\n",
                  R, R, (long long)tokens, (long long)hidden, (long long)ffn, (long long)experts, (long long)top_k,
                  capacity.c_str(), expert_type.c_str(), dtype.c_str());
      std::printf("routing (last step, all ranks): tokens per expert [");
      for (int64_t e = 0; e < experts; ++e) std::printf("%s%lld", e ? " " : "", (long long)all_counts[e].item<int64_t>());
      std::printf("], dropped %.2f%% of %lld assignments, aux loss %.4f\n",
                  100.0 * dropped.item<int64_t>() / double(R * tokens * top_k), (long long)(R * tokens * top_k),
                  last.aux_loss.item<double>());
      std::printf("all-to-all (last step, all ranks; groups %lld, group top-k %lld): %.3f assignments and %.3f "
                  "distinct ranks per token on other ranks; dispatch once per %s: %.2f MB over the 4 exchanges\n",
                  (long long)num_groups, (long long)group_topk, remote_rows, remote_ranks,
                  once_per_rank ? "rank" : "expert", a2a_mb);
      std::printf("median of %d steps (slowest rank), ms:\n", steps);
      std::printf("  route %8.2f  permute %8.2f  dispatch %8.2f  experts %8.2f\n", route, permute, dispatch, experts_ms);
      std::printf("  combine %6.2f  unpermute %6.2f  backward %7.2f  | layer %8.2f\n", combine, unpermute, backward,
                  step_ms);
      std::printf("floors: compute (expert GEMMs) %.2f ms, communication (4 x MPI_Alltoallv) %.2f ms\n",
                  compute_floor, comm_floor);
      std::printf("rate on %s (rank 0): layer %.2f TFLOP/s of expert GEMMs; a plain %lldx%lldx%lld GEMM %.2f TFLOP/s "
                  "(%.3f ms); ratio %.3f\n",
                  g_device.str().c_str(), layer_tflops, (long long)tokens, (long long)hidden, (long long)ffn,
                  gemm_tflops, gemm_ms, layer_tflops / gemm_tflops);
      nlohmann::json j = {{"device", g_device.str()},
                          {"dtype", dtype},
                          {"layer_ms", step_ms},
                          {"compute_floor_ms", compute_floor},
                          {"comm_floor_ms", comm_floor},
                          {"ratio", step_ms / (compute_floor + comm_floor)},
                          {"layer_tflops", layer_tflops},
                          {"gemm_tflops", gemm_tflops},
                          {"ratio_to_gemm", layer_tflops / gemm_tflops},
                          {"a2a_mb", a2a_mb},
                          {"remote_rows_per_token", remote_rows},
                          {"remote_ranks_per_token", remote_ranks}};
      std::printf("%s\n", j.dump().c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_moe_layer: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 0;
}
