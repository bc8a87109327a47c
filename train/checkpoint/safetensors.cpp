#include "train/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

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

}  // namespace

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
  const SafetensorsHeader header = parse_safetensors_header(path, file.data(), file.size());
  Safetensors out;
  out.metadata = header.metadata;
  for (const SafetensorsEntry& e : header.tensors) {
    at::ScalarType type = at::kFloat;
    for (const auto& [t, n] : dtype_names()) {
      if (n == e.dtype) type = t;
    }
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(type));
    if (e.end > e.begin) {
      std::memcpy(t.data_ptr(), file.data() + header.data_offset + e.begin, static_cast<size_t>(e.end - e.begin));
    }
    out.tensors[e.name] = t;
  }
  return out;
}

}  // namespace moe
