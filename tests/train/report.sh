#!/usr/bin/env bash
# `moe report` in a real browser: tiny (MoE, 2 ranks) and its dense twin train a few steps, moe report
# overlays them in one page, and headless Chromium (Debian's chromium, which scripts/setup.sh installs)
# opens it from the file system with the network off. Checked: no console error (and a page that throws
# is caught, so the check can fail), every chart and series there, the page's numbers equal to
# metrics.jsonl's, a run still being written reported up to its last whole line, and a screenshot that is
# not blank. Skipped (77) without chromium.
source "$(dirname "$0")/lib.sh"
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[ -n "$CHROMIUM" ] || { echo "report: no chromium (scripts/setup.sh installs it); skipped"; exit 77; }
make_test_data
common=("${DATA[@]}" --set train.steps=6 --set train.log_every=2 --set train.eval_every=3)
moe_train 2 "$SRC/configs/tiny.yaml" "${common[@]}" --set parallel.expert_parallel_size=2 --set moe.capacity_factor=1.0 \
  --set train.out_dir="$WORK/tiny" 2>"$WORK/tiny.log" || { cat "$WORK/tiny.log"; fail "tiny"; }
moe_train 2 "$SRC/configs/tiny.yaml" "${common[@]}" --set moe.num_experts=0 --set train.out_dir="$WORK/dense" \
  2>"$WORK/dense.log" || { cat "$WORK/dense.log"; fail "dense tiny"; }
"$MOE" report "$WORK/tiny" "$WORK/dense" -o "$WORK/report.html" 2>"$WORK/report.log" || { cat "$WORK/report.log"; fail "moe report"; }
grep -q -e 'src="http' -e "href=\"http" -e '@import' "$WORK/report.html" && fail "the page fetches something"

# browse PAGE OUT: the page's DOM after its script ran (OUT.dom) and its console (OUT.console).
browse() {
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run --no-proxy-server \
    --proxy-server='127.0.0.1:9' --user-data-dir="$WORK/profile" --enable-logging=stderr --v=0 \
    --virtual-time-budget=10000 --dump-dom "file://$1" > "$2.dom" 2> "$2.console" || true
}
console_errors() { grep -E 'CONSOLE|Uncaught' "$1.console" | grep -v -e 'DevTools' || true; }

# A page whose script throws must show up in the console, or the check below proves nothing.
sed 's|<script>|<script>throw new Error("deliberate");</script><script>|' "$WORK/report.html" > "$WORK/broken.html"
browse "$WORK/broken.html" "$WORK/broken"
console_errors "$WORK/broken" | grep -q deliberate || { cat "$WORK/broken.console"; fail "a throwing page left no console error"; }

browse "$WORK/report.html" "$WORK/page"
[ -z "$(console_errors "$WORK/page")" ] || { console_errors "$WORK/page"; fail "console errors in the report"; }
"$PYTHON" - "$WORK/page.dom" "$WORK/tiny/metrics.jsonl" "$WORK/dense/metrics.jsonl" <<'PY' || fail "the page's content"
import html.parser, json, sys

dom, tiny, dense = sys.argv[1:]

class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.charts, self.series, self.cells, self.ready, self.configs = [], [], {}, False, []
        self.values = {}
        self.cell, self.rects = None, 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body" and a.get("data-ready") == "true": self.ready = True
        if tag == "svg" and "data-chart" in a: self.charts.append(a["data-chart"])
        if tag == "g" and "data-series" in a: self.series.append(a["data-series"])
        if tag == "rect" and "data-load" in a: self.rects += 1
        if tag == "pre" and "data-config" in a: self.configs.append(a["data-config"])
        if tag == "td" and "data-field" in a:
            self.cell = a["data-field"]
            self.values[(self.run, self.cell)] = a.get("data-value")
        if tag == "tr" and "data-run" in a: self.run = a["data-run"]
    def handle_data(self, data):
        if self.cell:
            self.cells[(self.run, self.cell)] = data
            self.cell = None

