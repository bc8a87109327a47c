#pragma once
// Evaluation: the mean next-token loss of a model over windows of a token file, during training and as
// `moe eval` of a checkpoint.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/transformer.h"
#include "parallel/communicator.h"
#include "parallel/parallel_dims.h"
#include "train/cli/config.h"
#include "train/data.h"

namespace moe {

// Mean next-token loss over windows of seq_len + 1 tokens at `offsets`, spread over the ranks in
// micro-batches (every rank runs the same number of forwards, as EP needs), in eval mode. Collective.
// With `logits` non-null, also every window's logits, [windows, seq_len, vocab] float32 on the CPU of
// every rank (gathered by an all-reduce: for comparisons on small evaluations).
double evaluate_windows(Transformer& model, const TokenFile& file, const std::vector<int64_t>& offsets,
                        int64_t seq_len, int64_t micro_batch_size, Communicator& world, at::Tensor* logits = nullptr);

struct EvalResult {
  double loss = 0;     // mean next-token cross-entropy, nats
  int64_t tokens = 0;  // predictions counted: windows x seq_len
  at::Tensor logits;   // with_logits: [windows, seq_len, vocab] float32, CPU
};

// A checkpoint's model ready for inference (`moe eval`, `moe generate`): its experts sharded over every
// rank of the job (whose number must divide moe.num_experts), dropless routing whatever the config's
// capacity factors, in eval mode, on the device and backend its config's train.device and
// parallel.backend pick for this rank (`local_rank` on its node).
struct InferenceModel {
  Config config;
  std::unique_ptr<Communicator> comm;  // the model's collectives, on the checkpoint's backend
  ProcessGroups groups;
  Transformer model{nullptr};
};
// `checks` runs with the config read, inside the ranks' agreement on the inputs: a bad input (moe::Error)
// there stops every rank with one message, before anything is loaded. Collective over `world` (MPI).
InferenceModel load_for_inference(const std::string& dir, Communicator& world, int local_rank,
                                  const std::function<void(const Config&)>& checks);

// `moe eval`: the model of checkpoint `dir` (any saved layout; experts sharded over this world, which
// must divide the number of experts), dropless, on windows i = 0 .. windows-1 of `data`, window i being
// tokens [i * seq_len, i * seq_len + seq_len] (seq_len + 1 tokens), on the device and backend its
// config's train.device and parallel.backend pick for this rank (`local_rank` on its node). Collective.
// `batch` windows go through each forward on each rank.
EvalResult evaluate_checkpoint(const std::string& dir, const std::string& data, int64_t seq_len, int64_t windows,
                               int64_t batch, Communicator& world, int local_rank, bool with_logits = false);

}  // namespace moe
