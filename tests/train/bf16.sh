#!/usr/bin/env bash
# train.dtype bfloat16 on 2 ranks (EP 2), tiny: 100 steps follow the float32 run's losses within a stated
# bound, and a bf16 run resumes bit for bit (its checkpoints hold the float32 masters).
#
# One fixed trajectory: fixed text as data and the AVX2 kernels of OpenBLAS, ATen and moe pinned (as golden.sh),
# so that the outcome moves only when the arithmetic does, not with this repository's sources (the data
# of make_test_data) or the CPU's kernels.
source "$(dirname "$0")/lib.sh"
export OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2
make_fixed_test_data
COMMON=("$SRC/configs/tiny.yaml" "${DATA[@]}" --set parallel.expert_parallel_size=2 --set train.log_every=1
        --set train.eval_every=50 --set checkpoint.every=50 --set checkpoint.keep_last=0)
for dt in float32 bfloat16; do
  moe_train 2 "${COMMON[@]}" --set train.out_dir="$WORK/$dt" --set train.dtype=$dt --set train.steps=100 \
    2>"$WORK/$dt.log" || { cat "$WORK/$dt.log"; fail "train.dtype=$dt"; }
done
grep -q "compute in bfloat16" "$WORK/bfloat16.log" || fail "the bf16 run does not say it computes in bfloat16"
# The bounds. Step 1, before any trajectory can part: the loss within 1e-4 of float32's (measured
# 6.5e-6 relative). Over 100 steps: the mean training loss of every 10 steps within 4% of float32's, and
# the validation loss at step 100 within 2%. The trajectories part by chance, in either direction: bf16
# keeps 8 significant bits, the rounded gradients move the path a little, and tiny's loss spikes magnify
# that for a few steps (single steps up to 9.5% apart in this one; docs/performance.md). The worst 10-step
# mean over 17 trajectories (seeds, data, kernels; 2026-12-01): 0.2-3.0%, median ~1%, 1.55% for this
# one. Validation at step 100 over seeds 1-4 (2026-11-30): -1.3%, -0.2%, +0.9%, +0.3%. The float32
# masters keep it from drifting further; a bf16 bug (a sum kept in bf16, a lost cast) parts by far more.
paste -d' ' <(field "$WORK/float32/metrics.jsonl" train loss) <(field "$WORK/bfloat16/metrics.jsonl" train loss) | head -1 |
  awk '{ d = ($2 - $1) / $1; if (d < 0) d = -d; printf "bf16: step 1 loss %.6f vs float32 %.6f (%.1e)\n", $2, $1, d; exit !(d <= 1e-4) }' ||
  fail "bf16's first loss leaves the 1e-4 bound"
paste -d' ' <(field "$WORK/float32/metrics.jsonl" train loss) <(field "$WORK/bfloat16/metrics.jsonl" train loss) |
  awk '{ a += $1; b += $2; d = ($2 - $1) / $1; if (d < 0) d = -d; if (d > one) { one = d; at = NR }
         if (NR % 10 == 0) { w = (b - a) / a; if (w < 0) w = -w; if (w > m) { m = w; s = NR }; a = 0; b = 0 } } END {
    printf "bf16: 10-step mean losses within %.2e of float32 (worst: steps %d-%d); largest single step %.2e (step %d)\n", m, s - 9, s, one, at
    exit !(NR == 100 && m <= 0.04) }' ||
  fail "bf16 training losses leave the 4% bound"
paste -d' ' <(field "$WORK/float32/metrics.jsonl" eval loss) <(field "$WORK/bfloat16/metrics.jsonl" eval loss) | tail -1 |
  awk '{ d = ($2 - $1) / $1; if (d < 0) d = -d; printf "bf16: validation loss at step 100 %.5f vs float32 %.5f (%.2e)\n", $2, $1, d; exit !(d <= 0.02) }' ||
  fail "bf16 validation loss leaves the 2% bound"
# Resume: the bf16 run cut back to its step-50 checkpoint and resumed reaches the same step 100.
cp -r "$WORK/bfloat16" "$WORK/cut"
rm -rf "$WORK/cut/checkpoints/step_00000100"
echo step_00000050 > "$WORK/cut/checkpoints/latest"
moe_train 2 "${COMMON[@]}" --set train.out_dir="$WORK/cut" --set train.dtype=bfloat16 --set train.steps=100 \
  --resume latest 2>"$WORK/cut.log" || { cat "$WORK/cut.log"; fail "bf16 resume"; }
cmp <(strip_timing "$WORK/bfloat16/metrics.jsonl") <(strip_timing "$WORK/cut/metrics.jsonl") ||
  fail "the resumed bf16 run's metrics differ"
for f in model.safetensors experts-00000.safetensors experts-00001.safetensors; do
  cmp "$WORK/bfloat16/checkpoints/step_00000100/$f" "$WORK/cut/checkpoints/step_00000100/$f" || fail "resumed bf16 $f differs"
done
echo "bf16: resumed at step 50, steps 51-100 and the final float32 masters are bit-identical"
