#include "train/cli/report.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "train/cli/atomic_write.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

std::string read_file(const std::string& path) {
  MOE_INPUT_CHECK(fs::is_regular_file(path), "report: ", path, " is missing (is this a run directory?)");
  std::ifstream is(path, std::ios::binary);
  MOE_INPUT_CHECK(is.good(), "report: cannot read ", path, ": ", std::strerror(errno));
  std::ostringstream text;
  text << is.rdbuf();
  return text.str();
}

// The records of a metrics.jsonl. A last line without its newline is one the writer has not finished
// (a run in progress) and is left out; any other line must be a JSON object.
nlohmann::json read_records(const std::string& path) {
  const std::string text = read_file(path);
  nlohmann::json records = nlohmann::json::array();
  size_t start = 0;
  for (int64_t line = 1; start < text.size(); ++line) {
    const size_t end = text.find('\n', start);
    if (end == std::string::npos) break;
    nlohmann::json r = nlohmann::json::parse(text.begin() + static_cast<std::ptrdiff_t>(start),
                                             text.begin() + static_cast<std::ptrdiff_t>(end), nullptr, false);
    MOE_INPUT_CHECK(r.is_object() && r.contains("kind"), "report: ", path, ":", line,
                    ": not a metrics record (a JSON object with a \"kind\")");
    records.push_back(std::move(r));
    start = end + 1;
  }
  return records;
}

// The page: the data as JSON in a script element, and the script that draws it. Everything the page shows
// is read from the records as they are; the script only picks and plots.
constexpr const char* kHead = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>moe report</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 16px 0 4px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 8px; overflow: auto; max-height: 320px; font-size: 12px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
</style></head><body>
<h1>moe report</h1>
<p id="runs"></p>
<div id="report"></div>
<script type="application/json" id="data">)HTML";

