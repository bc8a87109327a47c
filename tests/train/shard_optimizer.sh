#!/usr/bin/env bash
# train.shard_optimizer (ZeRO-1) end to end, 20 steps of tiny against the unsharded run:
#   - 1 rank, and 2 ranks with EP 2: bit for bit (metrics and every checkpoint file), but for the grad
#     norm on 2 ranks: each rank's part of the squares is summed before the ranks' parts, a rounding apart;
#   - 4 ranks, EP 2 x EDP 2 (dense state over 4 ranks, experts' over 2): within float32 rounding, the
#     reduce-scatter summing in another order than the all-reduce;
#   - resharding: a sharded 4-rank checkpoint resumed unsharded on 2 ranks, and an unsharded one resumed
#     sharded; both reach the step-20 state of the unsharded resume (the second bit for bit).
# The 4-rank bound holds for a trajectory, not for any: a rounding apart can flip a token's top-2 choice
# and move an expert's weights by far more, so the data is fixed text, not this repository's sources.
source "$(dirname "$0")/lib.sh"
make_fixed_test_data
compare() { "$PYTHON" "$SRC/tests/train/compare_checkpoints.py" "$@"; }
without_norm() { strip_timing "$1" | sed 's/"grad_norm":[^,]*,//; s/"grad_norm_dense":[^,]*,//; s/"grad_norm_expert":[^,]*,//'; }
close_fields() {  # close_fields KEY RELATIVE A B: every train record's KEY within RELATIVE
  paste <(field "$3" train "$1") <(field "$4" train "$1") |
    awk -v r="$2" '{ d = $1 - $2; if (d < 0) d = -d; if (d > r * $1) bad = 1 } END { exit bad }'
}
run() {  # run NP NAME ARGS...
  local np=$1 name=$2
  shift 2
  moe_train "$np" "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.out_dir="$WORK/$name" --set checkpoint.every=10 \
    "$@" 2>"$WORK/$name.log" || { cat "$WORK/$name.log"; fail "$name: moe train $*"; }
}
same_files() {  # same_files DIR_A DIR_B WHAT
  for f in "$1"/*.safetensors; do
    cmp "$f" "$2/$(basename "$f")" || fail "$3: $(basename "$f") differs"
  done
}
ckpt() { echo "$WORK/$1/checkpoints/step_000000$2"; }

for np in 1 2; do
  run $np u$np --set parallel.expert_parallel_size=$np
  run $np s$np --set parallel.expert_parallel_size=$np --set train.shard_optimizer=true
  grep -q "state sharded (ZeRO-1)" "$WORK/s$np.log" || fail "the sharded run does not say so"
  cmp <(without_norm "$WORK/u$np/metrics.jsonl") <(without_norm "$WORK/s$np/metrics.jsonl") ||
    fail "$np ranks: sharded metrics differ from unsharded"
  close_fields grad_norm 1e-13 "$WORK/u$np/metrics.jsonl" "$WORK/s$np/metrics.jsonl" || fail "$np ranks: grad norms differ"
  if [ $np = 1 ]; then
    cmp <(field "$WORK/u1/metrics.jsonl" train grad_norm) <(field "$WORK/s1/metrics.jsonl" train grad_norm) ||
      fail "1 rank: grad norms differ"
  fi
  for step in 10 20; do same_files "$(ckpt u$np $step)" "$(ckpt s$np $step)" "$np ranks, step $step"; done
done
echo "1 and 2 ranks: sharded = unsharded bit for bit (metrics, weights, moments at steps 10 and 20)"

run 4 u4 --set parallel.expert_parallel_size=2
run 4 s4 --set parallel.expert_parallel_size=2 --set train.shard_optimizer=true
compare "$(ckpt u4 20)" "$(ckpt s4 20)" --skip exp_avg --atol 1e-6 || fail "4 ranks: weights after 20 steps"
compare "$(ckpt u4 20)" "$(ckpt s4 20)" --only exp_avg --atol 1e-5 || fail "4 ranks: moments after 20 steps"


run 2 s4_to_u2 --resume "$(ckpt s4 10)"
run 2 u4_to_u2 --resume "$(ckpt u4 10)"
run 2 u4_to_s2 --resume "$(ckpt u4 10)" --set train.shard_optimizer=true
same_files "$(ckpt u4_to_u2 20)" "$(ckpt u4_to_s2 20)" "unsharded checkpoint resumed sharded"
compare "$(ckpt u4_to_u2 20)" "$(ckpt s4_to_u2 20)" --atol 1e-6 || fail "sharded checkpoint resumed unsharded"
echo "resharding: 4 ranks sharded -> 2 unsharded and 4 unsharded -> 2 sharded resume alike"
