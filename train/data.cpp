#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/check.h"
#include "train/cli/tokenizer.h"

namespace moe {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

TokenFile::TokenFile(const std::string& path, const std::string& dtype, int64_t vocab_size, int64_t min_tokens)
    : path_(path), element_size_(token_element_size(dtype)) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  MOE_INPUT_CHECK(fd >= 0, "cannot open token file ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    MOE_INPUT_CHECK(false, "cannot stat token file ", path, ": ", std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    MOE_INPUT_CHECK(false, "token file ", path, " is not a regular file", S_ISDIR(st.st_mode) ? " (a directory)" : "");
  }
  const auto bytes = static_cast<int64_t>(st.st_size);
  if (bytes % element_size_ != 0 || bytes / element_size_ < min_tokens) {
    ::close(fd);
    MOE_INPUT_CHECK(bytes % element_size_ == 0, "token file ", path, ": its size (", bytes,
                    " bytes) is not a multiple of the element size (", element_size_, " bytes for ", dtype, ")");
    MOE_INPUT_CHECK(false, "token file ", path, " holds ", bytes / element_size_, " tokens, fewer than one window (",
                    min_tokens, " tokens)");
  }
  num_tokens_ = bytes / element_size_;
  mapped_bytes_ = static_cast<size_t>(bytes);
  void* p = ::mmap(nullptr, mapped_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  MOE_INPUT_CHECK(p != MAP_FAILED, "cannot map token file ", path, ": ", std::strerror(errno));
  data_ = static_cast<const unsigned char*>(p);
  for (int64_t i = 0; i < num_tokens_; ++i) {
    const int64_t t = token(i);
    if (t >= vocab_size) {
      ::munmap(const_cast<unsigned char*>(data_), mapped_bytes_);
      data_ = nullptr;
      MOE_INPUT_CHECK(false, "token file ", path, ": token ", t, " at position ", i,
                      " is not below model.vocab_size (", vocab_size, ")");
    }
  }
}

TokenFile::~TokenFile() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), mapped_bytes_);
}

int64_t TokenFile::token(int64_t i) const {
  const unsigned char* p = data_ + i * element_size_;
  if (element_size_ == 2) return static_cast<int64_t>(p[0]) | (static_cast<int64_t>(p[1]) << 8);
  return static_cast<int64_t>(p[0]) | (static_cast<int64_t>(p[1]) << 8) | (static_cast<int64_t>(p[2]) << 16) |
         (static_cast<int64_t>(p[3]) << 24);
}

at::Tensor TokenFile::windows(const std::vector<int64_t>& offsets, int64_t length, at::Device device) const {
  at::Tensor out = at::empty({static_cast<int64_t>(offsets.size()), length},
                             at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t offset : offsets) {
    MOE_CHECK(offset >= 0 && offset + length <= num_tokens_, "window [", offset, ", ", offset + length,
              ") is outside ", path_, " (", num_tokens_, " tokens)");
    for (int64_t i = 0; i < length; ++i) *dst++ = token(offset + i);
  }
  return device.is_cpu() ? out : out.to(device, /*non_blocking=*/true);
}

std::vector<int64_t> batch_offsets(uint64_t seed, int64_t step, int64_t global_batch_size, int64_t seq_len,
                                   int64_t num_tokens) {
  const auto positions = static_cast<uint64_t>(num_tokens - seq_len);  // offsets 0 .. N - (L + 1)
  std::vector<int64_t> out(global_batch_size);
  const uint64_t step_key = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(step)));
  for (int64_t g = 0; g < global_batch_size; ++g) {
    out[g] = static_cast<int64_t>(splitmix64(step_key + static_cast<uint64_t>(g)) % positions);
  }
  return out;
}

std::vector<int64_t> rank_slice(const std::vector<int64_t>& global, int rank, int world_size,
                                int64_t micro_batch_size, int64_t micro) {
  const int64_t per_rank = static_cast<int64_t>(global.size()) / world_size;
  const int64_t begin = rank * per_rank + micro * micro_batch_size;
  MOE_CHECK(begin + micro_batch_size <= (rank + 1) * per_rank, "micro-batch ", micro, " of ", micro_batch_size,
            " is beyond rank ", rank, "'s ", per_rank, " samples");
  return {global.begin() + begin, global.begin() + begin + micro_batch_size};
}

std::vector<int64_t> eval_offsets(int64_t num_tokens, int64_t seq_len, int64_t count) {
  const int64_t last = num_tokens - seq_len - 1;
  MOE_CHECK(last >= 0, "eval: ", num_tokens, " tokens hold no window of ", seq_len + 1);
  std::vector<int64_t> out;
  if (count == 0) {
    for (int64_t o = 0; o <= last; o += seq_len) out.push_back(o);
  } else {
    for (int64_t i = 0; i < count; ++i) out.push_back(count == 1 ? 0 : i * last / (count - 1));
  }
  return out;
}

}  // namespace moe
