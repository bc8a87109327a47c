// libFuzzer target: the manifest reader (train/checkpoint/manifest.cpp) on any bytes as manifest.json.
// Mutated bytes almost never carry a matching seal, so an input that is a JSON object is also re-sealed
// and read again: the checks behind the seal get fuzzed too. A refusal is a moe::Error; anything else
// escaping is a finding.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "core/check.h"
#include "train/checkpoint/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    moe::parse_manifest(text, "manifest.json");
  } catch (const moe::Error&) {
  }
  nlohmann::json m = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!m.is_object()) return 0;
  moe::seal_manifest(m);
  try {
    moe::parse_manifest(m.dump(), "manifest.json");
  } catch (const moe::Error&) {
  }
  return 0;
}
