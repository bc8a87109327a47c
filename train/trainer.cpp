#include "train/trainer.h"

#include <spdlog/spdlog.h>

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "core/check.h"

namespace moe {
namespace {

volatile std::sig_atomic_t g_signal = 0;
void on_stop_signal(int sig) { g_signal = sig; }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "layers.3.moe.experts.w1" with global expert 5 -> "layers.3.moe.experts.5.w1".
std::string expert_name(const std::string& name, int64_t expert) {
  const size_t dot = name.rfind('.');
  return name.substr(0, dot) + "." + std::to_string(expert) + name.substr(dot);
}

}  // namespace

// One step's numbers, summed over this rank's micro-batches until report() reduces them over the world.
// Layout of `sums` (float64): lm loss, aux loss, z loss, dropped, assignments, the stop signal (max over
// ranks once reduced, so every rank agrees to stop), then per MoE layer the assignments per expert after
// capacity (tokens_per_expert) and before it (routed, the balancing load).
struct Trainer::StepStats {
  at::Tensor sums;
  double grad_norm = 0, lr = 0;
};

constexpr int64_t kCounts = 6;  // offset of the per-expert counts in StepStats::sums

Trainer::Trainer(const Config& config, Communicator& world, const std::string& resume)
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
    if (world.rank() != 0 || !resume.empty()) return;
    const std::filesystem::path dir(t.out_dir);
    MOE_INPUT_CHECK(!std::filesystem::exists(dir / "metrics.jsonl"), "train.out_dir ", t.out_dir,
                    " already holds a run (metrics.jsonl); continue it with --resume latest, or choose another "
                    "(--set train.out_dir=...)");
    std::filesystem::create_directories(dir);
    write_file_atomically((dir / "config.yaml").string(), to_yaml(config_));
    metrics_ = std::make_unique<MetricsLog>((dir / "metrics.jsonl").string(), -1);
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
  for (bool experts : {false, true}) {  // the names in all_params_ order
    for (const auto& item : model_->named_parameters()) {
      if (is_expert_parameter(item.key()) == experts) all_names_.push_back(item.key());
    }
  }
  grad_sync_ = std::make_unique<GradSync>(dense_params_, world_, expert_params_, groups_.edp.get());
  AdamWOptions ao;
  ao.beta1 = t.beta1;
  ao.beta2 = t.beta2;
  ao.eps = t.adam_eps;
  ao.weight_decay = t.weight_decay;
  optimizer_ = std::make_unique<AdamW>(all_params_, ao);

