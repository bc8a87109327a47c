#pragma once
// Token data: flat little-endian uint16 or uint32 arrays (the .bin files nanoGPT- and Megatron-style
// preprocessors write), memory-mapped. Each training sample is a window of seq_len + 1 tokens at an
// offset drawn from a counter-based generator of (seed, step, sample): the global batch of a step does
// not depend on the number of ranks, and any step's batch can be drawn again without replaying the
// steps before it (resuming needs nothing but the step).
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

class TokenFile {
 public:
  // Checks (moe::Error, bad input, naming the file): readable, size a multiple of the element size, at
  // least min_tokens tokens, every token < vocab_size.
  TokenFile(const std::string& path, const std::string& dtype, int64_t vocab_size, int64_t min_tokens);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return num_tokens_; }
  const std::string& path() const { return path_; }
  int64_t token(int64_t i) const;
  // Windows of `length` tokens starting at each offset, as int64 [offsets.size(), length] on `device`.
  // For a GPU they are gathered into pinned memory and copied without making the host wait.
  at::Tensor windows(const std::vector<int64_t>& offsets, int64_t length, at::Device device = at::kCPU) const;

 private:
  std::string path_;
  int element_size_ = 2;
  int64_t num_tokens_ = 0;
  const unsigned char* data_ = nullptr;
  size_t mapped_bytes_ = 0;
};

// The offsets of the global batch of `step`, sample by sample: global_batch_size windows of
// seq_len + 1 tokens, uniform over the file.
std::vector<int64_t> batch_offsets(uint64_t seed, int64_t step, int64_t global_batch_size, int64_t seq_len,
                                   int64_t num_tokens);

// The samples of the global batch this rank runs as micro-batch `micro` (0-based) of a step:
// rank r holds samples [r * per_rank, (r + 1) * per_rank), per_rank = global / world, and its
// micro-batch m is [m * micro_batch_size, (m + 1) * micro_batch_size) of those.
std::vector<int64_t> rank_slice(const std::vector<int64_t>& global_offsets, int rank, int world_size,
                                int64_t micro_batch_size, int64_t micro);

// Validation windows: `count` windows of seq_len + 1 tokens spread evenly over the file, first and
// last included; count 0: every non-overlapping window (targets cover the file once).
std::vector<int64_t> eval_offsets(int64_t num_tokens, int64_t seq_len, int64_t count);

}  // namespace moe
