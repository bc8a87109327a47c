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
  // One broadcast from rank 0: a random token (a name no earlier run or other job can have left) and
  // rank 0's host, for the message.
  at::Tensor from0 = at::zeros({16 + 64}, at::kByte);
  auto* bytes = from0.data_ptr<uint8_t>();
  if (comm.rank() == 0) {
    std::random_device random;
    for (int i = 0; i < 16; ++i) bytes[i] = static_cast<uint8_t>(random());
    const std::string h = host_name().substr(0, 63);
    std::copy(h.begin(), h.end(), bytes + 16);
  }
  comm.broadcast(from0, 0);
  const std::string writer(reinterpret_cast<const char*>(bytes + 16));
  std::string name = ".moe-shared-check-";
  for (int i = 0; i < 16; ++i) {
    char hex[3];
    std::snprintf(hex, sizeof hex, "%02x", bytes[i]);
    name += hex;
  }
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
