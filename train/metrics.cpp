#include "train/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace moe {

MetricsLog::MetricsLog(const std::string& path) : path_(path), os_(path, std::ios::trunc) {
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
