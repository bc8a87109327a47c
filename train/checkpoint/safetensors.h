#pragma once
// Safetensors files as tensors, read and written by our own code; nothing executable, nothing pickled.
// The header is parsed and checked by safetensors_header.h, free of libtorch.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "train/checkpoint/crc32.h"
#include "train/checkpoint/safetensors_header.h"

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

// fsync a file or a directory by path.
void fsync_path(const std::string& path);

}  // namespace moe
