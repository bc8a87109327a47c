#include "train/cli/tokenizer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "train/cli/atomic_write.h"

namespace moe {

int token_element_size(const std::string& dtype) {
  if (dtype == "uint16") return 2;
  if (dtype == "uint32") return 4;
  throw Error("unknown token dtype '" + dtype + "' (uint16 | uint32)", /*bad_input=*/true);
}

int64_t tokenize_files(const std::vector<std::string>& files, const std::string& out, const std::string& dtype) {
  const int element_size = token_element_size(dtype);
  for (const std::string& file : files) {  // before anything is written
    MOE_INPUT_CHECK(std::filesystem::is_regular_file(file), "cannot read ", file, ": ",
                    std::filesystem::is_directory(file) ? "it is a directory" : "no such file");
  }
  int64_t count = 0;
  write_file_atomically(out, [&](std::ostream& os) {
    std::vector<char> buffer(1 << 20), encoded;
    for (const std::string& file : files) {
      std::ifstream is(file, std::ios::binary);
      MOE_INPUT_CHECK(is.good(), "cannot read ", file, ": ", std::strerror(errno));
      while (is) {
        is.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        const std::streamsize n = is.gcount();
        encoded.assign(static_cast<size_t>(n) * element_size, 0);
        for (std::streamsize i = 0; i < n; ++i) encoded[i * element_size] = buffer[i];  // little-endian, < 256
        os.write(encoded.data(), static_cast<std::streamsize>(encoded.size()));
        count += n;
      }
      MOE_INPUT_CHECK(!is.bad(), "cannot read ", file, ": ", std::strerror(errno));
    }
  });
  return count;
}

}  // namespace moe
