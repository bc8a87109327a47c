#include "train/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/check.h"

namespace moe {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  if (keep_through_step >= 0) {
    std::string kept;
    std::ifstream is(path);
    for (std::string line; std::getline(is, line);) {
      const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (record.is_object() && record.value("step", int64_t{-1}) <= keep_through_step) kept += line + "\n";
    }
    std::ofstream tmp(path + ".tmp", std::ios::trunc);
    tmp << kept;
    tmp.close();
    MOE_CHECK(tmp.good(), "cannot write ", path, ".tmp: ", std::strerror(errno), " (", path, " is untouched)");
    std::filesystem::rename(path + ".tmp", path);
  }
  os_.open(path, keep_through_step >= 0 ? std::ios::app : std::ios::trunc);
  MOE_CHECK(os_.good(), "cannot write ", path, ": ", std::strerror(errno));
}

void MetricsLog::write(const nlohmann::json& record) {
  os_ << record.dump() << '\n';
  os_.flush();
  MOE_CHECK(os_.good(), "cannot write ", path_, ": ", std::strerror(errno));
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::lround(std::max(seconds, 0.0)));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", static_cast<long>(s / 3600), static_cast<long>(s % 3600 / 60));
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", static_cast<long>(s / 60), static_cast<long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lds", static_cast<long>(s));
  }
  return buf;
}

}  // namespace moe
