#!/usr/bin/env bash
# A config of the model-family zoo trains on 2 ranks: every step recorded, finite, the last train loss
# below the first, and the evaluation reported.
source "$(dirname "$0")/lib.sh"
config=$1
make_test_data
moe_train 2 "$config" "${DATA[@]}" --set train.out_dir="$WORK/run" 2>"$WORK/log" || { cat "$WORK/log"; fail "training $config"; }
metrics="$WORK/run/metrics.jsonl"
steps=$(grep -c '"kind":"train"' "$metrics")
[ "$steps" -eq 20 ] || fail "expected 20 train records, got $steps"
first=$(field "$metrics" train loss | head -1)
last=$(field "$metrics" train loss | tail -1)
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' || fail "loss did not fall: $first -> $last"
[ "$(field "$metrics" eval loss | wc -l)" -ge 1 ] || fail "no eval record"
"$MOE" plan "$WORK/run/config.yaml" --world 2 >/dev/null || fail "the resolved config.yaml does not load back"
echo "$(basename "$config"): loss $first -> $last, eval $(field "$metrics" eval loss | tail -1)"
