#pragma once
// A checkpoint's manifest.json (docs/checkpoint-format.md): format, version, step, the parallel layout
// and every file with its bytes and CRC-32, sealed by a CRC-32 of its own. Parsed and checked whole
// without libtorch (the fuzz target tests/fuzz/fuzz_manifest.cpp runs it under ASan and UBSan): every
// number is range-checked before anything divides by it or loops over it.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace moe {

constexpr int kCheckpointVersion = 2;

// The file holding EP rank `ep_rank`'s experts: "experts-EEEEE.safetensors".
std::string experts_file(int64_t ep_rank);

// Sets manifest_crc32: the CRC-32 of the manifest without that key, serialised compactly with sorted keys
// (what Python's json.dumps(m, sort_keys=True, separators=(",", ":")) writes for it).
void seal_manifest(nlohmann::json& manifest);

// The manifest in `text`, checked: JSON, format, version, its seal, the layout (1 <= expert_parallel_size,
// dividing world_size and num_experts), each file a plain name inside the checkpoint with bytes and
// CRC-32, and every file a checkpoint must have listed. `path` names the file in errors (bad input).
nlohmann::json parse_manifest(const std::string& text, const std::string& path);

}  // namespace moe
