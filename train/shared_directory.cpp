#include "train/shared_directory.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

namespace moe {
namespace {

std::string host_name() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

}  // namespace

void check_shared_directory(Communicator& comm, const std::string& dir) {
  // A name no earlier run or other job can have left: a random token drawn by rank 0.
  at::Tensor token = at::zeros({2}, at::kLong);
  if (comm.rank() == 0) {
    std::random_device random;
    for (int i = 0; i < 2; ++i) token[i] = static_cast<int64_t>(random()) << 31 ^ static_cast<int64_t>(random());
  }
  comm.broadcast(token, 0);
  at::Tensor host0 = at::zeros({64}, at::kByte);  // rank 0's host, for the message
  if (comm.rank() == 0) {
    const std::string h = host_name().substr(0, 63);
    std::copy(h.begin(), h.end(), host0.data_ptr<uint8_t>());
  }
  comm.broadcast(host0, 0);
  const std::string writer(reinterpret_cast<const char*>(host0.data_ptr<uint8_t>()));
  char name[64];
  std::snprintf(name, sizeof name, ".moe-shared-check-%llx%llx", static_cast<unsigned long long>(token[0].item<int64_t>()),
                static_cast<unsigned long long>(token[1].item<int64_t>()));
  const std::string path = dir + "/" + name;
  const auto remove_token = [&] {
    std::error_code ec;
    if (comm.rank() == 0) std::filesystem::remove(path, ec);
  };
  try {
    all_ranks_succeed(comm, [&] {
      if (comm.rank() != 0) return;
      std::ofstream os(path, std::ios::trunc);
      os << name << " " << host_name() << "\n";
      os.close();
      MOE_INPUT_CHECK(os.good(), "train.out_dir ", dir, ": cannot write ", path);
    });
    all_ranks_succeed(comm, [&] {
      if (comm.rank() == 0) return;
      std::ifstream is(path);
      const std::string text((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
      MOE_INPUT_CHECK(is.good() || is.eof(), "train.out_dir ", dir, " is not shared: rank ", comm.rank(), " on ",
                      host_name(), " cannot see the file ", name,
                      " that rank 0 on ", writer, " just wrote there. Every rank must see one run directory: put train.out_dir on "
                      "a filesystem all hosts share (docs/parallel.md, Runs across hosts)");
      MOE_INPUT_CHECK(text.rfind(name, 0) == 0, "train.out_dir ", dir, " is not shared: rank ", comm.rank(), " on ",
                      host_name(), " reads other contents in ", name, " than rank 0 on ", writer, " wrote (docs/parallel.md)");
    });
  } catch (...) {
    remove_token();
    throw;
  }
  remove_token();
}

}  // namespace moe
