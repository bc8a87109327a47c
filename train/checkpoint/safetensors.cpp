#include "train/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/check.h"

namespace moe {
namespace {

const std::map<at::ScalarType, std::string>& dtype_names() {
  static const std::map<at::ScalarType, std::string> names = {
      {at::kFloat, "F32"}, {at::kDouble, "F64"}, {at::kBFloat16, "BF16"}, {at::kHalf, "F16"},
      {at::kLong, "I64"},  {at::kInt, "I32"},    {at::kByte, "U8"},       {at::kBool, "BOOL"}};
  return names;
}

// Slicing-by-8 tables: table[0] is the byte-wise CRC-32 table, table[k] advances it by k more zero bytes,
// so 8 bytes cost 8 lookups and no per-bit work (several times the byte-at-a-time loop).
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
CrcTables make_crc_tables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  static const CrcTables t = make_crc_tables();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (; size >= 8; size -= 8, p += 8) {
    const uint32_t one = (static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                          static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24) ^ crc;
    crc = t[7][one & 0xff] ^ t[6][(one >> 8) & 0xff] ^ t[5][(one >> 16) & 0xff] ^ t[4][one >> 24] ^
          t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
  }
  for (; size > 0; --size, ++p) crc = t[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  MOE_CHECK(fd >= 0, "cannot open ", path, " to fsync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  MOE_CHECK(rc == 0, "fsync ", path, ": ", std::strerror(errno));
}

int64_t write_safetensors(const std::string& path, const NamedTensors& tensors,
                          const std::map<std::string, std::string>& metadata, uint32_t* crc) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const auto it = dtype_names().find(t.scalar_type());
    MOE_CHECK(it != dtype_names().end(), "safetensors: ", name, " has unsupported dtype ", t.scalar_type());
    MOE_CHECK(!header.contains(name), "safetensors: tensor name ", name, " given twice");
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const int64_t bytes = c.numel() * static_cast<int64_t>(c.element_size());
    header[name] = {{"dtype", it->second}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data 8-byte aligned, as Hugging Face writes
  const uint64_t length = text.size();
  unsigned char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(length >> (8 * i));

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  MOE_CHECK(fd >= 0, "cannot create ", path, ": ", std::strerror(errno));
  uint32_t sum = 0;
  const auto put = [&](const void* p, size_t n) {
    sum = crc32(p, n, sum);
    const auto* bytes = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, bytes, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const std::string why = std::strerror(errno);
        ::close(fd);
        throw Error("cannot write " + path + ": " + why);
      }
      bytes += w;
      n -= static_cast<size_t>(w);
    }
  };
  put(prefix, 8);
  put(text.data(), text.size());
  for (const at::Tensor& c : data) put(c.data_ptr(), c.numel() * c.element_size());
  const int rc = ::fsync(fd);
  ::close(fd);
  MOE_CHECK(rc == 0, "fsync ", path, ": ", std::strerror(errno));
  if (crc) *crc = sum;
  return static_cast<int64_t>(8 + length) + offset;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream is(path, std::ios::binary | std::ios::ate);
  MOE_INPUT_CHECK(is.good(), "cannot read ", path, ": ", std::strerror(errno));
  std::vector<char> bytes(static_cast<size_t>(is.tellg()));
  is.seekg(0);
  is.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  MOE_INPUT_CHECK(is.good() || bytes.empty(), "cannot read ", path, ": ", std::strerror(errno));
  return bytes;
}

Safetensors read_safetensors(const std::string& path) { return parse_safetensors(path, read_file(path)); }

Safetensors parse_safetensors(const std::string& path, const std::vector<char>& file) {
  const auto file_size = static_cast<int64_t>(file.size());
  MOE_INPUT_CHECK(file_size >= 8, path, ": truncated (", file_size, " bytes, no safetensors header)");
  uint64_t length = 0;
  for (int i = 0; i < 8; ++i) length |= static_cast<uint64_t>(static_cast<unsigned char>(file[i])) << (8 * i);
  MOE_INPUT_CHECK(length <= static_cast<uint64_t>(file_size - 8), path, ": header length ", length,
                  " runs past the end of the file (", file_size, " bytes)");
  const char* const data = file.data() + 8 + length;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file.data() + 8, data);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": the safetensors header is not valid JSON (at byte " + std::to_string(8 + e.byte - 1) + ")",
                /*bad_input=*/true);
  }
  MOE_INPUT_CHECK(header.is_object(), path, ": the safetensors header is not a JSON object");
  const int64_t data_size = file_size - 8 - static_cast<int64_t>(length);

  Safetensors out;
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
    at::ScalarType type = at::kFloat;
    bool known = false;
    for (const auto& [t, n] : dtype_names()) {
      if (n == entry["dtype"].get<std::string>()) {
        type = t;
        known = true;
      }
    }
    MOE_INPUT_CHECK(known, where, ": unsupported dtype ", entry["dtype"].dump());
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (const auto& d : entry["shape"]) {
      MOE_INPUT_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, where, ": bad shape ", entry["shape"].dump());
      shape.push_back(d.get<int64_t>());
      // No shape larger than the file survives this, so the product below cannot overflow.
      MOE_INPUT_CHECK(shape.back() == 0 || numel <= data_size / shape.back(), where, ": shape ",
                      entry["shape"].dump(), " is larger than the ", data_size, " data bytes");
      numel *= shape.back();
    }
    const auto& offsets = entry["data_offsets"];
    MOE_INPUT_CHECK(offsets[0].is_number_integer() && offsets[1].is_number_integer(), where,
                    ": data_offsets must be integers");
    const auto begin = offsets[0].get<int64_t>(), end = offsets[1].get<int64_t>();
    MOE_INPUT_CHECK(0 <= begin && begin <= end && end <= data_size, where, ": data_offsets [", begin, ", ", end,
                    "] lie outside the ", data_size, " data bytes");
    const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(type));
    MOE_INPUT_CHECK(end - begin == bytes, where, ": shape ", entry["shape"].dump(), " of ", entry["dtype"].dump(),
                    " needs ", bytes, " bytes, data_offsets give ", end - begin);
    ranges.emplace_back(begin, end);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
    if (bytes > 0) std::memcpy(t.data_ptr(), data + begin, static_cast<size_t>(bytes));
    out.tensors[name] = t;
  }
  // The tensors tile the data section exactly, as the format requires: no overlap, no hole, nothing after.
  std::sort(ranges.begin(), ranges.end());
  int64_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    MOE_INPUT_CHECK(begin >= covered, path, ": tensors overlap in the data section");
    MOE_INPUT_CHECK(begin == covered, path, ": data bytes [", covered, ", ", begin, ") belong to no tensor");
    covered = end;
  }
  MOE_INPUT_CHECK(covered == data_size, path, ": ", data_size - covered, " bytes after the last tensor belong to no tensor");
  return out;
}

}  // namespace moe
