#include "train/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include "core/check.h"
#include "parallel/watchdog.h"
#include "train/checkpoint/checkpoint_state.h"
#include "train/cli/plan.h"
#include "train/device.h"
#include "train/evaluation.h"
#include "train/shared_directory.h"

namespace moe {
namespace {

volatile std::sig_atomic_t g_signal = 0;
void on_stop_signal(int sig) { g_signal = sig; }

void synchronize_cuda() { torch::cuda::synchronize(); }

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Makes the run directory (returns whether it did) and checks that it takes files, before anything is
// written: a read-only or unreachable train.out_dir is the user's to fix, not a failure halfway.
bool make_out_dir(const std::string& dir) {
  std::error_code ec;
  const bool made = std::filesystem::create_directories(dir, ec);
  MOE_INPUT_CHECK(!ec, "train.out_dir ", dir, ": cannot create it: ", ec.message());
  MOE_INPUT_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "train.out_dir ", dir, " is not writable: ",
                  std::strerror(errno));
  return made;
}

}  // namespace

Trainer::Trainer(const Config& config, Communicator& world, Communicator& control, at::Device device,
                 const std::string& resume)
    : config_(config),
      world_(world),
      control_(control),
      device_(device),
      dims_(world.size(), world.rank(), static_cast<int>(config.parallel.expert_parallel_size),
            config.model.moe.router.num_experts),
      groups_(make_process_groups(world, dims_)) {
  const auto& t = config_.train;
  if (const char* fault = std::getenv("MOE_FAULT_NONFINITE_STEP")) fault_nonfinite_step_ = std::atoll(fault);
  watchdog::Slow starting;  // opening the data and loading a checkpoint wait on every rank's files
  accumulation_ = config_.accumulation_steps(world.size());
  // Local checks first, agreed by every rank: a missing file on one rank must not leave the others
  // waiting in a collective.
  bool made_out_dir = false;
  all_ranks_succeed(control_, [&] {
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
    // A new run writes nothing over what is there.
    MOE_INPUT_CHECK(!std::filesystem::exists(dir) || std::filesystem::is_directory(dir), "train.out_dir ",
                    t.out_dir, " is not a directory");
    std::error_code ec;
    std::filesystem::directory_iterator entries(dir, ec);
    MOE_INPUT_CHECK(ec || entries == std::filesystem::directory_iterator(), "train.out_dir ", t.out_dir,
                    " is not empty (it holds ", entries->path().filename().string(),
                    "); a new run starts in a new or empty directory (--set train.out_dir=...)");
  });
  // Only once every rank accepted its inputs (a resume may start a new directory too); a refused check
  // below removes what this made.
  all_ranks_succeed(control_, [&] {
    if (world.rank() == 0) made_out_dir = make_out_dir(t.out_dir);
  });
  if (control_.size() > 1) {
    try {
      check_shared_directory(control_, t.out_dir);
    } catch (const CollectiveError&) {
      std::error_code ec;
      if (made_out_dir) std::filesystem::remove(t.out_dir, ec);  // only if still empty
      throw;
    }
  }
  all_ranks_succeed(control_, [&] {
    if (world.rank() != 0 || !resume.empty()) return;
    write_file_atomically(t.out_dir + "/config.yaml", to_yaml(config_));
    metrics_ = std::make_unique<MetricsLog>(t.out_dir + "/metrics.jsonl", -1);
  });

  model_ = Transformer(config_.model, ExpertParallel{dims_, groups_.ep.get(), &world_});
  model_->init_weights(t.seed);  // on the CPU's generator: the same weights on every device
  model_->to(device_);
  model_->set_recompute(t.recompute);
  model_->set_compute_dtype(t.dtype == TrainDtype::kBFloat16 ? at::kBFloat16 : at::kFloat);
  // Router jitter draws from the global generator: the same run gives the same draws, ranks differ.
  at::manual_seed(t.seed + 1000003ull * static_cast<uint64_t>(world.rank() + 1));
  moe_layers_ = model_->moe_layers();
  shadowed_.assign(moe_layers_.size(), 0);
  if (t.profile) {
    if (device_.is_cuda()) phases_.synchronize = synchronize_cuda;
    model_->set_phase_times(&phases_);
  }
  AdamWOptions ao;
  ao.beta1 = t.beta1;
  ao.beta2 = t.beta2;
  ao.eps = t.adam_eps;
  ao.weight_decay = t.weight_decay;
  GradReduceOptions reduce;
  reduce.shard = t.shard_optimizer;
  reduce.overlap = t.overlap_grad_reduce;
  reduce.bucket_bytes = static_cast<int64_t>(t.grad_bucket_mb * (1 << 20));
  optimizer_ = make_optimizer(model_->parameter_records(), world_, groups_.ep.get(), groups_.edp.get(), ao, reduce);

  if (!resume.empty()) {
    OptimizerState moments = optimizer_->gather_state();  // collective: outside the agreement below
    all_ranks_succeed(control_, [&] {
      const std::string dir = resolve_checkpoint(t.out_dir + "/checkpoints", resume);
      CheckpointState state = checkpoint_state(moments);
      const bool same_world = load_checkpoint(dir, state, dims_);
      start_step_ = state.step;
      elapsed_ = elapsed_at_start_ = state.train_seconds;
      optimizer_->set_steps(state.optimizer_steps);
      if (same_world) {
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        generator.set_state(state.rng_state);
      }
      if (same_world && device_.is_cuda()) {
        // The checkpoint holds the CPU generator's state; the GPU's jitter draws are reseeded by the step.
        at::Generator gpu = at::globalContext().defaultGenerator(device_);
        gpu.set_current_seed(t.seed + 1000003ull * static_cast<uint64_t>(world.rank() + 1) + 7919ull * state.step);
      } else if (!same_world) {  // another world size: the ranks' generators cannot map one to one; reseed by the step
        at::manual_seed(t.seed + 1000003ull * static_cast<uint64_t>(world.rank() + 1) + 7919ull * state.step);
        spdlog::warn("resumed on {} ranks from a checkpoint of another world size: router jitter draws differ "
                     "from the original run", world.size());
      }
      last_saved_ = start_step_;
      spdlog::info("resumed from {} at step {}", dir, start_step_);
    });
    optimizer_->scatter_state(moments);
    // Only once every rank has loaded the checkpoint: a resume refused on any rank leaves the log whole.
    all_ranks_succeed(control_, [&] {
      if (world.rank() != 0) return;
      // A run may continue from another run's checkpoint into a directory of its own.
      const std::filesystem::path dir(t.out_dir);
      if (!std::filesystem::exists(dir / "config.yaml")) {
        write_file_atomically((dir / "config.yaml").string(), to_yaml(config_));
      }
      metrics_ = std::make_unique<MetricsLog>((dir / "metrics.jsonl").string(), start_step_);
    });
  }

  int64_t total = 0, experts_local = 0;
  for (const ParameterRecord& p : model_->parameter_records()) {
    (p.is_expert() ? experts_local : total) += p.tensor.numel();
  }
  spdlog::info("model: {} layers ({} MoE), {:.2f}M parameters on this rank ({:.2f}M in {} local experts per MoE layer); "
               "recompute {}, compute in {}",
               config_.model.num_layers, moe_layers_.size(), (total + experts_local) / 1e6, experts_local / 1e6,
               dims_.num_local_experts, enum_name(t.recompute), enum_name(t.dtype));
  spdlog::info("parallel: {} ranks, expert parallel {} x expert data parallel {}; batch {} sequences x {} tokens "
               "= {} micro-batch x {} accumulation x {} ranks",
               world.size(), dims_.ep_size, dims_.edp_size, t.global_batch_size, config_.data.seq_len,
               t.micro_batch_size, accumulation_, world.size());
  flops_per_token_ = static_cast<double>(make_plan(config_, world.size()).flops_per_token);
  // On the CPU float32 whatever train.dtype (this CPU's bf16 products are not its peak); on a GPU the run's dtype.
  const at::ScalarType peak_dtype = device_.is_cuda() && t.dtype == TrainDtype::kBFloat16 ? at::kBFloat16 : at::kFloat;
  gemm_peak_ = measure_gemm_peak(device_, peak_dtype);
  spdlog::info("speed: {:.4g} model FLOPs per token (forward and backward, as moe plan counts them); this rank's "
               "{} GEMM peak {:.1f} GFLOP/s, the denominator of MFU",
               flops_per_token_, peak_dtype == at::kBFloat16 ? "bfloat16" : "float32", gemm_peak_ / 1e9);
  if (t.shard_optimizer) {
    spdlog::info("optimizer: AdamW, its state sharded (ZeRO-1): the dense parameters' over {} ranks, the experts' over "
                 "{}; gradients reduce-scattered after backward{}", world.size(), dims_.edp_size,
                 t.overlap_grad_reduce ? " (train.overlap_grad_reduce applies to the unsharded optimizer only)" : "");
  } else {
    spdlog::info("optimizer: AdamW; gradients all-reduced in buckets of {} MiB, {}", t.grad_bucket_mb,
                 t.overlap_grad_reduce ? "each started during backward once complete" : "after backward");
  }
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
    watchdog::set_step(step);
    std::optional<watchdog::Slow> first;  // the first step of a process warms up its allocations
    if (step == start_step_ + 1) first.emplace();
    StepStats stats = train_step(step);
    first.reset();
    const double seconds = now_seconds() - start;
    elapsed_ += seconds;
    pending_.push_back({step, std::move(stats), seconds, elapsed_, phases_});
    const int stop = agreed_stop_signal();
    const bool save_now = config_.checkpoint.every > 0 && step % config_.checkpoint.every == 0;
    const bool eval_now = (t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps;
    // Before a save too: a non-finite loss stops the run before its weights are written.
    if (stop > 0 || save_now || eval_now || step % t.log_every == 0 || step == 1) flush();
    if (stop > 0) {  // a rank got SIGTERM or SIGINT: save, then stop
      stopped_by_ = stop;
      save(step);
      spdlog::warn("stopped by signal {} after step {}; continue with --resume latest", stopped_by_, step);
      return NAN;
    }
    if (save_now) save(step);
    if (eval_now) {
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

CheckpointState Trainer::checkpoint_state(const OptimizerState& moments) {
  CheckpointState state = make_checkpoint_state(model_, &moments);
  state.optimizer_steps = optimizer_->steps();
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  return state;
}

void Trainer::save(int64_t step) {
  watchdog::Slow saving;  // the ranks wait on each other's file writes
  CheckpointState state = checkpoint_state(optimizer_->gather_state());
  state.step = step;
  state.train_seconds = elapsed_;
  save_checkpoint(config_.train.out_dir + "/checkpoints", state, to_yaml(config_), control_, dims_,
                  config_.checkpoint.keep_last);
  last_saved_ = step;
}

StepStats Trainer::train_step(int64_t step) {
  const auto& t = config_.train;
  const int64_t L = config_.data.seq_len;
  const auto num_moe = static_cast<int64_t>(moe_layers_.size());
  StepStats stats(num_moe, config_.model.moe.router.num_experts, world_.size(), device_);
  const ParameterList& params = model_->parameter_records();
  PhaseTimes* times = t.profile ? &phases_ : nullptr;
  if (times) {
    const auto synchronize = phases_.synchronize;
    phases_ = PhaseTimes{};
    phases_.synchronize = synchronize;
  }

  for (const ParameterRecord& p : params) {
    if (p.tensor.grad().defined()) p.tensor.mutable_grad().zero_();
  }
  for (MoELayer& layer : moe_layers_) layer->take_exchange_stats();  // an evaluation's are not the step's
  const std::vector<int64_t> offsets =
      batch_offsets(t.seed, step, t.global_batch_size, L, train_data_->size());
  for (int64_t micro = 0; micro < accumulation_; ++micro) {
    at::Tensor windows;
    {
      ScopedPhase timer(times, &PhaseTimes::data);
      windows = train_data_->windows(rank_slice(offsets, world_.rank(), world_.size(), t.micro_batch_size, micro), L + 1,
                                     device_);
    }
    const at::Tensor inputs = windows.narrow(1, 0, L), targets = windows.narrow(1, 1, L);
    TransformerOutput out = model_->forward(inputs);
    at::Tensor lm_loss =
        at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}), targets.reshape({-1}));
    if (step == fault_nonfinite_step_ && world_.rank() == world_.size() - 1) lm_loss = lm_loss * NAN;
    const at::Tensor loss = (lm_loss + out.router_loss) / static_cast<double>(accumulation_);
    if (micro == accumulation_ - 1) optimizer_->reduce_in_next_backward();
    {
      ScopedPhase timer(times, &PhaseTimes::backward);
      loss.backward();
    }
    stats.add(lm_loss, out.routings);
  }

  // The same on every rank, so every rank takes the same decisions from it without another collective.
  at::Tensor squares;
  {
    ScopedPhase timer(times, &PhaseTimes::grad_sync);
    squares = optimizer_->reduce_gradients();
  }
  const at::Tensor grad_norm = squares.sum().sqrt();
  stats.lr = learning_rate(step, t.steps, t.warmup_steps, t.lr, t.min_lr);
  if (t.on_nonfinite == OnNonFinite::kSkip) {
    // Host sync, in skip mode only: whether this step's update is applied.
    const at::Tensor host = squares.to(at::kCPU);
    stats.skipped = !std::isfinite(host[0].item<double>() + host[1].item<double>());
  }
  if (!stats.skipped) {
    ScopedPhase timer(times, &PhaseTimes::optimizer);
    optimizer_->clip(grad_norm, t.grad_clip);
    optimizer_->step(stats.lr);
  }
  ExchangeStats exchanges;
  for (size_t l = 0; l < moe_layers_.size(); ++l) {
    const ExchangeStats e = moe_layers_[l]->take_exchange_stats();
    shadowed_[l] += e.shadowed_experts;  // the same on every rank: the choice is collective
    exchanges.bytes_sent += e.bytes_sent;
    exchanges.bytes_received += e.bytes_received;
    exchanges.times.exchange += e.times.exchange;
  }
  stats.set_exchanges(world_.rank(), static_cast<double>(exchanges.bytes_sent),
                      static_cast<double>(exchanges.bytes_received), exchanges.times.exchange);
  if (times) times->exchange = exchanges.times.exchange;
  stats.reduce(world_, squares);
  if (stats.skipped) {
    ++skipped_;
    spdlog::warn("step {}: the gradient is not finite; its update was skipped ({} so far, train.max_skipped_steps {})",
                 step, skipped_, t.max_skipped_steps);
    all_ranks_succeed(control_, [&] {  // every rank decides alike: one message, one exit code
      MOE_CHECK(skipped_ <= t.max_skipped_steps, "step ", step, ": ", skipped_, " updates skipped for a non-finite "
                "gradient, more than train.max_skipped_steps (", t.max_skipped_steps, "); the last checkpoint is "
                "untouched (lower train.lr or set train.grad_clip)");
    });
    return stats;
  }
  // Aux-loss-free balancing: every rank moves its bias by the loads of the whole global batch, so the
  // replicated routers stay identical.
  for (int64_t l = 0; l < num_moe; ++l) moe_layers_[l]->router->update_expert_bias(stats.routed_per_expert_LE[l]);
  return stats;
}

