#!/usr/bin/env bash
# A non-finite loss or gradient (NaN injected into the last rank's loss at step 5 with the test knob
# MOE_FAULT_NONFINITE_STEP, and a run diverging at lr 1e6) is seen by every rank alike:
#   stop (default): exit 1, one message naming the step and what is not finite, no checkpoint after it,
#                   and every checkpoint written holds only finite values;
#   skip:           the step's update is dropped ("skipped" in metrics.jsonl) and the run goes on, until
#                   train.max_skipped_steps is exceeded.
source "$(dirname "$0")/lib.sh"
make_test_data
run() {  # NAME FAULT_STEP ARGS...: trains tiny on 2 ranks (EP 2) into $WORK/NAME, checkpoints every 2 steps
  local name=$1 fault=$2
  shift 2
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 -x MOE_FAULT_NONFINITE_STEP="$fault" \
    "$MOE" train "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.out_dir="$WORK/$name" --set train.steps=10 \
    --set checkpoint.every=2 --set checkpoint.keep_last=0 --set parallel.expert_parallel_size=2 "$@" > "$WORK/$name.log" 2>&1
}
all_finite() {  # every tensor of every checkpoint of run NAME is finite
  "$PYTHON" - "$WORK/$1/checkpoints" <<'PY'
import glob, json, struct, sys
import numpy as np
bad = []
for path in sorted(glob.glob(sys.argv[1] + "/step_*/*.safetensors")):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    for name, e in json.loads(blob[8:8 + n]).items():
        if name != "__metadata__" and e["dtype"] == "F32":
            b, t = e["data_offsets"]
            if not np.isfinite(np.frombuffer(blob[8 + n + b:8 + n + t], dtype=np.float32)).all():
                bad.append(f"{path}:{name}")
sys.exit("non-finite: " + ", ".join(bad[:5]) if bad else 0)
PY
}
expect_stop() {  # NAME EXPECTED
  [ "$(grep -c error "$WORK/$1.log")" -eq 1 ] || { tail -20 "$WORK/$1.log"; fail "$1: expected one error line"; }
  grep -qF -- "$2" "$WORK/$1.log" || { grep error "$WORK/$1.log"; fail "$1: message lacks '$2'"; }
  all_finite "$1" || fail "$1: a checkpoint holds non-finite values"
  echo "$1: $(grep error "$WORK/$1.log" | sed 's/^\[[^]]*\] //; s/;.*//'); latest $(cat "$WORK/$1/checkpoints/latest"), every checkpoint finite"
}

rc=0; run stop 5 || rc=$?
[ "$rc" -eq 1 ] || { tail -20 "$WORK/stop.log"; fail "stop: exit code $rc, expected 1"; }
expect_stop stop "step 5: not finite: the training loss"
[ "$(cat "$WORK/stop/checkpoints/latest")" = step_00000004 ] || fail "stop: latest is $(cat "$WORK/stop/checkpoints/latest")"
[ ! -e "$WORK/stop/checkpoints/step_00000006" ] || fail "stop: a checkpoint after the bad step was written"

rc=0; run diverge -1 --set train.lr=1e6 --set train.grad_clip=0 --set train.warmup_steps=0 --set checkpoint.every=1 || rc=$?
[ "$rc" -eq 1 ] || { tail -20 "$WORK/diverge.log"; fail "diverge: exit code $rc, expected 1"; }
expect_stop diverge "not finite"

run skip 5 --set train.on_nonfinite=skip --set train.max_skipped_steps=1 || { tail -20 "$WORK/skip.log"; fail "skip: the run failed"; }
grep '"step":5,' "$WORK/skip/metrics.jsonl" | grep -q '"skipped":true' || fail "skip: step 5 is not marked skipped"
[ "$(grep -c '"skipped"' "$WORK/skip/metrics.jsonl")" -eq 1 ] || fail "skip: other steps marked skipped"
all_finite skip || fail "skip: a checkpoint holds non-finite values"
echo "skip: step 5's update dropped, the run finished with validation loss $(field "$WORK/skip/metrics.jsonl" eval loss | tail -1)"

rc=0; run skip_limit 5 --set train.on_nonfinite=skip --set train.max_skipped_steps=0 || rc=$?
[ "$rc" -eq 1 ] || { tail -20 "$WORK/skip_limit.log"; fail "skip_limit: exit code $rc, expected 1"; }
expect_stop skip_limit "more than train.max_skipped_steps (0)"
