#!/usr/bin/env bash
# Faults on emulated hosts: ../shared/multihost.sh (or $MOE_MULTIHOST) makes network namespaces host1 and
# host2 and runs mpirun across them over TCP, with scripts/moe-launch's keepalive settings. 2 hosts x 1
# rank, the tiny config (EP 2), a checkpoint every 2 steps. Each case asserts a time bound and what
# survived: the last checkpoint verifies, and --resume latest reaches the uninterrupted run's final
# weights and losses bit for bit.
#   multihost_faults.sh kill        SIGKILL of the rank on host2: the job exits non-zero in < 10 s
#   multihost_faults.sh cut         host2 cut off the network: non-zero in < 60 s, naming the lost host
#   multihost_faults.sh stop        the rank on host2 stopped (SIGSTOP): the watchdog, in < timeout + 10 s
#   multihost_faults.sh trials N    SIGKILL of a random rank at a random instant around saves (each save
#                                   held 0.1 s before its rename), N times, each trial resuming from the
#                                   last one's latest: latest always verifies, and always moves on
#   multihost_faults.sh unshared    a rank that does not see train.out_dir (its own mount namespace, no
#                                   emulated hosts needed): refused at the start, exit 2, nothing left
# Exit 77 (ctest: skipped) where namespaces cannot be made (not root, no multihost.sh, no iproute2).
source "$(dirname "$0")/lib.sh"
case=${1:?usage: multihost_faults.sh kill|cut|stop|trials N|unshared}
make_test_data
STEPS=120
TRAIN=(train "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.steps=$STEPS --set checkpoint.every=2
       --set checkpoint.keep_last=3 --set train.log_every=1 --set train.eval_every=0 --set parallel.expert_parallel_size=2)
