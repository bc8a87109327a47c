#pragma once
// What a run reports: <out_dir>/metrics.jsonl (one JSON object per line, flushed as written, so a
// crashed run keeps every step it finished) and the progress line.
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace moe {

class MetricsLog {
 public:
  // keep_through_step < 0: creates or truncates `path`. Otherwise (a resumed run) keeps the records of
  // steps up to keep_through_step, drops any later ones (written after that checkpoint by the run that
  // died) and appends from there.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  void write(const nlohmann::json& record);

 private:
  std::string path_;
  std::ofstream os_;
};

// "1h02m", "3m05s", "12s".
std::string format_duration(double seconds);

}  // namespace moe
