#!/usr/bin/env bash
# Asking for a device or backend this machine or build lacks stops `moe train` before any work: exit 2,
# one message naming the key, no run directory, on one rank and on two.
source "$(dirname "$0")/lib.sh"
make_test_data
CFG="$SRC/configs/tiny.yaml"
# refuse NAME NP EXPECTED [--set ...]
refuse() {
  local name=$1 np=$2 expected=$3
  shift 3
  local rc=0
  moe_train "$np" "$CFG" "${DATA[@]}" --set train.out_dir="$WORK/out-$name" "$@" > "$WORK/out" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat "$WORK/out"; fail "$name: exit code $rc, expected 2"; }
  grep -qF -- "$expected" "$WORK/out" || { cat "$WORK/out"; fail "$name: message lacks '$expected'"; }
  [ "$(grep -c error "$WORK/out")" -eq 1 ] || { cat "$WORK/out"; fail "$name: expected exactly one error line"; }
  [ ! -e "$WORK/out-$name" ] || fail "$name: wrote a run directory"
  echo "ok: $name (np $np): $(grep error "$WORK/out")"
}
gpus=$(nvidia-smi -L 2>/dev/null | grep -c GPU || true)
if [ "$gpus" -eq 0 ]; then
  for np in 1 2; do
    refuse cuda_without_gpu "$np" "train.device: cuda: " --set train.device=cuda
  done
fi
if [[ "$("$MOE" --version)" == *nccl* ]]; then
  for np in 1 2; do
    refuse nccl_on_cpu "$np" "parallel.backend: nccl needs CUDA tensors, but this run's device is cpu" \
      --set train.device=cpu --set parallel.backend=nccl
  done
else
  refuse nccl_not_built 1 "parallel.backend nccl: this moe was built without NCCL" --set parallel.backend=nccl
fi
# auto on this machine: whatever it resolves to, it says so once at start.
moe_train 1 "$CFG" "${DATA[@]}" --set train.out_dir="$WORK/auto" --set train.steps=1 --set train.eval_windows=1 \
  > "$WORK/out" 2>&1 || { cat "$WORK/out"; fail "auto: training failed"; }
grep -q "device .*, backend " "$WORK/out" || { cat "$WORK/out"; fail "auto: no device/backend line"; }
echo "ok: auto: $(grep -o 'device .*, backend .*' "$WORK/out")"
