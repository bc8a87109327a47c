#!/usr/bin/env bash
# train.recompute on 2 ranks with EP 2, capacity dropping and router jitter: moe and full recompute must
# give the run of none bit for bit (every loss, aux loss, grad norm and drop count in metrics.jsonl, and
# the final weights), the re-run's all-to-alls and draws included.
source "$(dirname "$0")/lib.sh"
make_test_data
for r in none moe full; do
  moe_train 2 "$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.out_dir="$WORK/$r" --set train.recompute=$r \
    --set parallel.expert_parallel_size=2 --set moe.capacity_factor=1.0 --set moe.jitter_eps=0.05 \
    --set train.steps=12 --set train.log_every=1 --set train.eval_every=6 2>"$WORK/$r.log" ||
    { cat "$WORK/$r.log"; fail "train.recompute=$r"; }
  grep -q "; recompute $r" "$WORK/$r.log" || { cat "$WORK/$r.log"; fail "the run does not say it recomputes $r"; }
done
dropped=$(field "$WORK/none/metrics.jsonl" train dropped_fraction | awk '{ s += $1 } END { print s + 0 }')
awk -v d="$dropped" 'BEGIN { exit !(d > 0) }' || fail "the case drops nothing: it must, to show the re-run drops alike"
for r in moe full; do
  cmp <(strip_timing "$WORK/none/metrics.jsonl" | strip_traffic) <(strip_timing "$WORK/$r/metrics.jsonl" | strip_traffic) ||
    fail "train.recompute=$r: metrics differ from none"
  cmp "$WORK/none/checkpoints/step_00000012/model.safetensors" "$WORK/$r/checkpoints/step_00000012/model.safetensors" ||
    fail "train.recompute=$r: final weights differ from none"
  cmp "$WORK/none/checkpoints/step_00000012/experts-00001.safetensors" "$WORK/$r/checkpoints/step_00000012/experts-00001.safetensors" ||
    fail "train.recompute=$r: final expert weights differ from none"
done
echo "recompute: moe and full give none's 12 steps bit for bit on 2 ranks (EP 2, capacity 1.0, jitter 0.05; summed dropped fraction $dropped)"
