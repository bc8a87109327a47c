#include "train/checkpoint/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <utility>

#include "core/check.h"

namespace moe {

int64_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, int64_t> sizes = {{"F32", 4}, {"F64", 8}, {"BF16", 2}, {"F16", 2},
                                                       {"I64", 8}, {"I32", 4}, {"U8", 1},   {"BOOL", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

SafetensorsHeader parse_safetensors_header(const std::string& path, const char* file, size_t size) {
  const auto file_size = static_cast<int64_t>(size);
  MOE_INPUT_CHECK(file_size >= 8, path, ": truncated (", file_size, " bytes, no safetensors header)");
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<unsigned char>(file[i])) << (8 * i);
  MOE_INPUT_CHECK(length <= static_cast<uint64_t>(file_size - 8), path, ": header length ", length,
                  " runs past the end of the file (", file_size, " bytes)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file + 8, file + 8 + length);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": the safetensors header is not valid JSON (at byte " + std::to_string(8 + e.byte - 1) + ")",
                /*bad_input=*/true);
  } catch (const nlohmann::json::exception&) {  // a number beyond a double's range
    throw Error(path + ": the safetensors header holds a number out of range", /*bad_input=*/true);
  }
  MOE_INPUT_CHECK(header.is_object(), path, ": the safetensors header is not a JSON object");
  SafetensorsHeader out;
  out.data_offset = 8 + static_cast<int64_t>(length);
  const int64_t data_size = file_size - out.data_offset;

  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      MOE_INPUT_CHECK(entry.is_object(), path, ": __metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        MOE_INPUT_CHECK(v.is_string(), path, ": __metadata__.", k, " is not a string");
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor " + name;
    MOE_INPUT_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                        entry.contains("data_offsets") && entry["dtype"].is_string() && entry["shape"].is_array() &&
                        entry["data_offsets"].is_array() && entry["data_offsets"].size() == 2,
                    where, ": needs dtype, shape and data_offsets [begin, end]");
    SafetensorsEntry t;
    t.name = name;
    t.dtype = entry["dtype"].get<std::string>();
    const int64_t element = safetensors_dtype_size(t.dtype);
    MOE_INPUT_CHECK(element > 0, where, ": unsupported dtype ", entry["dtype"].dump());
    int64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      MOE_INPUT_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where, ": bad shape ", entry["shape"].dump());
      t.shape.push_back(d.get<int64_t>());
      // No shape larger than the file survives this, so the products below cannot overflow.
      MOE_INPUT_CHECK(t.shape.back() == 0 || numel <= data_size / t.shape.back(), where, ": shape ",
                      entry["shape"].dump(), " is larger than the ", data_size, " data bytes");
      numel *= t.shape.back();
    }
    const auto& offsets = entry["data_offsets"];
    MOE_INPUT_CHECK(offsets[0].is_number_integer() && offsets[1].is_number_integer(), where,
                    ": data_offsets must be integers");
    t.begin = offsets[0].get<int64_t>();
    t.end = offsets[1].get<int64_t>();
    MOE_INPUT_CHECK(0 <= t.begin && t.begin <= t.end && t.end <= data_size, where, ": data_offsets [", t.begin, ", ",
                    t.end, "] lie outside the ", data_size, " data bytes");
    const int64_t bytes = numel * element;  // numel <= data_size: no overflow
    MOE_INPUT_CHECK(t.end - t.begin == bytes, where, ": shape ", entry["shape"].dump(), " of ", entry["dtype"].dump(),
                    " needs ", bytes, " bytes, data_offsets give ", t.end - t.begin);
    ranges.emplace_back(t.begin, t.end);
    out.tensors.push_back(std::move(t));
  }
  // The tensors tile the data section exactly, as the format requires: no overlap, no hole, nothing after.
  std::sort(ranges.begin(), ranges.end());
  int64_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    MOE_INPUT_CHECK(begin >= covered, path, ": tensors overlap in the data section");
    MOE_INPUT_CHECK(begin == covered, path, ": data bytes [", covered, ", ", begin, ") belong to no tensor");
    covered = end;
  }
  MOE_INPUT_CHECK(covered == data_size, path, ": ", data_size - covered,
                  " bytes after the last tensor belong to no tensor");
  return out;
}

}  // namespace moe
