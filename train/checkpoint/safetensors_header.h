#pragma once
// The header of a safetensors file, parsed and checked without libtorch (the fuzz target
// tests/fuzz/fuzz_safetensors_header.cpp runs it under ASan and UBSan): an 8-byte little-endian length,
// a JSON object {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then
// the data. Everything a damaged or hostile file could get wrong is refused as bad input naming the file
// and the tensor: the length against the file, the JSON, every dtype, every shape against its byte range,
// every range inside the data section, and the ranges tiling it exactly (no overlap, no hole, no tail).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // one of safetensors_dtype_size's names
  std::vector<int64_t> shape;
  int64_t begin = 0, end = 0;  // byte range in the data section
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // in the header's (sorted) name order
  std::map<std::string, std::string> metadata;
  int64_t data_offset = 0;  // where the data section starts in the file
};

// Bytes per element of a safetensors dtype we read and write (F32 F64 BF16 F16 I64 I32 U8 BOOL); 0 for
// any other name.
int64_t safetensors_dtype_size(const std::string& dtype);

// Parses and checks the header of a whole file's bytes; `path` names the file in errors.
SafetensorsHeader parse_safetensors_header(const std::string& path, const char* file, size_t size);

}  // namespace moe
