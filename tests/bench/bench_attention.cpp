// Benchmark: causal attention, forward + backward, on one process.
//   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 build/bench_attention [--heads 32 --seq 256 --head-dim 64]
// Times the blocked FlashAttention kernel (core/flash_attention.h: its CPU kernel, and the same tiles in
// ATen ops, as a GPU runs them) against the materialised form it replaced (one masked [S, S] score GEMM, softmax, a second GEMM; autograd's backward), and against a
// floor measured in the same run: the useful FLOPs of causal attention (the lower triangle of the two
// forward and four backward products) at the rate of one plain batched GEMM of the same shapes. Prints
// medians; the last line is one JSON object.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>

#include "core/flash_attention.h"
#include "core/host_memory.h"

namespace {

double median_ms(int warmup, int steps, const std::function<void()>& fn) {
  std::vector<double> t;
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

at::Tensor materialised(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t S = q.size(1);
  const at::Tensor mask = at::full({S, S}, -INFINITY, q.options()).triu(1).expand({q.size(0), S, S});
  const at::Tensor s = at::baddbmm(mask, q, k.transpose(1, 2), 1.0, 1.0 / std::sqrt(double(q.size(2))));
  return at::bmm(at::softmax(s, -1), v);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"causal attention forward + backward: FlashAttention tiles vs materialised scores vs GEMM floor"};
  int64_t heads = 32, seq = 256, head_dim = 64;
  moe::FlashBlocks blocks;
  int warmup = 3, steps = 15;
  app.add_option("--heads", heads, "batch x heads")->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "sequence length")->check(CLI::PositiveNumber);
  app.add_option("--head-dim", head_dim, "head dimension")->check(CLI::PositiveNumber);
  app.add_option("--query-block", blocks.query, "query rows per tile")->check(CLI::PositiveNumber);
  app.add_option("--key-block", blocks.key, "keys per chunk")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed repetitions")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  moe::retain_freed_host_memory();

  at::manual_seed(0);
  const auto leaf = [&] { return at::randn({heads, seq, head_dim}).requires_grad_(true); };
  at::Tensor q = leaf(), k = leaf(), v = leaf();
  const at::Tensor g = at::randn({heads, seq, head_dim});
  const auto run = [&](const std::function<at::Tensor()>& attention) {
    return median_ms(warmup, steps, [&] {
      q.mutable_grad() = at::Tensor();
      k.mutable_grad() = at::Tensor();
      v.mutable_grad() = at::Tensor();
      (attention() * g).sum().backward();
    });
  };
  const double flash = run([&] { return moe::causal_attention(q, k, v, blocks); });
  moe::FlashBlocks generic = blocks;
  generic.generic = true;
  const double tiles = run([&] { return moe::causal_attention(q, k, v, generic); });
  const double full = run([&] { return materialised(q, k, v); });

  const at::Tensor a = at::randn({heads, seq, head_dim}), b = at::randn({heads, head_dim, seq});
  at::Tensor c = at::empty({heads, seq, seq});
  const double gemm = median_ms(warmup, steps, [&] { at::bmm_out(c, a, b); });
  const double gemm_flops = 2.0 * heads * seq * seq * head_dim;
  const double gflops = gemm_flops / gemm / 1e6;
  // Six products of the GEMM's size, each over the causal triangle (S(S+1)/2 of S^2 entries).
  const double useful = 6 * gemm_flops * (seq + 1) / (2.0 * seq);
  const double floor = useful / gflops / 1e6;
  std::printf("causal attention fwd+bwd, [%lld, %lld, %lld], blocks %lld x %lld, median of %d\n",
              (long long)heads, (long long)seq, (long long)head_dim, (long long)blocks.query,
              (long long)blocks.key, steps);
  std::printf("  flash          %8.2f ms  %.2fx floor\n", flash, flash / floor);
  std::printf("  flash, ATen    %8.2f ms  %.2fx floor\n", tiles, tiles / floor);
  std::printf("  materialised   %8.2f ms  %.2fx floor\n", full, full / floor);
  std::printf("  floor          %8.2f ms  (causal FLOPs at the plain bmm's %.1f GFLOP/s)\n", floor, gflops);
  nlohmann::json j = {{"flash_ms", flash}, {"flash_aten_ms", tiles}, {"materialised_ms", full}, {"floor_ms", floor},
                      {"bmm_gflops", gflops}, {"query_block", blocks.query}, {"key_block", blocks.key}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