  if (!resume.empty()) {
    all_ranks_succeed(world_, [&] {
      const std::string dir = resolve_checkpoint(t.out_dir + "/checkpoints", resume);
      CheckpointState state = checkpoint_state();
      const bool same_world = load_checkpoint(dir, state, dims_);
      start_step_ = state.step;
      elapsed_ = state.train_seconds;
      optimizer_->set_steps(state.optimizer_steps);
      if (same_world) {
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        generator.set_state(state.rng_state);
      } else {  // another world size: the ranks' generators cannot map one to one; reseed by the step
        at::manual_seed(t.seed + 1000003ull * static_cast<uint64_t>(world.rank() + 1) + 7919ull * state.step);
        spdlog::warn("resumed on {} ranks from a checkpoint of another world size: router jitter draws differ "
                     "from the original run", world.size());
      }
      last_saved_ = start_step_;
      if (world.rank() == 0) {
        metrics_ = std::make_unique<MetricsLog>(t.out_dir + "/metrics.jsonl", start_step_);
      }
      spdlog::info("resumed from {} at step {}", dir, start_step_);
    });
  }

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
  g_signal = 0;
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  for (int64_t step = start_step_ + 1; step <= t.steps; ++step) {
    const double start = now_seconds();
    const StepStats stats = train_step(step);
    const double seconds = now_seconds() - start;
    elapsed_ += seconds;
    report(step, stats, seconds);
    if (stats.sums[5].item<double>() > 0) {  // a rank got SIGTERM or SIGINT: save, then stop
      stopped_by_ = static_cast<int>(stats.sums[5].item<double>());
      save(step);
      spdlog::warn("stopped by signal {} after step {}; continue with --resume latest", stopped_by_, step);
      return NAN;
    }
    if (config_.checkpoint.every > 0 && step % config_.checkpoint.every == 0) save(step);
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
  if (last_saved_ != t.steps) save(t.steps);
  return val_loss;
}

CheckpointState model_checkpoint_state(Transformer& model, const std::vector<std::string>& names,
                                       const std::vector<at::Tensor>& params, AdamW* optimizer) {
  CheckpointState state;
  // `t` is parameter `name` or its optimizer state, stored under prefix + name.
  const auto add = [&](const std::string& prefix, const std::string& name, const at::Tensor& t) {
    if (!is_expert_parameter(name)) {
      state.replicated.emplace_back(prefix + name, t);
      return;
    }
    const int64_t first = model->first_local_expert(name);
    for (int64_t e = 0; e < t.size(0); ++e) state.experts.emplace_back(expert_name(prefix + name, first + e), t[e]);
  };
  for (size_t i = 0; i < params.size(); ++i) add("", names[i], params[i]);
  if (optimizer) {
    for (size_t i = 0; i < params.size(); ++i) {
      add("exp_avg/", names[i], optimizer->exp_avg()[i]);
      add("exp_avg_sq/", names[i], optimizer->exp_avg_sq()[i]);
    }
    state.optimizer_steps = optimizer->steps();
  }
  state.with_optimizer = optimizer != nullptr;
  for (const auto& item : model->named_buffers()) state.replicated.emplace_back(item.key(), item.value());
  return state;
}

CheckpointState Trainer::checkpoint_state() {
  CheckpointState state = model_checkpoint_state(model_, all_names_, all_params_, optimizer_.get());
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  return state;
}

void Trainer::save(int64_t step) {
  CheckpointState state = checkpoint_state();
  state.step = step;
  state.train_seconds = elapsed_;
  save_checkpoint(config_.train.out_dir + "/checkpoints", state, to_yaml(config_), world_, dims_,
                  config_.checkpoint.keep_last);
  last_saved_ = step;
}

Trainer::StepStats Trainer::train_step(int64_t step) {
  const auto& t = config_.train;
  const int64_t L = config_.data.seq_len, E = config_.moe.num_experts;
  const auto num_moe = static_cast<int64_t>(moe_layers_.size());
  StepStats stats;
  stats.sums = at::zeros({kCounts + 2 * num_moe * E}, at::kDouble);
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
      stats.sums.narrow(0, kCounts + l * E, E).add_(r.tokens_per_expert_E);
      stats.sums.narrow(0, kCounts + (num_moe + l) * E, E).add_(r.routed_per_expert_E);
    }
  }
  MOE_CHECK(std::isfinite(sums[0]), "the training loss is not finite at step ", step,
            " (lower train.lr or set train.grad_clip)");

  grad_sync_->sync();
  stats.grad_norm = global_grad_norm(dense_params_, expert_params_, groups_.ep.get());
  clip_grads(all_params_, stats.grad_norm, t.grad_clip);
  stats.lr = learning_rate(step, t.steps, t.warmup_steps, t.lr, t.min_lr);
  optimizer_->step(stats.lr);

  sums[5] = g_signal;
  at::Tensor stop = stats.sums.narrow(0, 5, 1).clone();
  world_.all_reduce(stats.sums, ReduceOp::kSum);
  world_.all_reduce(stop, ReduceOp::kMax);
  stats.sums[5] = stop[0];
  // Aux-loss-free balancing: every rank moves its bias by the loads of the whole global batch, so the
  // replicated routers stay identical.
  for (int64_t l = 0; l < num_moe; ++l) {
    moe_layers_[l]->router->update_expert_bias(stats.sums.narrow(0, kCounts + (num_moe + l) * E, E));
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
    for (int64_t e = 0; e < E; ++e) counts[e] = std::llround(sums[kCounts + l * E + e]);
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
  return evaluate_windows(model_, *val_data_, eval_offsets(val_data_->size(), config_.data.seq_len, t.eval_windows),
                          config_.data.seq_len, t.micro_batch_size, world_);
}

