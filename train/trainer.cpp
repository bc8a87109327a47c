#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/check.h"

namespace moe {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Writes `text` to `path` through a temporary file renamed into place.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream os(tmp, std::ios::trunc);
    os << text;
    MOE_CHECK(os.good(), "cannot write ", tmp);
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace

// One step's numbers, summed over this rank's micro-batches until report() reduces them over the world.
// Layout of `sums` (float64): lm loss, aux loss, z loss, dropped, assignments, then per MoE layer the
// assignments per expert after capacity (tokens_per_expert) and before it (routed, the balancing load).
struct Trainer::StepStats {
  at::Tensor sums;
  double grad_norm = 0, lr = 0;
};

Trainer::Trainer(const Config& config, Communicator& world)
    : config_(config),
      world_(world),
      dims_(world.size(), world.rank(), static_cast<int>(config.parallel.expert_parallel_size),
            config.moe.num_experts),
      groups_(make_process_groups(world, dims_)) {
  const auto& t = config_.train;
  accumulation_ = config_.accumulation_steps(world.size());
  // Local checks first, agreed by every rank: a missing file on one rank must not leave the others
  // waiting in a collective.
  all_ranks_succeed(world_, [&] {
    const int64_t window = config_.data.seq_len + 1;
    train_data_ = std::make_unique<TokenFile>(config_.data.train_path, config_.data.dtype,
                                              config_.model.vocab_size, window);
    val_data_ = std::make_unique<TokenFile>(config_.data.val_path, config_.data.dtype, config_.model.vocab_size,
                                            window);
    if (world.rank() != 0) return;
    const std::filesystem::path dir(t.out_dir);
    MOE_INPUT_CHECK(!std::filesystem::exists(dir / "metrics.jsonl"), "train.out_dir ", t.out_dir,
                    " already holds a run (metrics.jsonl); choose another (--set train.out_dir=...)");
    std::filesystem::create_directories(dir);
    write_file_atomically((dir / "config.yaml").string(), to_yaml(config_));
    metrics_ = std::make_unique<MetricsLog>((dir / "metrics.jsonl").string());
  });

  model_ = Transformer(config_.transformer_options(), groups_.ep.get(), &world_);
  model_->init_weights(t.seed);
  // Router jitter draws from the global generator: the same run gives the same draws, ranks differ.
  at::manual_seed(t.seed + 1000003ull * static_cast<uint64_t>(world.rank() + 1));
  moe_layers_ = model_->moe_layers();
  dense_params_ = model_->dense_parameters();
  expert_params_ = model_->expert_parameters();
  all_params_ = dense_params_;
  all_params_.insert(all_params_.end(), expert_params_.begin(), expert_params_.end());
  grad_sync_ = std::make_unique<GradSync>(dense_params_, world_, expert_params_, groups_.edp.get());
  AdamWOptions ao;
  ao.beta1 = t.beta1;
  ao.beta2 = t.beta2;
  ao.eps = t.adam_eps;
  ao.weight_decay = t.weight_decay;
  optimizer_ = std::make_unique<AdamW>(all_params_, ao);

  int64_t total = 0, experts_local = 0;
  for (const auto& p : dense_params_) total += p.numel();
  for (const auto& p : expert_params_) experts_local += p.numel();
  spdlog::info("model: {} layers ({} MoE), {:.2f}M parameters on this rank ({:.2f}M in {} local experts per MoE layer)",
               config_.model.num_layers, moe_layers_.size(), (total + experts_local) / 1e6, experts_local / 1e6,
               dims_.num_local_experts);
  spdlog::info("parallel: {} ranks, expert parallel {} x expert data parallel {}; batch {} sequences x {} tokens "
               "= {} micro-batch x {} accumulation x {} ranks",
               world.size(), dims_.ep_size, dims_.edp_size, t.global_batch_size, config_.data.seq_len,
               t.micro_batch_size, accumulation_, world.size());
  spdlog::info("data: {} ({} tokens), validation {} ({} tokens)", train_data_->path(), train_data_->size(),
               val_data_->path(), val_data_->size());
}

double Trainer::train() {
  const auto& t = config_.train;
  double val_loss = NAN;
  for (int64_t step = 1; step <= t.steps; ++step) {
    const double start = now_seconds();
    const StepStats stats = train_step(step);
    const double seconds = now_seconds() - start;
    elapsed_ += seconds;
    report(step, stats, seconds);
    if ((t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps) {
      val_loss = evaluate();
      const int64_t tokens = step * t.global_batch_size * config_.data.seq_len;
      spdlog::info("eval step {}: validation loss {:.4f} after {} tokens ({} of training)", step, val_loss, tokens,
                   format_duration(elapsed_));
      if (metrics_) {
        metrics_->write({{"kind", "eval"}, {"step", step}, {"loss", val_loss}, {"tokens", tokens},
                         {"train_seconds", elapsed_}});
      }
    }
  }
  return val_loss;
}

Trainer::StepStats Trainer::train_step(int64_t step) {
  const auto& t = config_.train;
  const int64_t L = config_.data.seq_len, E = config_.moe.num_experts;
  const auto num_moe = static_cast<int64_t>(moe_layers_.size());
  StepStats stats;
  stats.sums = at::zeros({5 + 2 * num_moe * E}, at::kDouble);
  double* sums = stats.sums.data_ptr<double>();

  for (at::Tensor& p : all_params_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
  const std::vector<int64_t> offsets =
      batch_offsets(t.seed, step, t.global_batch_size, L, train_data_->size());
  for (int64_t micro = 0; micro < accumulation_; ++micro) {
    const at::Tensor windows = train_data_->windows(
        rank_slice(offsets, world_.rank(), world_.size(), t.micro_batch_size, micro), L + 1);
    const at::Tensor inputs = windows.narrow(1, 0, L), targets = windows.narrow(1, 1, L);
    TransformerOutput out = model_->forward(inputs);
    const at::Tensor lm_loss =
        at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}), targets.reshape({-1}));
    const at::Tensor loss = (lm_loss + out.router_loss) / static_cast<double>(accumulation_);
    loss.backward();

    sums[0] += lm_loss.item<double>();
    for (int64_t l = 0; l < num_moe; ++l) {
      const Routing& r = out.routings[l];
      sums[1] += r.aux_loss.item<double>() / static_cast<double>(num_moe);
      sums[2] += r.z_loss.item<double>() / static_cast<double>(num_moe);
      sums[3] += static_cast<double>(r.num_dropped);
      sums[4] += static_cast<double>(r.expert_ids_TK.numel());
      stats.sums.narrow(0, 5 + l * E, E).add_(r.tokens_per_expert_E);
      stats.sums.narrow(0, 5 + (num_moe + l) * E, E).add_(r.routed_per_expert_E);
    }
  }
  MOE_CHECK(std::isfinite(sums[0]), "the training loss is not finite at step ", step,
            " (lower train.lr or set train.grad_clip)");

