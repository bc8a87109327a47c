#pragma once
// The safetensors format, read and written by our own code: an 8-byte little-endian header length, a
// JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// raw little-endian data. Nothing executable, nothing pickled. Reading checks everything a damaged or
// hostile file could get wrong (header length, JSON, dtypes, shapes against byte ranges, ranges inside
// the file and not overlapping) and names the file and the tensor in its error (bad input).
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

struct Safetensors {
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Writes `tensors` (any of float32, float64, bfloat16, float16, int64, int32, uint8, bool; CPU) to
// `path` and fsyncs it. Returns the file size in bytes and fills *crc with its CRC-32.
int64_t write_safetensors(const std::string& path, const NamedTensors& tensors,
                          const std::map<std::string, std::string>& metadata, uint32_t* crc = nullptr);

Safetensors read_safetensors(const std::string& path);
// The same, from the file's bytes already in memory; `path` names the file in errors.
Safetensors parse_safetensors(const std::string& path, const std::vector<char>& file);
// A whole file's bytes.
std::vector<char> read_file(const std::string& path);

// CRC-32 (IEEE, as zlib) of a byte range, continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

// fsync a file or a directory by path.
void fsync_path(const std::string& path);

}  // namespace moe
