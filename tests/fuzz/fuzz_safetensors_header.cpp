// libFuzzer target: the safetensors header parser (train/checkpoint/safetensors_header.cpp) on any bytes
// as a whole file. A refusal is a moe::Error; anything else escaping is a finding.
#include <cstdint>

#include "core/check.h"
#include "train/checkpoint/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    moe::parse_safetensors_header("fuzz.safetensors", reinterpret_cast<const char*>(data), size);
  } catch (const moe::Error&) {
  }
  return 0;
}
