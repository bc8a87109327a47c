#!/usr/bin/env bash
# The claim MoE exists for, measured: brown-moe and brown-dense (the same active parameters per token,
# optimizer, schedule and tokens) each trained for 1500 steps x 4096 tokens = 6.1M tokens on 2 ranks, one
# after the other, then their validation losses side by side against tokens and training time.
# About 1h30 on 2 cores. A finished run already in RUNS_DIR is reused; an unfinished one stops the script.
#   ./scripts/moe_vs_dense.sh [RUNS_DIR]      (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
for m in moe dense; do
  dir="$runs/compare-$m"
  if [ -e "$dir" ]; then
    # Reuse a finished run; never delete one (it may be running, or be all that is left of one).
    grep '"kind":"eval"' "$dir/metrics.jsonl" 2>/dev/null | grep -q '"step":1500' ||
      { echo "moe_vs_dense.sh: $dir holds an unfinished run; let it finish, or move it away" >&2; exit 1; }
    continue
  fi
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 build/moe train \
    "configs/brown-$m.yaml" --set train.steps=1500 --set train.eval_every=100 --set checkpoint.every=750 \
    --set train.out_dir="$dir"
done
# One markdown row per evaluation: tokens, then loss and training minutes of each.
evals() {
  grep '"kind":"eval"' "$1/metrics.jsonl" |
    sed 's/.*"loss":\([^,]*\).*"step":\([0-9]*\).*"tokens":\([0-9]*\).*"train_seconds":\([^,}]*\).*/\2 \3 \1 \4/'
}
echo "| step | tokens | MoE val loss | dense val loss | MoE - dense | MoE minutes | dense minutes |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
join <(evals "$runs/compare-moe") <(evals "$runs/compare-dense") |
  awk '{ printf "| %d | %.2fM | %.4f | %.4f | %+.4f | %.1f | %.1f |\n", $1, $2 / 1e6, $3, $6, $3 - $6, $4 / 60, $7 / 60 }'