int Trainer::agreed_stop_signal() {
  at::Tensor stop = at::full({1}, static_cast<double>(g_signal), at::kDouble);
  control_.all_reduce(stop, ReduceOp::kMax);
  return static_cast<int>(stop.item<double>());
}

void Trainer::flush() {
  std::vector<StepStats*> steps;
  for (Pending& p : pending_) steps.push_back(&p.stats);
  StepStats::read_all(steps);
  // Every rank holds the same sums and decides alike: all_ranks_succeed makes it one message, one exit code.
  all_ranks_succeed(control_, [&] { check_and_report(); });
}

void Trainer::check_and_report() {
  for (const Pending& p : pending_) {
    const StepStats& st = p.stats;
    if (!st.skipped && !(std::isfinite(st.lm_loss) && std::isfinite(st.grad_norm))) {
      std::string what;
      const auto add = [&](const char* part) { what += (what.empty() ? "" : ", ") + std::string(part); };
      if (!std::isfinite(st.lm_loss)) add("the training loss");
      if (!std::isfinite(st.grad_sq_replicated)) add("the replicated parameters' gradient");
      if (!std::isfinite(st.grad_sq_expert)) add("the experts' gradient");
      throw Error(detail::concat("step ", p.step, ": not finite: ", what, "; stopped before saving anything from it ",
                                 "(the last checkpoint is untouched; lower train.lr, set train.grad_clip, or "
                                 "train.on_nonfinite: skip)"));
    }
    report(p);
  }
  report_interval();
  pending_.clear();
}

