#!/usr/bin/env bash
# The watchdog: a rank stopped (SIGSTOP) in the middle of a run must end the job, by its peer's watchdog,
# within parallel.timeout_s + 10 s, with exit code 3 and one line naming the rank, the collective and
# the step; the last checkpoint still verifies and resumes.
source "$(dirname "$0")/lib.sh"
make_test_data
timeout_s=2
slow_s=4
out=$WORK/run
moe_train 2 "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.out_dir="$out" --set train.steps=100000 \
  --set train.log_every=1 --set checkpoint.every=2 --set parallel.expert_parallel_size=2 \
  --set parallel.timeout_s=$timeout_s --set parallel.slow_timeout_s=$slow_s > "$WORK/log" 2>&1 &
job=$!
trap 'pkill -9 -f "moe-engine train.*$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 600); do  # until it has checkpointed a few times
  [ "$(ls "$out/checkpoints" 2>/dev/null | grep -c step_)" -ge 2 ] && break
  sleep 0.1
done
[ "$(ls "$out/checkpoints" 2>/dev/null | grep -c step_)" -ge 2 ] || { cat "$WORK/log"; fail "the run did not start"; }
victim=$(pgrep -f "moe-engine train.*$WORK" | tail -1)
[ -n "$victim" ] || fail "no rank to stop"
kill -STOP "$victim"
stopped=$(date +%s%N)
rc=0
wait "$job" || rc=$?
elapsed=$(awk -v a="$stopped" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
kill -9 "$victim" 2>/dev/null || true
grep "watchdog" "$WORK/log" | head -1
[ "$rc" -eq 3 ] || { tail -20 "$WORK/log"; fail "the job exited $rc after a rank was stopped, expected 3"; }
grep -q "watchdog: rank [01] on .* has waited [0-9]* s in .* of group .* at step [0-9]*" "$WORK/log" ||
  { tail -20 "$WORK/log"; fail "no watchdog line"; }
awk -v e="$elapsed" -v t="$slow_s" 'BEGIN { exit !(e < t + 10) }' || fail "the job took $elapsed s to end (limit $slow_s + 10 s)"
latest="$out/checkpoints/$(cat "$out/checkpoints/latest")"
"$MOE" checkpoint verify "$latest" > /dev/null || fail "the last checkpoint does not verify"
echo "watchdog: a stopped rank ended the job in $elapsed s (exit code $rc; timeout ${timeout_s} s, slow ${slow_s} s); $(basename "$latest") verifies"