p = Page()
p.feed(open(dom).read())
assert p.ready, "the script did not finish"
want = {"loss-tokens", "loss-time", "tokens-per-s", "mfu", "dropped-tiny", "overload-tiny", "entropy-tiny", "a2a-tiny",
        "load-tiny-0", "load-tiny-1"}
assert want <= set(p.charts), sorted(want - set(p.charts))
assert not any(c.endswith("-dense") for c in p.charts), p.charts  # no routing charts for a dense run
for s in ("tiny train", "tiny validation", "dense train", "dense validation", "layer 0", "layer 1", "rank 0", "rank 1"):
    assert s in p.series, (s, p.series)
assert sorted(p.configs) == ["dense", "tiny"], p.configs
for name, path in (("tiny", tiny), ("dense", dense)):
    records = [json.loads(line) for line in open(path)]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    tokens_per_s = sorted(r["tokens_per_s"] for r in train)[len(train) // 2]
    # Each cell holds metrics.jsonl's value exactly, and shows it rounded to `digits` (MFU in percent).
    for field, want, scale, digits in (("step", train[-1]["step"], 1, 0), ("tokens", train[-1]["tokens"], 1, 0),
                                       ("loss", train[-1]["loss"], 1, 4), ("eval_loss", evals[-1]["loss"], 1, 4),
                                       ("tokens_per_s", tokens_per_s, 1, 0), ("mfu", train[-1]["mfu"], 100, 1)):
        value, text = float(p.values[(name, field)]), p.cells[(name, field)].rstrip("%")
        assert value == want, (name, field, value, want)
        assert abs(float(text) - scale * want) <= 0.5 * 10 ** -digits + 1e-9, (name, field, text, want)
moe = [json.loads(line) for line in open(tiny) if '"kind":"moe"' in line]
assert p.rects == sum(len(m["layers"]) * len(m["layers"][0]["routed"]) for m in moe), p.rects
print(f"report: {len(p.charts)} charts, {len(p.series)} series, the summary equal to metrics.jsonl")
PY

# A run still being written: a last line cut short is left out, the rest reported.
mkdir "$WORK/live"
cp "$WORK/tiny/config.yaml" "$WORK/live/"
head -c -40 "$WORK/tiny/metrics.jsonl" > "$WORK/live/metrics.jsonl"
"$MOE" report "$WORK/live" -o "$WORK/live.html" 2>/dev/null || fail "moe report of a run in progress"
browse "$WORK/live.html" "$WORK/live"
[ -z "$(console_errors "$WORK/live")" ] || { console_errors "$WORK/live"; fail "console errors in the live report"; }
grep -q 'data-ready="true"' "$WORK/live.dom" || fail "the live report's script did not finish"

# Bad input: one message, exit 2, nothing written.
printf '{"kind":"train"}\nnot json\n' > "$WORK/live/metrics.jsonl"
rc=0
"$MOE" report "$WORK/live" -o "$WORK/bad.html" > "$WORK/bad.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "$WORK/live/metrics.jsonl:2: not a metrics record" "$WORK/bad.log" && [ ! -e "$WORK/bad.html" ] ||
  { cat "$WORK/bad.log"; fail "a bad metrics line: exit $rc"; }
rc=0
"$MOE" report "$WORK/nowhere" -o "$WORK/bad.html" > "$WORK/bad.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "$WORK/nowhere is not a directory" "$WORK/bad.log" || { cat "$WORK/bad.log"; fail "a missing run: exit $rc"; }

# The screenshot is not blank: most of a drawn page is white, but its lines, text and heatmaps are not.
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run --proxy-server='127.0.0.1:9' \
  --user-data-dir="$WORK/profile" --hide-scrollbars --window-size=1280,2400 --virtual-time-budget=10000 \
  --screenshot="$WORK/shot.png" "file://$WORK/report.html" > /dev/null 2>&1 || true
"$PYTHON" "$SRC/tests/train/png_ink.py" "$WORK/shot.png" 0.02 || fail "the screenshot is blank"
echo "report: checked in $("$CHROMIUM" --version 2>/dev/null | head -1)"
