#include "train/checkpoint/manifest.h"

#include <cstdio>
#include <set>
#include <vector>

#include "core/check.h"
#include "train/checkpoint/crc32.h"

namespace moe {
namespace {

// More ranks than any job runs: a bound on the loops the layout sizes, before any of them runs.
constexpr int64_t kMaxWorldSize = int64_t{1} << 20;

uint32_t manifest_checksum(const nlohmann::json& manifest) {
  nlohmann::json unsealed = manifest;
  unsealed.erase("manifest_crc32");
  const std::string text = unsealed.dump();  // nlohmann's objects keep their keys sorted
  return crc32(text.data(), text.size());
}

}  // namespace

std::string experts_file(int64_t ep_rank) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "experts-%05lld.safetensors", static_cast<long long>(ep_rank));
  return buf;
}

void seal_manifest(nlohmann::json& manifest) { manifest["manifest_crc32"] = manifest_checksum(manifest); }

nlohmann::json parse_manifest(const std::string& text, const std::string& path) {
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": not valid JSON (at byte " + std::to_string(e.byte) + ")", /*bad_input=*/true);
  } catch (const nlohmann::json::exception&) {  // a number beyond a double's range
    throw Error(path + ": holds a number out of range", /*bad_input=*/true);
  }
  MOE_INPUT_CHECK(m.is_object() && m.contains("format") && m["format"] == "moe-checkpoint", path,
                  ": not a moe checkpoint manifest");
  MOE_INPUT_CHECK(m.contains("version") && m["version"].is_number_integer(), path, ": version is missing");
  MOE_INPUT_CHECK(m["version"] == kCheckpointVersion, path, ": format version ", m["version"].dump(),
                  ", this moe reads version ", kCheckpointVersion);
  MOE_INPUT_CHECK(m.contains("manifest_crc32") && m["manifest_crc32"].is_number_unsigned() &&
                      m["manifest_crc32"].get<uint64_t>() == manifest_checksum(m),
                  path, ": manifest_crc32 is missing or does not match the manifest (altered or corrupted)");
  for (const char* key : {"step", "world_size", "expert_parallel_size", "num_experts"}) {
    MOE_INPUT_CHECK(m.contains(key) && m[key].is_number_integer(), path, ": ", key, " is missing or not an integer");
  }
  // Every number is checked before it is used: a layout from these divides and sizes loops.
  const int64_t step = m["step"].get<int64_t>(), world = m["world_size"].get<int64_t>(),
                ep = m["expert_parallel_size"].get<int64_t>(), experts = m["num_experts"].get<int64_t>();
  MOE_INPUT_CHECK(step >= 0, path, ": step ", step, " is negative");
  MOE_INPUT_CHECK(world >= 1 && world <= kMaxWorldSize, path, ": world_size ", world, " is not in [1, ",
                  kMaxWorldSize, "]");
  MOE_INPUT_CHECK(ep >= 1 && ep <= world && world % ep == 0, path, ": expert_parallel_size ", ep, " and world_size ",
                  world, " are not a layout (1 <= expert_parallel_size, dividing world_size)");
  MOE_INPUT_CHECK(experts >= 0 && experts % ep == 0, path, ": num_experts ", experts,
                  " is not a multiple of expert_parallel_size ", ep);
  MOE_INPUT_CHECK(m.contains("files") && m["files"].is_array(), path, ": files is missing");
  std::set<std::string> listed;
  for (const auto& f : m["files"]) {
    MOE_INPUT_CHECK(f.is_object() && f.contains("path") && f["path"].is_string() && f.contains("bytes") &&
                        f["bytes"].is_number_unsigned() && f["bytes"].get<uint64_t>() <= INT64_MAX &&
                        f.contains("crc32") && f["crc32"].is_number_unsigned() &&
                        f["crc32"].get<uint64_t>() <= UINT32_MAX,
                    path, ": a file entry needs path, bytes and crc32 (unsigned 32-bit)");
    const std::string name = f["path"].get<std::string>();
    MOE_INPUT_CHECK(!name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
                        name.find('\0') == std::string::npos && name != "." && name != "..",
                    path, ": names a path outside the checkpoint: ", name);
    MOE_INPUT_CHECK(listed.insert(name).second, path, ": lists ", name, " twice");
  }
  std::vector<std::string> required = {"model.safetensors", "rng.safetensors", "config.yaml", "trainer.json"};
  for (int64_t j = 0; j < ep; ++j) required.push_back(experts_file(j));
  for (const auto& r : required) MOE_INPUT_CHECK(listed.count(r) == 1, path, ": does not list ", r);
  return m;
}

}  // namespace moe