double evaluate_windows(Transformer& model, const TokenFile& file, const std::vector<int64_t>& offsets,
                        int64_t L, int64_t B, Communicator& world) {
  const auto n = static_cast<int64_t>(offsets.size());
  const int64_t W = world.size();
  // Every rank runs the same number of forwards (the all-to-alls of EP pair them up); windows past the
  // end repeat the last one and weigh 0.
  const int64_t rounds = (n + W * B - 1) / (W * B);
  at::Tensor totals = at::zeros({2}, at::kDouble);  // summed loss, tokens
  const bool was_training = model->is_training();
  model->eval();
  {
    at::NoGradGuard no_grad;
    for (int64_t round = 0; round < rounds; ++round) {
      std::vector<int64_t> chosen(B);
      at::Tensor weight = at::zeros({B, 1}, at::kFloat);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i = round * W * B + world.rank() * B + b;
        chosen[b] = offsets[std::min(i, n - 1)];
        if (i < n) weight[b][0] = 1.0;
      }
      const at::Tensor windows = file.windows(chosen, L + 1);
      const at::Tensor logits = model->forward(windows.narrow(1, 0, L)).logits;
      const at::Tensor per_token =
          at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.narrow(1, 1, L).reshape({-1}),
                                 {}, at::Reduction::None)
              .view({B, L});
      totals[0] += (per_token.to(at::kDouble) * weight.to(at::kDouble)).sum();
      totals[1] += weight.sum().item<double>() * static_cast<double>(L);
    }
  }
  model->train(was_training);
  world.all_reduce(totals, ReduceOp::kSum);
  return totals[0].item<double>() / totals[1].item<double>();
}

EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data, int64_t seq_len, int64_t windows,
                               Communicator& world) {
  Config config;
  std::unique_ptr<TokenFile> file;
  all_ranks_succeed(world, [&] {
    MOE_INPUT_CHECK(seq_len >= 1 && windows >= 1, "eval: --seq-len (", seq_len, ") and --windows (", windows,
                    ") must be positive");
    verify_checkpoint(dir);
    config = load_config(dir + "/config.yaml", {}, 0);
    const int64_t E = config.moe.num_experts;
    MOE_INPUT_CHECK(E == 0 || E % world.size() == 0, "eval: the number of ranks (", world.size(),
                    ") must divide moe.num_experts (", E, ") of ", dir, "/config.yaml");
    config.parallel.expert_parallel_size = E > 0 ? world.size() : 1;
    config.moe.capacity_factor.reset();  // dropless
    config.moe.eval_capacity_factor.reset();
    file = std::make_unique<TokenFile>(data, config.data.dtype, config.model.vocab_size, windows * seq_len + 1);
  });
  const ParallelDims dims(world.size(), world.rank(), static_cast<int>(config.parallel.expert_parallel_size),
                          config.moe.num_experts);
  const ProcessGroups groups = make_process_groups(world, dims);
  Transformer model(config.transformer_options(), groups.ep.get(), &world);
  std::vector<std::string> names;
  std::vector<at::Tensor> params;
  for (const auto& item : model->named_parameters()) {
    names.push_back(item.key());
    params.push_back(item.value());
  }
  CheckpointState state = model_checkpoint_state(model, names, params, nullptr);
  all_ranks_succeed(world, [&] { load_checkpoint(dir, state, dims); });
  std::vector<int64_t> offsets(windows);
  for (int64_t i = 0; i < windows; ++i) offsets[i] = i * seq_len;
  return {evaluate_windows(model, *file, offsets, seq_len, config.train.micro_batch_size, world), windows * seq_len};
}

}  // namespace moe
