#pragma once
// Generation: text sampled from a trained model token by token, each new token's forward reading the
// keys and values of the positions before it from a KV cache (`moe generate`).
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/transformer.h"
#include "parallel/communicator.h"

namespace moe {

struct SamplingOptions {
  int64_t max_new_tokens = 128;
  double temperature = 1.0;  // logits / temperature before the softmax; 0: greedy (the most likely token)
  double top_p = 1.0;        // nucleus sampling: among the most likely tokens whose probabilities reach top_p
  uint64_t seed = 0;
};

// The next token from `logits` [vocab] under `options`, drawing from `generator` (a CPU generator).
int64_t sample_token(const at::Tensor& logits, const SamplingOptions& options, at::Generator& generator);

// Continues `prompt` by up to options.max_new_tokens tokens, fewer when model.max_seq_len is reached;
// returns the new ones. Collective over `world`: every rank of an expert-parallel model calls it, rank 0
// samples and broadcasts each token (so the ranks stay in step whatever their rounding). use_cache false
// runs the whole sequence again for every token: the cache's reference.
std::vector<int64_t> generate(Transformer& model, const std::vector<int64_t>& prompt, const SamplingOptions& options,
                              Communicator& world, bool use_cache = true);

// `moe generate`: the model of checkpoint `dir` (experts sharded over the job's ranks) continues the
// bytes of `prompt` (byte-level tokens, each within the model's vocabulary); returns the new bytes.
// Collective over `world` (MPI).
std::string generate_from_checkpoint(const std::string& dir, const std::string& prompt, const SamplingOptions& options,
                                     Communicator& world, int local_rank);

}  // namespace moe
