#!/usr/bin/env bash
# A save that runs out of space part-way (a 5 MB tmpfs: two checkpoints of tiny fit, the third does not)
# ends the job with exit code 1 and one message naming the file and the errno; the previous checkpoints
# and `latest` are intact and verify, and no partial directory is left. Needs root to mount the tmpfs;
# exits 77 (skipped) where it cannot.
source "$(dirname "$0")/lib.sh"
make_test_data
disk=$WORK/disk
mkdir -p "$disk"
if ! mount -t tmpfs -o size=5m tmpfs "$disk" 2>/dev/null; then
  echo "full_disk: cannot mount a tmpfs here (not root?): skipped"
  exit 77
fi
trap 'umount "$disk" 2>/dev/null || true; rm -rf "$WORK"' EXIT
rc=0
moe_train 2 "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.out_dir="$disk/run" --set train.steps=20 \
  --set checkpoint.every=2 --set checkpoint.keep_last=0 --set parallel.expert_parallel_size=2 > "$WORK/log" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || { tail -20 "$WORK/log"; fail "exit code $rc, expected 1"; }
[ "$(grep -c "error" "$WORK/log")" -eq 1 ] || { grep error "$WORK/log"; fail "expected one error line"; }
grep -q "cannot write $disk/run/checkpoints/.tmp-step_[0-9]*/.*: No space left on device" "$WORK/log" ||
  { grep error "$WORK/log"; fail "the message does not name the file and the errno"; }
ckpts=$disk/run/checkpoints
[ -z "$(ls -a "$ckpts" | grep '^\.tmp-')" ] || fail "a partial directory is left: $(ls -a "$ckpts")"
latest=$(cat "$ckpts/latest")
for c in "$ckpts"/step_*; do
  "$MOE" checkpoint verify "$c" > /dev/null || fail "$(basename "$c") does not verify"
done
echo "full_disk: exit 1 with '$(grep -o 'cannot write.*' "$WORK/log" | sed "s|$disk/||")'; latest $latest and $(ls -d "$ckpts"/step_* | wc -l) checkpoints verify; no partial directory"
