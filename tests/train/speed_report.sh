#!/usr/bin/env bash
# The speed report: every train record carries moe plan's model FLOPs per token, GFLOP/s per rank (that
# count x tokens/s / ranks) and MFU against the GEMM peak the engine measured at start; the progress line
# shows them. train.profile adds every phase's milliseconds, without changing a number of the run.
source "$(dirname "$0")/lib.sh"
make_test_data
args=("$SRC/configs/tiny.yaml" "${DATA[@]}" --set parallel.expert_parallel_size=2 --set train.steps=4 --set train.log_every=1)
moe_train 2 "${args[@]}" --set train.out_dir="$WORK/plain" 2>"$WORK/plain.log" || { cat "$WORK/plain.log"; fail "plain run"; }
moe_train 2 "${args[@]}" --set train.out_dir="$WORK/prof" --set train.profile=true 2>"$WORK/prof.log" ||
  { cat "$WORK/prof.log"; fail "profiled run"; }
grep -q "GEMM peak [0-9.]* GFLOP/s" "$WORK/plain.log" || fail "no GEMM peak in the log"
grep -q "GFLOP/s per rank, MFU [0-9.]*%" "$WORK/plain.log" || fail "no GFLOP/s and MFU on the progress line"
flops=$("$MOE" plan "$SRC/configs/tiny.yaml" --world 2 --set parallel.expert_parallel_size=2 --json |
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["flops_per_token"])')
"$PYTHON" - "$WORK/plain/metrics.jsonl" "$WORK/prof/metrics.jsonl" "$flops" <<'PY' || fail "speed fields"
import json, sys
plain, prof, flops = sys.argv[1], sys.argv[2], float(sys.argv[3])
phases = {"attention", "router", "permute", "dispatch", "experts", "combine", "unpermute", "backward", "grad_sync",
          "optimizer", "data", "exchange"}
for path, profiled in ((plain, False), (prof, True)):
    for r in (json.loads(line) for line in open(path)):
        if r["kind"] != "train":
            continue
        assert r["model_flops_per_token"] == flops, (r["model_flops_per_token"], flops)
        want = flops * r["tokens_per_s"] / 2 / 1e9
        assert abs(r["gflops_per_rank"] - want) <= 1e-9 * want, (r["gflops_per_rank"], want)
        assert 0 < r["mfu"] < 2, r["mfu"]
        if not profiled:
            assert "phase_ms" not in r
            continue
        p = r["phase_ms"]
        assert set(p) == phases, sorted(p)
        assert all(p[k] > 0 for k in ("attention", "router", "experts", "dispatch", "combine", "backward",
                                     "grad_sync", "optimizer", "exchange")), p
print(f"model FLOPs per token {flops:.0f}; GFLOP/s and MFU consistent; 12 phases when profiled")
PY
cmp <(strip_timing "$WORK/plain/metrics.jsonl") <(strip_timing "$WORK/prof/metrics.jsonl" | sed 's/"phase_ms":{[^}]*},//') ||
  fail "profiling changed the run's numbers"
echo "speed report: fields present and consistent; profiling leaves the run bit for bit"