  grad_sync_->sync();
  stats.grad_norm = global_grad_norm(dense_params_, expert_params_, groups_.ep.get());
  clip_grads(all_params_, stats.grad_norm, t.grad_clip);
  stats.lr = learning_rate(step, t.steps, t.warmup_steps, t.lr, t.min_lr);
  optimizer_->step(stats.lr);

  world_.all_reduce(stats.sums, ReduceOp::kSum);
  // Aux-loss-free balancing: every rank moves its bias by the loads of the whole global batch, so the
  // replicated routers stay identical.
  for (int64_t l = 0; l < num_moe; ++l) {
    moe_layers_[l]->router->update_expert_bias(stats.sums.narrow(0, 5 + (num_moe + l) * E, E));
  }
  return stats;
}

void Trainer::report(int64_t step, const StepStats& stats, double seconds) {
  const auto& t = config_.train;
  const int64_t E = config_.moe.num_experts;
  const auto num_moe = static_cast<int64_t>(moe_layers_.size());
  const double* sums = stats.sums.data_ptr<double>();
  const double micro_batches = static_cast<double>(accumulation_ * world_.size());
  const double loss = sums[0] / micro_batches, aux = sums[1] / micro_batches, z = sums[2] / micro_batches;
  const double dropped = sums[4] > 0 ? sums[3] / sums[4] : 0.0;
  const double tokens_per_s = static_cast<double>(t.global_batch_size * config_.data.seq_len) / seconds;
  if (step % t.log_every == 0 || step == 1 || step == t.steps) {
    const double eta = elapsed_ / static_cast<double>(step) * static_cast<double>(t.steps - step);
    spdlog::info("step {}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | grad norm {:.3f} | dropped {:.2f}% | "
                 "{:.0f} tokens/s | ETA {}",
                 step, t.steps, loss, aux, stats.lr, stats.grad_norm, 100 * dropped, tokens_per_s,
                 format_duration(eta));
  }
  if (!metrics_) return;
  nlohmann::json per_layer = nlohmann::json::array();
  for (int64_t l = 0; l < num_moe; ++l) {
    std::vector<int64_t> counts(E);
    for (int64_t e = 0; e < E; ++e) counts[e] = std::llround(sums[5 + l * E + e]);
    per_layer.push_back(counts);
  }
  metrics_->write({{"kind", "train"},
                   {"step", step},
                   {"loss", loss},
                   {"aux_loss", aux},
                   {"z_loss", z},
                   {"lr", stats.lr},
                   {"grad_norm", stats.grad_norm},
                   {"tokens_per_s", tokens_per_s},
                   {"dropped_fraction", dropped},
                   {"tokens_per_expert", per_layer}});
}

double Trainer::evaluate() {
  const auto& t = config_.train;
  const int64_t L = config_.data.seq_len, B = t.micro_batch_size, W = world_.size();
  const std::vector<int64_t> offsets = eval_offsets(val_data_->size(), L, t.eval_windows);
  const auto n = static_cast<int64_t>(offsets.size());
  // Every rank runs the same number of forwards (the all-to-alls of EP pair them up); windows past the
  // end repeat the last one and weigh 0.
  const int64_t rounds = (n + W * B - 1) / (W * B);
  at::Tensor totals = at::zeros({2}, at::kDouble);  // summed loss, tokens
  model_->eval();
  {
    at::NoGradGuard no_grad;
    for (int64_t round = 0; round < rounds; ++round) {
      std::vector<int64_t> chosen(B);
      at::Tensor weight = at::zeros({B, 1}, at::kFloat);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i = round * W * B + world_.rank() * B + b;
        chosen[b] = offsets[std::min(i, n - 1)];
        if (i < n) weight[b][0] = 1.0;
      }
      const at::Tensor windows = val_data_->windows(chosen, L + 1);
      const at::Tensor logits = model_->forward(windows.narrow(1, 0, L)).logits;
      const at::Tensor per_token =
          at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.narrow(1, 1, L).reshape({-1}),
                                 {}, at::Reduction::None)
              .view({B, L});
      totals[0] += (per_token * weight).sum().to(at::kDouble);
      totals[1] += weight.sum().item<double>() * static_cast<double>(L);
    }
  }
  model_->train();
  world_.all_reduce(totals, ReduceOp::kSum);
  return totals[0].item<double>() / totals[1].item<double>();
}

}  // namespace moe