skip() { echo "SKIP: $*"; exit 77; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [ "$case" = unshared ]; then
  [ "$(id -u)" = 0 ] || skip "a mount namespace needs root"
  # In a chroot / is no mount point and cannot be made private: keep the propagation there, and make
  # sure below that the tmpfs stayed inside the namespace.
  prop=private
  unshare -m --propagation private true 2>/dev/null || prop=unchanged
  unshare -m --propagation $prop true 2>/dev/null || skip "unshare -m fails here"
  mkdir -p "$WORK/runs"
  rc=0
  mpirun -np 1 -x OMP_NUM_THREADS=1 "$MOE" "${TRAIN[@]}" --set train.out_dir="$WORK/runs/a" : \
    -np 1 -x OMP_NUM_THREADS=1 unshare -m --propagation $prop sh -c 'mount -t tmpfs moe-unshared "$0" && exec "$@"' \
    "$WORK/runs" "$MOE" "${TRAIN[@]}" --set train.out_dir="$WORK/runs/a" > "$WORK/log" 2>&1 || rc=$?
  if mountpoint -q "$WORK/runs"; then
    umount "$WORK/runs"
    skip "a mount made in a new namespace shows outside it here (shared propagation in a chroot)"
  fi
  [ "$rc" -eq 2 ] || { cat "$WORK/log"; fail "exit code $rc for a run directory rank 1 cannot see, expected 2"; }
  grep -q "train.out_dir $WORK/runs/a is not shared: rank 1 on .* cannot see the file .moe-shared-check-" "$WORK/log" ||
    { cat "$WORK/log"; fail "no message naming train.out_dir and the rank"; }
  [ -z "$(ls -A "$WORK/runs")" ] || fail "a refused run left $(ls -A "$WORK/runs")"
  echo "unshared: refused with exit 2: $(grep -o 'train.out_dir .* just wrote there' "$WORK/log")"
  exit 0
fi

MH=${MOE_MULTIHOST:-$SRC/../shared/multihost.sh}
[ -x "$MH" ] || skip "no $MH (set MOE_MULTIHOST to multihost.sh)"
[ "$(id -u)" = 0 ] || skip "network namespaces need root"
command -v ip >/dev/null || skip "no ip (iproute2)"
"$MH" up 2 > "$WORK/mh.log" 2>&1 || { cat "$WORK/mh.log"; skip "multihost.sh cannot make hosts here"; }
export MH_MCA
MH_MCA=$("$SRC/scripts/moe-launch" --print-mca | tr '\n' ' ')
engines() { for p in $(ip netns pids "$1" 2>/dev/null); do [ "$(cat /proc/"$p"/comm 2>/dev/null)" = moe-engine ] && echo "$p"; done; true; }
cleanup() {
  "$MH" heal host2 >/dev/null 2>&1 || true
  for h in host1 host2; do for p in $(engines $h); do kill -9 "$p" 2>/dev/null || true; done; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# launch OUT [ARGS...]: the job in the background (pid in $job), its output in OUT.log.
launch() {
  local out=$1; shift
  "$MH" run 2 "-x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 ${MPI_EXTRA:-} $MOE ${TRAIN[*]} --set train.out_dir=$out $*" > "$out.log" 2>&1 &
  job=$!
}
# checkpoints OUT N: wait (60 s at most) until OUT holds N saves or more.
saves() { ls "$1/checkpoints" 2>/dev/null | grep -c '^step_' || true; }
checkpoints() {
  for _ in $(seq 600); do [ "$(saves "$1")" -ge "$2" ] && [ -f "$1/checkpoints/latest" ] && return 0; sleep 0.1; done
  cat "$1.log"; fail "$1 did not save $2 checkpoints"
}
# survived OUT: the latest checkpoint verifies; a resume reaches the reference's final weights and losses.
survived() {
  local out=$1 latest
  latest=$(cat "$out/checkpoints/latest")
  "$MOE" checkpoint verify "$out/checkpoints/$latest" > /dev/null || fail "$latest does not verify after the fault"
  for h in host1 host2; do for p in $(engines $h); do kill -9 "$p" 2>/dev/null || true; done; done
  launch "$out" --resume latest
  wait "$job" || { cat "$out.log"; fail "the resume from $latest failed"; }
  cmp "$WORK/ref/checkpoints/step_$(printf %08d $STEPS)/model.safetensors" \
    "$out/checkpoints/step_$(printf %08d $STEPS)/model.safetensors" || fail "the resumed run's final weights differ"
  local from=${latest#step_}
  from=$((10#$from))
  diff <(grep '"kind":"train"' "$WORK/ref/metrics.jsonl" | awk -v f="$from" -F'"step":' '{ split($2, a, ","); if (a[1] > f) print }' | strip_timing) \
       <(grep '"kind":"train"' "$out/metrics.jsonl" | awk -v f="$from" -F'"step":' '{ split($2, a, ","); if (a[1] > f) print }' | strip_timing) > /dev/null ||
    fail "the resumed run's losses after step $from differ from the uninterrupted run"
  echo "  survived: $latest verifies; resumed from it, steps $((from + 1))-$STEPS match the uninterrupted run bit for bit"
}

launch "$WORK/ref"
wait "$job" || { cat "$WORK/ref.log"; fail "the uninterrupted run on 2 hosts failed"; }

case $case in
kill)
  launch "$WORK/run"
  checkpoints "$WORK/run" 2
  victim=$(engines host2 | head -1)
  [ -n "$victim" ] || fail "no rank on host2"
  t0=$(now); kill -9 "$victim"
  rc=0; wait "$job" || rc=$?; took=$(since "$t0")
  [ "$rc" -ne 0 ] || fail "the job exited 0 after a rank was killed"
  awk -v t="$took" 'BEGIN { exit !(t < 10) }' || fail "the job took $took s to end after kill -9 (limit 10 s)"
  echo "kill: kill -9 of the rank on host2 ended the job in $took s (exit $rc)"
  survived "$WORK/run"
  ;;
cut)
  launch "$WORK/run"
  checkpoints "$WORK/run" 2
  t0=$(now); "$MH" cut host2 > /dev/null
  rc=0; wait "$job" || rc=$?; took=$(since "$t0")
  "$MH" heal host2 > /dev/null
  [ "$rc" -ne 0 ] || fail "the job exited 0 after host2 was cut off"
  awk -v t="$took" 'BEGIN { exit !(t < 60) }' || fail "the job took $took s to end after host2 was cut off (limit 60 s)"
  grep -q "lost communication with a remote daemon" "$WORK/run.log" && grep -A4 "lost communication" "$WORK/run.log" | grep -q host2 ||
    { cat "$WORK/run.log"; fail "no message naming the lost host"; }
  echo "cut: host2 cut off the network ended the job in $took s (exit $rc): $(grep -o 'Remote daemon:.*' "$WORK/run.log" | head -1)"
  survived "$WORK/run"
  ;;
stop)
  TRAIN+=(--set parallel.timeout_s=2 --set parallel.slow_timeout_s=4)
  launch "$WORK/run"
  checkpoints "$WORK/run" 2
  victim=$(engines host2 | head -1)
  [ -n "$victim" ] || fail "no rank on host2"
  t0=$(now); kill -STOP "$victim"
  rc=0; wait "$job" || rc=$?; took=$(since "$t0")
  kill -9 "$victim" 2>/dev/null || true
  grep -q "watchdog: rank 0 on host1 has waited" "$WORK/run.log" || { cat "$WORK/run.log"; fail "no watchdog line from rank 0"; }
  awk -v t="$took" 'BEGIN { exit !(t < 4 + 10) }' || fail "the job took $took s to end after SIGSTOP (limit slow timeout 4 + 10 s)"
  echo "stop: SIGSTOP of the rank on host2; rank 0's watchdog ended the job in $took s (exit $rc): $(grep -o 'watchdog: .*step [0-9]*' "$WORK/run.log" | head -1)"
  survived "$WORK/run"
  ;;
trials)
  n=${2:?trials N}
  # Saves held 0.1 s with their files written but not yet renamed into place: more instants inside one.
  MPI_EXTRA="-x MOE_CHECKPOINT_PAUSE_SECONDS=0.1"
  slow=(--set train.steps=100000)
  launch "$WORK/run" "${slow[@]}"
  for i in $(seq "$n"); do
    before=$(cat "$WORK/run/checkpoints/latest" 2>/dev/null || true)
    for _ in $(seq 600); do  # until this job has saved once
      [ -f "$WORK/run/checkpoints/latest" ] && [ "$(cat "$WORK/run/checkpoints/latest")" != "$before" ] && break
      sleep 0.05
    done
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", r / 32767 * 0.5 }')"
    host=host$((RANDOM % 2 + 1)); victim=$(engines $host | head -1)
    [ -n "$victim" ] && kill -9 "$victim"
    wait "$job" 2>/dev/null || true
    latest=$(cat "$WORK/run/checkpoints/latest")
    [ "$latest" != "$before" ] || fail "trial $i: the resume from $before did not get to a save of its own"
    "$MOE" checkpoint verify "$WORK/run/checkpoints/$latest" > /dev/null || fail "trial $i: $latest does not verify"
    partial=$(ls -a "$WORK/run/checkpoints" | grep -c '^\.tmp-' || true)
    echo "trial $i: killed the rank on $host; latest = $latest verifies ($partial partial save(s) left aside, never loaded)"
    for h in host1 host2; do for p in $(engines $h); do kill -9 "$p" 2>/dev/null || true; done; done
    if [ "$i" -lt "$n" ]; then launch "$WORK/run" "${slow[@]}" --resume latest; fi
  done
  ;;
*) fail "unknown case $case" ;;
esac