void Trainer::report_interval() {
  if (!metrics_ || moe_layers_.empty() || pending_.empty()) return;
  const RouterOptions& router = config_.model.moe.router;
  at::Tensor routed, kept, losses, exchanges;
  double seconds = 0;
  for (const Pending& p : pending_) {
    const StepStats& st = p.stats;
    routed = routed.defined() ? routed + st.routed_LE : st.routed_LE;
    kept = kept.defined() ? kept + st.tokens_per_expert_LE : st.tokens_per_expert_LE;
    losses = losses.defined() ? losses + st.layer_losses_L3 : st.layer_losses_L3;
    exchanges = exchanges.defined() ? exchanges + st.exchanges_W3 : st.exchanges_W3;
    seconds += p.seconds;
  }
  // Each step adds one value per micro-batch and rank to the layer's losses.
  losses = losses / static_cast<double>(pending_.size() * accumulation_ * world_.size());
  const auto row = [](const at::Tensor& t) {
    const at::Tensor c = t.contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  nlohmann::json layers = nlohmann::json::array();
  for (int64_t l = 0, layer = 0; layer < config_.model.num_layers; ++layer) {
    if (!config_.model.is_moe_layer(layer)) continue;
    const double total = routed[l].sum().item<double>();
    const double mean = total / static_cast<double>(router.num_experts);
    nlohmann::json j = {{"layer", layer},
                        {"routed", row(routed[l])},
                        {"kept", row(kept[l])},
                        {"dropped_fraction", total > 0 ? 1.0 - kept[l].sum().item<double>() / total : 0.0},
                        {"overload", mean > 0 ? routed[l].max().item<double>() / mean : 0.0},
                        {"router_entropy", losses[l][2].item<double>()},
                        {"aux_loss", losses[l][0].item<double>()},
                        {"z_loss", losses[l][1].item<double>()}};
    if (router.bias_update_rate > 0) j["expert_bias"] = row(moe_layers_[l]->router->expert_bias.to(at::kCPU, at::kDouble));
    if (config_.model.moe.shadow_experts > 0) j["shadowed_experts"] = std::exchange(shadowed_[l], 0);
    layers.push_back(std::move(j));
    ++l;
  }
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < world_.size(); ++r) {
    ranks.push_back({{"rank", r},
                     {"a2a_bytes_sent", exchanges[r][0].item<double>()},
                     {"a2a_bytes_received", exchanges[r][1].item<double>()},
                     {"a2a_seconds", exchanges[r][2].item<double>() / 1e3},
                     {"a2a_share", seconds > 0 ? exchanges[r][2].item<double>() / 1e3 / seconds : 0.0}});
  }
  metrics_->write({{"kind", "moe"},
                   {"step", pending_.back().step},
                   {"first_step", pending_.front().step},
                   {"seconds", seconds},
                   {"layers", std::move(layers)},
                   {"ranks", std::move(ranks)}});
}

