// Where a step's time goes, operator by operator: libtorch's profiler around the forward and backward
// of a brown-moe-shaped model (or, with --layer, of one MoE layer at bench_moe_layer's GELU shapes), one
// process holding every expert, on the CPU. Prints each operator's self time in a step (its time less
// its children's, summed over its calls), the median over the profiled steps, largest first: a step
// that faults in fresh memory (the profiler's own records grow the heap) charges it to one operator once.
//   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 build/profile_ops [--layer] [--top 30]
// The profiler costs a few microseconds per call, so many small operators read larger than they run,
// and it sees only ATen operators and autograd nodes: the forward of our own kernels (core/*: custom
// autograd functions calling BLAS or their own loops) is in the step's wall time, printed for that, and
// in no row.
#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/host_memory.h"
#include "core/transformer.h"

namespace prof = torch::autograd::profiler;

int main(int argc, char** argv) {
  CLI::App app{"per-operator self time of one training step's forward and backward (CPU, one process)"};
  bool layer_only = false;
  int top = 30, steps = 5;
  app.add_flag("--layer", layer_only, "one MoE layer (4096 tokens, hidden 256, GELU FFN 1024, cf 1.25) instead of the model");
  app.add_option("--top", top, "operators to print")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "profiled steps (medians)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  moe::retain_freed_host_memory();

  // brown-moe's model (configs/brown-moe.yaml) on one rank: 8 sequences of 256, all 8 experts here.
  moe::TransformerOptions model_options;
  model_options.moe.ffn_hidden_size = 512;
  model_options.moe.router.num_experts = 8;
  model_options.moe.router.top_k = 2;
  moe::TransformerOptions layer_options;
  layer_options.num_attention_heads = 1;
  layer_options.moe.router.num_experts = 8;
  layer_options.moe.router.top_k = 2;
  layer_options.moe.router.capacity_factor = 1.25;
  layer_options.moe.ffn_hidden_size = 1024;
  layer_options.moe.expert_type = moe::ExpertType::kGELU;

  at::manual_seed(1);
  std::function<void()> step;
  moe::Transformer model{nullptr};
  moe::MoELayer layer{nullptr};
  const at::Tensor tokens = at::randint(0, model_options.vocab_size, {8, 256}, at::kLong);
  const at::Tensor x0 = at::randn({4096, 256}), g = at::randn({4096, 256});
  if (layer_only) {
    layer = moe::MoELayer(layer_options, moe::ExpertParallel{});
    step = [&] {
      layer->zero_grad();
      moe::MoEOutput out = layer->forward(x0.clone().requires_grad_(true));
      ((out.y * g).sum() + out.routing.loss).backward();
    };
  } else {
    model = moe::Transformer(model_options);
    model->init_weights(1);
    step = [&] {
      model->zero_grad();
      moe::TransformerOutput out = model->forward(tokens);
      const int64_t V = model_options.vocab_size;
      (at::cross_entropy_loss(out.logits.reshape({-1, V}), tokens.reshape({-1})) + out.router_loss).backward();
    };
  }
  for (int i = 0; i < 6; ++i) step();  // the heap grows to its steady size
  std::vector<double> wall;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    wall.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(wall.begin(), wall.end());
  std::map<std::string, std::vector<double>> self_ms;  // operator -> self time in each step
  std::map<std::string, int64_t> calls;
  for (int i = 0; i < steps; ++i) {
    prof::enableProfilerLegacy(prof::ProfilerConfig(prof::ProfilerState::CPU));
    step();
    const prof::thread_event_lists lists = prof::disableProfilerLegacy();
    std::map<std::string, double> this_step;
    for (const auto& list : lists) {
      std::vector<std::pair<const prof::LegacyEvent*, double>> open;  // a range and its children's time
      for (const auto& e : list) {
        if (e.kind() == prof::EventKind::PushRange) {
          open.emplace_back(&e, 0.0);
        } else if (e.kind() == prof::EventKind::PopRange && !open.empty()) {
          const auto [start, children] = open.back();
          open.pop_back();
          const double us = start->cpuElapsedUs(e);
          this_step[start->name()] += (us - children) / 1e3;
          if (i == 0) ++calls[start->name()];
          if (!open.empty()) open.back().second += us;
        }
      }
    }
    for (const auto& [name, ms] : this_step) self_ms[name].push_back(ms);
  }
  std::vector<std::pair<double, std::string>> rows;
  double total = 0;
  for (auto& [name, v] : self_ms) {
    v.resize(steps, 0.0);  // steps where it did not run
    std::sort(v.begin(), v.end());
    rows.emplace_back(v[v.size() / 2], name + " (" + std::to_string(calls[name]) + " calls)");
    total += rows.back().first;
  }
  std::sort(rows.rbegin(), rows.rend());
  std::printf("%s, forward + backward: %.1f ms a step (median of %d), %.1f ms in operators under the "
              "profiler; self time per operator, median of the steps:\n",
              layer_only ? "one MoE layer" : "brown-moe's model", wall[wall.size() / 2], steps, total);
  for (int i = 0; i < top && i < static_cast<int>(rows.size()); ++i) {
    std::printf("%9.2f ms %5.1f%%  %s\n", rows[i].first, 100 * rows[i].first / total, rows[i].second.c_str());
  }
  return 0;
}
