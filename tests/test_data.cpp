#include "train/data.h"
#include "train/cli/tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <numeric>

#include "core/check.h"

namespace moe {
namespace {

std::string write_bytes(const std::string& name, const std::vector<unsigned char>& bytes) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream os(path, std::ios::binary | std::ios::trunc);
  os.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// The message of the bad-input error `fn` throws.
template <typename Fn>
std::string bad_input_message(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_TRUE(e.bad_input());
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(TokenFile, ReadsLittleEndianUint16AndUint32) {
  const auto u16 = write_bytes("u16.bin", {0x01, 0x00, 0xff, 0x00, 0x34, 0x12});
  TokenFile a(u16, "uint16", 0x10000, 1);
  ASSERT_EQ(a.size(), 3);
  EXPECT_EQ(a.token(0), 1);
  EXPECT_EQ(a.token(1), 255);
  EXPECT_EQ(a.token(2), 0x1234);
  const auto u32 = write_bytes("u32.bin", {0x78, 0x56, 0x34, 0x12, 0x02, 0, 0, 0});
  TokenFile b(u32, "uint32", 0x20000000, 2);
  EXPECT_EQ(b.token(0), 0x12345678);
  const at::Tensor w = b.windows({0}, 2);
  EXPECT_EQ(w[0][1].item<int64_t>(), 2);
}

TEST(TokenFile, RejectsBadFilesNamingThem) {
  const auto odd = write_bytes("odd.bin", {1, 0, 2});
  EXPECT_NE(bad_input_message([&] { TokenFile(odd, "uint16", 256, 1); }).find(odd + ": its size (3 bytes)"),
            std::string::npos);
  const auto shrt = write_bytes("short.bin", {1, 0, 2, 0});
  EXPECT_NE(bad_input_message([&] { TokenFile(shrt, "uint16", 256, 3); }).find(shrt + " holds 2 tokens, fewer"),
            std::string::npos);
  const auto big = write_bytes("big.bin", {1, 0, 0, 1});
  EXPECT_NE(bad_input_message([&] { TokenFile(big, "uint16", 256, 1); }).find("token 256 at position 1"),
            std::string::npos);
  EXPECT_NE(bad_input_message([] { TokenFile("/nonexistent.bin", "uint16", 256, 1); }).find("/nonexistent.bin"),
            std::string::npos);
}

TEST(BatchOffsets, DeterministicInRangeAndPerStep) {
  const auto a = batch_offsets(7, 3, 64, 16, 1000), b = batch_offsets(7, 3, 64, 16, 1000);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, batch_offsets(7, 4, 64, 16, 1000));
  EXPECT_NE(a, batch_offsets(8, 3, 64, 16, 1000));
  for (int64_t o : a) {
    EXPECT_GE(o, 0);
    EXPECT_LE(o + 17, 1000);  // a window of seq_len + 1 fits
  }
}

TEST(RankSlice, TheRanksTogetherHoldTheGlobalBatchInOrder) {
  std::vector<int64_t> global(24);
  std::iota(global.begin(), global.end(), 100);
  for (int world : {1, 2, 4}) {
    const int64_t micro = 3, accumulation = 24 / (micro * world);
    std::vector<int64_t> joined;
    for (int r = 0; r < world; ++r) {
      for (int64_t m = 0; m < accumulation; ++m) {
        const auto part = rank_slice(global, r, world, micro, m);
        joined.insert(joined.end(), part.begin(), part.end());
      }
    }
    EXPECT_EQ(joined, global) << "world " << world;
  }
}

TEST(EvalOffsets, EvenlySpreadOrEveryWindow) {
  EXPECT_EQ(eval_offsets(100, 9, 0), (std::vector<int64_t>{0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90}));
  EXPECT_EQ(eval_offsets(100, 9, 3), (std::vector<int64_t>{0, 45, 90}));
  EXPECT_EQ(eval_offsets(10, 9, 2), (std::vector<int64_t>{0, 0}));
}

TEST(Tokenize, BytesBecomeTokensInFileOrder) {
  const auto a = write_bytes("a.txt", {'h', 'i'}), b = write_bytes("b.txt", {0xc3, 0xa9});  // "é" in UTF-8
  const std::string out = ::testing::TempDir() + "tok.bin";
  EXPECT_EQ(tokenize_files({a, b}, out, "uint32"), 4);
  TokenFile f(out, "uint32", 256, 1);
  ASSERT_EQ(f.size(), 4);
  EXPECT_EQ(f.token(0), 'h');
  EXPECT_EQ(f.token(1), 'i');
  EXPECT_EQ(f.token(2), 0xc3);
  EXPECT_EQ(f.token(3), 0xa9);
  EXPECT_TRUE(bad_input_message([&] { tokenize_files({"/nonexistent.txt"}, out, "uint16"); }).find("/nonexistent.txt") !=
              std::string::npos);
  EXPECT_EQ(TokenFile(out, "uint32", 256, 1).size(), 4) << "a failed tokenize must not touch the old output";
}

}  // namespace
}  // namespace moe
