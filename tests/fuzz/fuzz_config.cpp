// libFuzzer target: the config loader (train/cli/config.cpp) on any bytes as a config file. A refusal is
// a moe::Error (bad input); anything else escaping (a yaml-cpp exception, a crash, a sanitizer report)
// is a finding. tests/fuzz/fuzz.sh builds and runs it.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "train/cli/config.h"

namespace {

// The loader reads a path (it names the file and line in its messages): one scratch file per process.
const std::string& scratch_path() {
  static const std::string path = [] {
    char name[] = "/tmp/moe-fuzz-config-XXXXXX";
    const int fd = mkstemp(name);
    if (fd < 0) std::abort();
    close(fd);
    return std::string(name);
  }();
  return path;
}

struct RemoveAtExit {
  ~RemoveAtExit() { std::remove(scratch_path().c_str()); }
} remove_at_exit;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FILE* f = std::fopen(scratch_path().c_str(), "wb");
  if (!f) std::abort();
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    moe::load_config(scratch_path(), {}, 2);
  } catch (const moe::Error&) {
  }
  return 0;
}
