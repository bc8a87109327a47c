#pragma once
// `moe report`: one self-contained HTML page of one or more run directories: the records of their
// metrics.jsonl and their config.yaml embedded as data, drawn as inline SVG by the page's own script
// (nothing fetched). A run still in progress reports what it has written (a last line cut short by the
// writer is left out). docs/cli.md lists what it shows.
#include <string>
#include <vector>

namespace moe {

// The page for `run_dirs`, in that order. Bad input (a missing metrics.jsonl or config.yaml, a line that
// is not a JSON object) is an Error naming the file and line.
std::string make_report(const std::vector<std::string>& run_dirs);

// make_report written to `out` through a temporary file renamed into place.
void write_report(const std::vector<std::string>& run_dirs, const std::string& out);

}  // namespace moe
