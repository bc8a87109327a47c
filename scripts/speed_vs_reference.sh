#!/usr/bin/env bash
# moe against plain PyTorch on the same model, run the same way: two processes with one thread each.
# brown-moe and brown-dense trained by `moe train` (2 ranks, EP 2 for the MoE) and by
# scripts/reference_lm.py --world 2 (DistributedDataParallel over gloo; for the MoE also --expert-parallel,
# its experts sharded as moe's), alternating, REPS times; prints each run's median tokens/s over steps 3-12
# (the first two warm up) and the medians' ratios. Needs
# Debian's python3-torch (apt-get install python3-torch) and data/brown (scripts/prepare_data.sh).
# About 1 minute per repetition on 2 cores; the machine should be otherwise idle.
#   ./scripts/speed_vs_reference.sh [REPS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
/usr/bin/python3 -c 'import torch' 2>/dev/null || { echo "speed_vs_reference.sh: needs python3-torch" >&2; exit 1; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ours() {  # MODEL: moe train's median tokens/s of steps 3-12
  rm -rf "$work/ours"
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 build/moe train "configs/brown-$1.yaml" \
    --set train.out_dir="$work/ours" --set train.steps=12 --set train.log_every=1 --set train.eval_windows=4 >/dev/null 2>&1
  grep '"kind":"train"' "$work/ours/metrics.jsonl" | tail -10 | grep -o '"tokens_per_s":[^,}]*' | cut -d: -f2 | median
}
reference() {  # MODEL [--expert-parallel]: reference_lm.py's, from the elapsed time of steps 3-12 (4096 tokens each)
  rm -rf "$work/ref"
  for r in 0 1; do
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 /usr/bin/python3 scripts/reference_lm.py --model "$1" --out "$work/ref" \
      --steps 12 --world 2 --rank $r ${2:-} >/dev/null 2>&1 &
  done
  wait
  grep -o '"elapsed_s": [0-9.]*' "$work/ref/metrics.jsonl" | cut -d' ' -f2 |
    awk 'NR > 2 { print 4096 / ($1 - prev) } { prev = $1 }' | median
}
for ((i = 1; i <= reps; i++)); do
  a=$(ours moe); b=$(reference moe); c=$(reference moe --expert-parallel)
  echo "moe rep $i: moe train $a tokens/s, reference_lm.py $b (data-parallel), $c (expert-parallel)"
  echo "$a" >> "$work/ours-moe"; echo "$b" >> "$work/ref-moe"; echo "$c" >> "$work/ref-moe-ep"
  a=$(ours dense); b=$(reference dense)
  echo "dense rep $i: moe train $a tokens/s, reference_lm.py $b"
  echo "$a" >> "$work/ours-dense"; echo "$b" >> "$work/ref-dense"
done
ratio() {  # LABEL OURS REF
  awk -v l="$1" -v a="$(median < "$work/$2")" -v b="$(median < "$work/$3")" \
    'BEGIN { printf "%s: moe train %.0f tokens/s, reference_lm.py %.0f: %.2fx\n", l, a, b, a / b }'
}
ratio "brown-moe against data-parallel" ours-moe ref-moe
ratio "brown-moe against expert-parallel" ours-moe ref-moe-ep
ratio "brown-dense" ours-dense ref-dense