void Trainer::report(const Pending& pending) {
  const int64_t step = pending.step;
  const StepStats& stats = pending.stats;
  const double seconds = pending.seconds;
  const auto& t = config_.train;
  const double micro_batches = static_cast<double>(accumulation_ * world_.size());
  const double loss = stats.lm_loss / micro_batches, aux = stats.aux_loss / micro_batches,
               z = stats.z_loss / micro_batches;
  const double dropped = stats.assignments > 0 ? stats.dropped / stats.assignments : 0.0;
  const double tokens_per_s = static_cast<double>(t.global_batch_size * config_.data.seq_len) / seconds;
  const double gflops = flops_per_token_ * tokens_per_s / world_.size() / 1e9;  // per rank
  const double mfu = gflops * 1e9 / gemm_peak_;
  if (step % t.log_every == 0 || step == 1 || step == t.steps) {
    // From this process's steps alone: a checkpoint's seconds may belong to another machine, or (an upcycled
    // or imported one) to no steps at all.
    const double eta = (elapsed_ - elapsed_at_start_) / static_cast<double>(step - start_step_) *
                       static_cast<double>(t.steps - step);
    spdlog::info("step {}/{} | loss {:.4f} | aux {:.4f} | lr {:.2e} | grad norm {:.3f} | dropped {:.2f}% | "
                 "{:.0f} tokens/s | {:.1f} GFLOP/s per rank, MFU {:.1f}% | ETA {}",
                 step, t.steps, loss, aux, stats.lr, stats.grad_norm, 100 * dropped, tokens_per_s, gflops, 100 * mfu,
                 format_duration(eta));
  }
  if (!metrics_) return;
  nlohmann::json per_layer = nlohmann::json::array();
  const at::Tensor counts_LE = stats.tokens_per_expert_LE.round().to(at::kLong).contiguous();
  for (int64_t l = 0; l < counts_LE.size(0); ++l) {
    const int64_t* row = counts_LE[l].data_ptr<int64_t>();
    per_layer.push_back(std::vector<int64_t>(row, row + counts_LE.size(1)));
  }
  nlohmann::json record = {{"kind", "train"},
                           {"step", step},
                           {"loss", loss},
                           {"aux_loss", aux},
                           {"z_loss", z},
                           {"lr", stats.lr},
                           {"grad_norm", stats.grad_norm},
                           {"grad_norm_dense", std::sqrt(stats.grad_sq_replicated)},
                           {"grad_norm_expert", std::sqrt(stats.grad_sq_expert)},
                           {"tokens_per_s", tokens_per_s},
                           {"tokens", step * t.global_batch_size * config_.data.seq_len},
                           {"train_seconds", pending.elapsed},
                           {"model_flops_per_token", flops_per_token_},
                           {"gflops_per_rank", gflops},
                           {"mfu", mfu},
                           {"dropped_fraction", dropped},
                           {"tokens_per_expert", per_layer}};
  if (stats.skipped) record["skipped"] = true;
  if (t.profile) {
    const PhaseTimes& p = pending.phases;
    // Forward phases run again in backward under recomputation: they count where they run, and
    // backward includes them.
    record["phase_ms"] = {{"attention", p.attention}, {"router", p.route},      {"permute", p.permute},
                          {"dispatch", p.dispatch},   {"experts", p.experts},   {"combine", p.combine},
                          {"unpermute", p.unpermute}, {"backward", p.backward}, {"grad_sync", p.grad_sync},
                          {"optimizer", p.optimizer}, {"data", p.data},         {"exchange", p.exchange}};
  }
  metrics_->write(record);
}

double Trainer::evaluate() {
  const auto& t = config_.train;
  return evaluate_windows(model_, *val_data_, eval_offsets(val_data_->size(), config_.data.seq_len, t.eval_windows),
                          config_.data.seq_len, t.micro_batch_size, world_);
}

}  // namespace moe
