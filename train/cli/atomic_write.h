#pragma once
// Files the light `moe` writes (tokenized data, reports) appear whole or not at all: a reader, a second
// run or a crash sees the old file or the complete new one, never half of it. The checkpoint code has its
// own, behind libtorch, which `moe` does not load.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>

#include "core/check.h"

namespace moe {

// Calls `write` on PATH.tmp, then renames it over `path`. When `write` throws or the stream fails, the
// temporary file is removed and `path` is left as it was.
inline void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp";
  std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
  MOE_INPUT_CHECK(os.good(), "cannot write ", tmp, ": ", std::strerror(errno));
  try {
    write(os);
  } catch (...) {
    os.close();
    std::remove(tmp.c_str());
    throw;
  }
  os.close();
  if (!os.good() || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(tmp.c_str());
    MOE_INPUT_CHECK(false, "cannot write ", path, ": ", std::strerror(error));
  }
}

}  // namespace moe
