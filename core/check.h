#pragma once
// Errors and the checking macros every layer uses. Library code throws; `main` catches once, logs with
// the rank and aborts the job, so that no peer waits forever on a rank that died.
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

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

// An option outside its range or inconsistent with another: names the key, so that the config loader
// can say where it was set. Bad input (exit 2).
class OptionError : public Error {
 public:
  OptionError(std::string key, std::string detail)
      : Error(key + " " + detail, /*bad_input=*/true), key_(std::move(key)), detail_(std::move(detail)) {}
  const std::string& key() const { return key_; }
  const std::string& detail() const { return detail_; }  // the message without the key

 private:
  std::string key_, detail_;
};

// The shortest decimal that reads back as the same double, so a resolved config loads back exactly.
inline std::string format_double(double v) {
  for (int precision = 6; precision <= 17; ++precision) {
    std::ostringstream os;
    os.precision(precision);
    os << v;
    if (std::stod(os.str()) == v) return os.str();
  }
  return std::to_string(v);
}

// An enum's values as configs spell them: each option enum has one such table, found by
// enum_names(E{}) beside the enum, which parsing and printing share.
template <typename E>
using EnumNames = std::vector<std::pair<const char*, E>>;
template <typename E>
std::string enum_name(E value) {
  for (const auto& [name, v] : enum_names(E{})) {
    if (v == value) return name;
  }
  return "?";
}

// The one range check of every option table (visit_model_options, visit_config_options): a visitor
// that throws OptionError for the first value outside its declared range.
struct RangeCheck {
  template <typename T>
  void integer(const char* key, const T& v, int64_t min) const {
    if (static_cast<int64_t>(v) < min) {
      throw OptionError(key, "must be at least " + std::to_string(min) + ", got " + std::to_string(v));
    }
  }
  // A double >= min (> min when !min_inclusive), and < max.
  void real(const char* key, double v, double min, bool min_inclusive, double max) const {
    if (std::isfinite(v) && (min_inclusive ? v >= min : v > min) && v < max) return;
    std::string range = (min_inclusive ? "must be >= " : "must be > ") + format_double(min);
    if (std::isfinite(max)) range += " and < " + format_double(max);
    throw OptionError(key, range + ", got " + format_double(v));
  }
  void optional_real(const char* key, const std::optional<double>& v, double min) const {
    if (v && !(std::isfinite(*v) && *v >= min)) {
      throw OptionError(key, "must be >= " + format_double(min) + " or null, got " + format_double(*v));
    }
  }
  void text(const char* key, const std::string& v) const {
    if (v.empty()) throw OptionError(key, "must not be empty");
  }
  template <typename T>
  void boolean(const char*, const T&) const {}
  template <typename T>
  void seed(const char*, const T&) const {}
  template <typename E>
  void choice(const char*, const E&) const {}  // an enum holds only named values
  void choice(const char* key, const std::string& v, const std::vector<std::string>& names) const {
    std::string list;
    for (const auto& n : names) {
      if (v == n) return;
      list += (list.empty() ? "" : " | ") + n;
    }
    throw OptionError(key, "must be one of " + list + ", got '" + v + "'");
  }
};

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
