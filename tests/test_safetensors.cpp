#include "train/checkpoint/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "core/check.h"

namespace moe {
namespace {

std::string temp(const std::string& name) { return ::testing::TempDir() + name; }

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream os(path, std::ios::binary | std::ios::trunc);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) os.put(static_cast<char>(n >> (8 * i)));
  os << header << data;
}

std::string error_of(const std::string& path) {
  try {
    read_safetensors(path);
  } catch (const Error& e) {
    EXPECT_TRUE(e.bad_input());
    return e.what();
  }
  return "no error";
}

TEST(Crc32, MatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32("123456789", 9), 0xCBF43926u);  // the CRC-32/ISO-HDLC check value
  EXPECT_EQ(crc32("6789", 4, crc32("12345", 5)), 0xCBF43926u);
}

TEST(Safetensors, RoundTripsEveryDtypeExactly) {
  const NamedTensors tensors = {{"f32", at::randn({3, 4})},
                                {"f64", at::randn({2}, at::kDouble)},
                                {"bf16", at::randn({5}).to(at::kBFloat16)},
                                {"i64", at::arange(6, at::kLong).view({2, 3})},
                                {"u8", at::arange(7, at::kByte)},
                                {"empty", at::empty({0, 3})},
                                {"scalar", at::full({}, 2.5)},
                                {"strided", at::randn({4, 3}).t()}};
  uint32_t crc = 0;
  const int64_t bytes = write_safetensors(temp("all.safetensors"), tensors, {{"format", "pt"}}, &crc);
  const std::vector<char> file = read_file(temp("all.safetensors"));
  EXPECT_EQ(bytes, static_cast<int64_t>(file.size()));
  EXPECT_EQ(crc, crc32(file.data(), file.size()));
  const Safetensors back = read_safetensors(temp("all.safetensors"));
  EXPECT_EQ(back.metadata.at("format"), "pt");
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const at::Tensor& r = back.tensors.at(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(r.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(r, t)) << name;
  }
}

// The layout, checked by hand: 8-byte length, header padded to 8 bytes, data in order.
TEST(Safetensors, WritesTheSpecifiedLayout) {
  write_safetensors(temp("one.safetensors"), {{"a", at::tensor({1.0f, 2.0f})}}, {});
  std::ifstream is(temp("one.safetensors"), std::ios::binary);
  const std::string blob((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(blob[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(blob.substr(8, n).find(R"({"a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}})"), 0u);
  float values[2];
  std::memcpy(values, blob.data() + 8 + n, 8);
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], 2.0f);
}

TEST(Safetensors, RefusesDamagedFilesNamingFileAndTensor) {
  const std::string p = temp("bad.safetensors");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234");
  EXPECT_NE(error_of(p).find("tensor a: data_offsets [0, 8] lie outside the 4 data bytes"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_NE(error_of(p).find("tensor a: shape [3] of \"F32\" needs 12 bytes"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
            "12345678");
  EXPECT_NE(error_of(p).find("overlap"), std::string::npos);
  write_raw(p, R"({"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}})", "1234");
  EXPECT_NE(error_of(p).find("unsupported dtype"), std::string::npos);
  write_raw(p, "{not json", "");
  EXPECT_NE(error_of(p).find("not valid JSON"), std::string::npos);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << std::string("\xff\xff\xff\xff\x00\x00\x00\x00{}", 10);
  EXPECT_NE(error_of(p).find("runs past the end of the file"), std::string::npos);
  std::ofstream(p, std::ios::binary | std::ios::trunc) << "abc";
  EXPECT_NE(error_of(p).find(p + ": truncated"), std::string::npos);
}

TEST(Safetensors, RefusesBytesNoTensorOwnsAndShapesLargerThanTheFile) {
  const std::string p = temp("untiled.safetensors");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "1234junk");
  EXPECT_NE(error_of(p).find("4 bytes after the last tensor belong to no tensor"), std::string::npos) << error_of(p);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "12345678");
  EXPECT_NE(error_of(p).find("data bytes [0, 4) belong to no tensor"), std::string::npos) << error_of(p);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", "1234");
  EXPECT_NE(error_of(p).find("is larger than the 4 data bytes"), std::string::npos) << error_of(p);
  write_raw(p, R"({"a":{"dtype":"F32","shape":[0,4294967296],"data_offsets":[0,0]}})", "");
  EXPECT_EQ(error_of(p), "no error");  // empty tensors are fine, whatever their other sizes
}

}  // namespace
}  // namespace moe