constexpr const char* kTail = R"HTML(</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent, text) {
  const e = tag === "svg" || ["g", "line", "path", "rect", "text", "title", "polyline", "circle"].includes(tag)
      ? document.createElementNS(NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function ticks(lo, hi, n) {
  const span = hi - lo || Math.abs(hi) || 1, raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
  return +v.toPrecision(4) + "";
}

// A line chart: series [{name, points: [[x, y], ...]}], drawn into `parent` as one <svg data-chart=id>.
function lineChart(parent, id, title, xlabel, ylabel, series) {
  const fig = el("figure", {}, parent);
  el("figcaption", {}, fig, title);
  const W = 440, H = 260, L = 56, R = 12, T = 10, B = 40;
  // The legend flows under the plot, each entry as wide as its name (long run names take a line each).
  const legend = [];
  let lx = L, ly = H + 4;
  for (const s of series) {
    const w = 30 + 6.5 * s.name.length;
    if (lx > L && lx + w > W - R) { lx = L; ly += 18; }
    legend.push([lx, ly]);
    lx += w;
  }
  const svg = el("svg", {width: W, height: series.length ? ly + 18 : H, "data-chart": id}, fig);
  const pts = series.flatMap(s => s.points).filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (pts.length === 0) { el("text", {x: L, y: T + 20}, svg, "no data yet"); return svg; }
  let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
  let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1 && y0 === 0) y1 = 1;  // nothing dropped, say: a fraction's axis, not one around zero
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1; y1 += Math.abs(y1) * 0.1; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (const t of ticks(x0, x1, 5)) {
    el("line", {x1: sx(t), x2: sx(t), y1: T, y2: H - B, stroke: "#eee"}, svg);
    el("text", {x: sx(t), y: H - B + 14, "text-anchor": "middle"}, svg, fmt(t));
  }
  for (const t of ticks(y0, y1, 5)) {
    el("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#eee"}, svg);
    el("text", {x: L - 4, y: sy(t) + 4, "text-anchor": "end"}, svg, fmt(t));
  }
  el("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#999"}, svg);
  el("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#999"}, svg);
  el("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle"}, svg, xlabel);
  el("text", {x: 12, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})`},
     svg, ylabel);
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const good = s.points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    const g = el("g", {"data-series": s.name}, svg);
    if (good.length > 1) {
      el("polyline", {points: good.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: color,
                      "stroke-width": 1.5}, g);
    }
    for (const p of good.length <= 60 ? good : []) el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color}, g);
    const [lx, ly] = legend[i];
    el("rect", {x: lx, y: ly, width: 12, height: 12, fill: color}, svg);
    el("text", {x: lx + 16, y: ly + 10}, svg, s.name);
  });
  return svg;
}

// Expert load over steps: a column per telemetry interval, a row per expert, the colour the expert's
// routed assignments over the interval's mean: white at the mean, bluer down to 0, redder up to 2x.
function heatmap(parent, id, title, steps, loads) {
  const fig = el("figure", {}, parent);
  el("figcaption", {}, fig, title);
  const E = loads.length ? loads[0].length : 0, cols = loads.length;
  const W = 440, L = 56, T = 6, B = 30, cell = Math.max(4, Math.min(20, Math.floor(200 / Math.max(E, 1))));
  const H = T + cell * E + B, w = (W - L - 12) / Math.max(cols, 1);
  const svg = el("svg", {width: W, height: H, "data-chart": id}, fig);
  const color = r => {
    const c = v => Math.round(255 * Math.max(0, Math.min(1, v)));
    const t = Math.min(Math.abs(r - 1), 1);
    return r <= 1 ? `rgb(${c(1 - 0.8 * t)},${c(1 - 0.5 * t)},255)` : `rgb(255,${c(1 - 0.8 * t)},${c(1 - 0.8 * t)})`;
  };
  loads.forEach((row, j) => {
    const mean = row.reduce((a, b) => a + b, 0) / row.length;
    row.forEach((v, e) => {
      const r = el("rect", {x: L + j * w, y: T + e * cell, width: Math.ceil(w), height: cell,
                            fill: color(mean > 0 ? v / mean : 0), "data-load": v}, svg);
      el("title", {}, r, `step ${steps[j]}, expert ${e}: ${v} (${mean > 0 ? (v / mean).toFixed(2) : 0} of the mean)`);
    });
  });
  for (let e = 0; e < E; e += Math.ceil(E / 8)) {
    el("text", {x: L - 4, y: T + e * cell + cell / 2 + 4, "text-anchor": "end"}, svg, "expert " + e);
  }
  if (cols) {
    el("text", {x: L, y: H - 10}, svg, "step " + steps[0]);
    el("text", {x: W - 12, y: H - 10, "text-anchor": "end"}, svg, "step " + steps[cols - 1]);
  }
  return svg;
}

const report = document.getElementById("report");
const kinds = (run, kind) => run.records.filter(r => r.kind === kind);
const last = a => a[a.length - 1];
const median = a => { const s = [...a].sort((x, y) => x - y); return s.length ? s[Math.floor(s.length / 2)] : NaN; };
document.getElementById("runs").textContent = DATA.runs.map(r => r.dir).join(", ");

// The summary: the last values of each run, rounded for reading; each cell's data-value (and tooltip)
// holds the value as metrics.jsonl has it.
const summary = el("table", {id: "summary"}, el("section", {}, report));
function cell(row, field, value, shown) {
  if (value === undefined) return el("td", {"data-field": field}, row, "-");
  return el("td", {"data-field": field, "data-value": String(value), title: String(value)}, row, shown(value));
}
const head = el("tr", {}, summary);
for (const h of ["run", "steps", "train loss", "validation loss", "tokens", "tokens/s (median)", "MFU (last)"]) {
  el("th", {}, head, h);
}
for (const run of DATA.runs) {
  const train = kinds(run, "train"), ev = kinds(run, "eval"), row = el("tr", {"data-run": run.name}, summary);
  const t = last(train), e = last(ev);
  el("td", {}, row, run.name);
  cell(row, "step", t && t.step, String);
  cell(row, "loss", t && t.loss, v => v.toFixed(4));
  cell(row, "eval_loss", e && e.loss, v => v.toFixed(4));
  cell(row, "tokens", t && t.tokens, String);
  cell(row, "tokens_per_s", train.length ? median(train.map(r => r.tokens_per_s)) : undefined, v => v.toFixed(0));
  cell(row, "mfu", t && t.mfu, v => (100 * v).toFixed(1) + "%");
}

function section(title, note) {
  const s = el("section", {}, report);
  el("h2", {}, s, title);
  if (note) el("p", {}, s, note);
  return el("div", {class: "charts"}, s);
}

const runs = DATA.runs;
const both = (f) => runs.flatMap(run => [
  {name: run.name + " train", points: kinds(run, "train").map(r => f(r, run))},
  {name: run.name + " validation", points: kinds(run, "eval").map(r => f(r, run))}]);
const loss = section("Loss");
lineChart(loss, "loss-tokens", "Loss against tokens", "tokens", "loss (nats/token)", both(r => [r.tokens, r.loss]));
lineChart(loss, "loss-time", "Loss against training time", "seconds", "loss (nats/token)",
          both(r => [r.train_seconds, r.loss]));
const speed = section("Speed");
lineChart(speed, "tokens-per-s", "Tokens per second", "step", "tokens/s",
          runs.map(run => ({name: run.name, points: kinds(run, "train").map(r => [r.step, r.tokens_per_s])})));
lineChart(speed, "mfu", "Model FLOPs utilisation", "step", "MFU",
          runs.map(run => ({name: run.name, points: kinds(run, "train").map(r => [r.step, r.mfu])})));

for (const run of runs) {
  const moe = kinds(run, "moe");
  if (!moe.length) continue;
  const layers = moe[0].layers.map(l => l.layer);
  const perLayer = (f) => layers.map((layer, i) => ({name: "layer " + layer, points: moe.map(m => [m.step, f(m.layers[i])])}));
  const routing = section(`Routing: ${run.name}`);
  lineChart(routing, `dropped-${run.name}`, "Dropped fraction per MoE layer", "step", "dropped", perLayer(l => l.dropped_fraction));
  lineChart(routing, `overload-${run.name}`, "Overload (busiest expert over the mean)", "step", "max / mean",
            perLayer(l => l.overload));
  lineChart(routing, `entropy-${run.name}`, "Router entropy", "step", "nats", perLayer(l => l.router_entropy));
  lineChart(routing, `a2a-${run.name}`, "All-to-all share of the step, per rank", "step", "share",
            moe[0].ranks.map((r, i) => ({name: "rank " + r.rank, points: moe.map(m => [m.step, m.ranks[i].a2a_share])})));
  const load = section(`Expert load: ${run.name}`, "Each column one log interval; each cell an expert's routed " +
                      "assignments against the layer's mean: white at the mean, bluer below it down to none, " +
                      "redder above it up to twice the mean or more. Hover a cell for its count.");
  layers.forEach((layer, i) => heatmap(load, `load-${run.name}-${layer}`, `Layer ${layer}: routed assignments per expert`,
                                       moe.map(m => m.step), moe.map(m => m.layers[i].routed)));
}

const configs = section("Config");
for (const run of runs) {
  const fig = el("figure", {}, configs);
  el("figcaption", {}, fig, run.name + "/config.yaml");
  el("pre", {"data-config": run.name}, fig, run.config);
}
document.body.setAttribute("data-ready", "true");
</script>
</body></html>
)HTML";

}  // namespace

std::string make_report(const std::vector<std::string>& run_dirs) {
  MOE_INPUT_CHECK(!run_dirs.empty(), "report: no run directory given");
  nlohmann::json runs = nlohmann::json::array();
  for (const std::string& dir : run_dirs) {
    MOE_INPUT_CHECK(fs::is_directory(dir), "report: ", dir, " is not a directory");
    std::string name = fs::path(dir).lexically_normal().filename().string();
    if (name.empty()) name = fs::path(dir).lexically_normal().parent_path().filename().string();
    for (const auto& r : runs) {
      if (r["name"] == name) name = dir;  // two runs of one name: the whole path tells them apart
    }
    runs.push_back({{"name", name},
                    {"dir", dir},
                    {"config", read_file(dir + "/config.yaml")},
                    {"records", read_records(dir + "/metrics.jsonl")}});
  }
  std::string data = nlohmann::json{{"runs", runs}}.dump();
  // Inside <script>, "</" could close the element early: JSON allows "<\/" for it.
  for (size_t at = data.find("</"); at != std::string::npos; at = data.find("</", at + 3)) data.insert(at + 1, "\\");
  return kHead + data + kTail;
}

void write_report(const std::vector<std::string>& run_dirs, const std::string& out) {
  const std::string page = make_report(run_dirs);
  write_file_atomically(out, [&](std::ostream& os) { os << page; });
}

}  // namespace moe
