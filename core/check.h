#pragma once
// Errors and the checking macros every layer uses. Library code throws; `main` catches once, logs with
// the rank and aborts the job, so that no peer waits forever on a rank that died.
#include <sstream>
#include <stdexcept>
#include <string>

namespace moe {

// Something the caller did wrong or something the machine could not do. `bad_input` marks errors in
// what the user gave us (config, data, checkpoint, command line): `moe` exits 2 for those, 1 otherwise.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, bool bad_input = false)
      : std::runtime_error(what), bad_input_(bad_input) {}
  bool bad_input() const { return bad_input_; }

 private:
  bool bad_input_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace moe

// MOE_CHECK(cond, "message parts", value, ...): throws moe::Error naming the failed condition.
#define MOE_CHECK(cond, ...)                                                                    \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      throw ::moe::Error(::moe::detail::concat(__VA_ARGS__, " [", #cond, " at ", __FILE__, ":", \
                                               __LINE__, "]"));                                 \
    }                                                                                           \
  } while (0)

// MOE_INPUT_CHECK: the same, for errors in what the user supplied (exit code 2, no source location:
// the message itself must name the file, key or field).
#define MOE_INPUT_CHECK(cond, ...)                                              \
  do {                                                                          \
    if (!(cond)) {                                                              \
      throw ::moe::Error(::moe::detail::concat(__VA_ARGS__), /*bad_input=*/true); \
    }                                                                           \
  } while (0)
