#include "train/evaluation.h"

#include <memory>

#include "core/check.h"
#include "parallel/parallel_dims.h"
#include "parallel/watchdog.h"
#include "train/checkpoint/checkpoint.h"
#include "train/checkpoint/checkpoint_state.h"
#include "train/cli/config.h"
#include "train/device.h"

namespace moe {

double evaluate_windows(Transformer& model, const TokenFile& file, const std::vector<int64_t>& offsets,
                        int64_t L, int64_t B, Communicator& world, at::Tensor* logits_out) {
  const auto n = static_cast<int64_t>(offsets.size());
  const int64_t W = world.size();
  // Every rank runs the same number of forwards (the all-to-alls of EP pair them up); windows past the
  // end repeat the last one and weigh 0.
  const int64_t rounds = (n + W * B - 1) / (W * B);
  const at::Device device = model->parameter_records().front().tensor.device();
  at::Tensor loss_sum = at::zeros({1}, at::dtype(at::kDouble).device(device));
  int64_t counted = 0;  // windows of this rank that count
  at::Tensor all_logits;  // [n, L, V]: this rank's windows filled, the others 0 until the all-reduce
  if (logits_out) all_logits = at::zeros({n, L, model->options().vocab_size}, at::dtype(at::kFloat).device(device));
  const bool was_training = model->is_training();
  model->eval();
  {
    at::NoGradGuard no_grad;
    for (int64_t round = 0; round < rounds; ++round) {
      std::vector<int64_t> chosen(B);
      std::vector<double> weight(B, 0.0);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i = round * W * B + world.rank() * B + b;
        chosen[b] = offsets[std::min(i, n - 1)];
        if (i < n) {
          weight[b] = 1.0;
          ++counted;
        }
      }
      const at::Tensor windows = file.windows(chosen, L + 1, device);
      const at::Tensor logits = model->forward(windows.narrow(1, 0, L)).logits;
      const at::Tensor per_token =
          at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.narrow(1, 1, L).reshape({-1}),
                                 {}, at::Reduction::None)
              .view({B, L});
      loss_sum += (per_token.to(at::kDouble) * at::tensor(weight, at::kDouble).view({B, 1}).to(device)).sum();
      for (int64_t b = 0; b < B && logits_out; ++b) {
        const int64_t i = round * W * B + world.rank() * B + b;
        if (i < n) all_logits[i].copy_(logits[b]);
      }
    }
  }
  model->train(was_training);
  at::Tensor totals =
      at::cat({loss_sum, at::full({1}, static_cast<double>(counted * L), at::dtype(at::kDouble).device(device))});
  world.all_reduce(totals, ReduceOp::kSum);
  if (logits_out) {
    world.all_reduce(all_logits, ReduceOp::kSum);  // each window is one rank's: the sum is a gather
    *logits_out = all_logits.to(at::kCPU);
  }
  const at::Tensor host = totals.to(at::kCPU);  // host sync: the result
  return host[0].item<double>() / host[1].item<double>();
}

InferenceModel load_for_inference(const std::string& dir, Communicator& world, int local_rank,
                                  const std::function<void(const Config&)>& checks) {
  InferenceModel m;
  RankPlacement placement;
  all_ranks_succeed(world, [&] {
    verify_checkpoint(dir);
    m.config = load_config(dir + "/config.yaml", {}, 0);
    Config& config = m.config;
    const int64_t E = config.model.moe.router.num_experts;
    MOE_INPUT_CHECK(E == 0 || E % world.size() == 0, "the number of ranks (", world.size(),
                    ") must divide moe.num_experts (", E, ") of ", dir, "/config.yaml");
    config.parallel.expert_parallel_size = E > 0 ? world.size() : 1;
    config.model.moe.router.capacity_factor.reset();  // dropless
    config.model.moe.router.eval_capacity_factor.reset();
    checks(config);
    placement = select_placement(config, local_rank);
  });
  watchdog::start(m.config.parallel.timeout_s, m.config.parallel.slow_timeout_s, world.rank());
  // The checkpoint's backend; `world` (MPI) agrees on the inputs.
  m.comm = make_communicator(placement, m.config);
  const ParallelDims dims(m.comm->size(), m.comm->rank(), static_cast<int>(m.config.parallel.expert_parallel_size),
                          m.config.model.moe.router.num_experts);
  m.groups = make_process_groups(*m.comm, dims);
  m.model = Transformer(m.config.model, ExpertParallel{dims, m.groups.ep.get(), m.comm.get()});
  m.model->to(placement.device);
  CheckpointState state = make_checkpoint_state(m.model, nullptr);
  {
    watchdog::Slow loading;  // every rank reads and checks every file
    all_ranks_succeed(world, [&] { load_checkpoint(dir, state, dims); });
  }
  m.model->eval();
  return m;
}

EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data, int64_t seq_len, int64_t windows,
                               int64_t batch, Communicator& world, int local_rank, bool with_logits) {
  std::unique_ptr<TokenFile> file;
  InferenceModel m = load_for_inference(dir, world, local_rank, [&](const Config& config) {
    MOE_INPUT_CHECK(seq_len >= 1 && windows >= 1, "eval: --seq-len (", seq_len, ") and --windows (", windows,
                    ") must be positive");
    MOE_INPUT_CHECK(seq_len <= config.model.max_seq_len, "eval: --seq-len ", seq_len, " exceeds model.max_seq_len (",
                    config.model.max_seq_len, ") of ", dir, "/config.yaml");
    file = std::make_unique<TokenFile>(data, config.data.dtype, config.model.vocab_size, windows * seq_len + 1);
  });
  std::vector<int64_t> offsets(windows);
  for (int64_t i = 0; i < windows; ++i) offsets[i] = i * seq_len;
  EvalResult result;
  result.tokens = windows * seq_len;
  result.loss = evaluate_windows(m.model, *file, offsets, seq_len, batch, *m.comm,
                                 with_logits ? &result.logits : nullptr);
  return result;
}

}  // namespace moe
