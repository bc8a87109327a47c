#!/usr/bin/env bash
# Sparse upcycling, measured: brown-dense trained 1500 steps (saving at 750); the MoE upcycled from its
# step-750 checkpoint (`moe upcycle`: 8 experts top-2, each a copy of the dense FFN, width 1024) resumed
# there for steps 751-1500 (the dense run's schedule and batches, a fresh optimizer); and brown-moe from
# scratch for 1500 steps: the same 6.1M tokens each.
# Prints one table of validation losses against total steps. The from-scratch runs are moe_vs_dense.sh's
# (runs/compare-*), reused when finished. About 1h on 2 cores, one run after the other.
#   ./scripts/upcycle_vs_scratch.sh [RUNS_DIR]      (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
finished() {  # DIR STEPS: a finished run is reused; an unfinished one stops the script (never deleted)
  [ -e "$1" ] || return 1
  grep '"kind":"eval"' "$1/metrics.jsonl" 2>/dev/null | grep -q "\"step\":$2[,}]" && return 0
  echo "upcycle_vs_scratch.sh: $1 holds an unfinished run; let it finish, or move it away" >&2
  exit 1
}
train() {  # CONFIG DIR ARGS...
  mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 build/moe train "$1" \
    --set train.out_dir="$2" "${@:3}"
}
for m in dense moe; do
  finished "$runs/compare-$m" 1500 ||
    train "configs/brown-$m.yaml" "$runs/compare-$m" --set train.steps=1500 --set train.eval_every=100 \
      --set checkpoint.every=750
done
half="$runs/compare-dense/checkpoints/step_00000750"
[ -d "$half" ] || { echo "upcycle_vs_scratch.sh: $half is missing (a dense run saved without checkpoint.every=750)" >&2; exit 1; }
wide=(--set moe.ffn_hidden_size=1024)
if ! finished "$runs/upcycled" 1500; then
  rm -rf "$runs/upcycled-750"
  build/moe upcycle "$half" configs/brown-moe.yaml "${wide[@]}" "$runs/upcycled-750"
  train configs/brown-moe.yaml "$runs/upcycled" "${wide[@]}" --set train.steps=1500 --set train.eval_every=100 \
    --resume "$runs/upcycled-750"
fi
evals() {  # DIR: "step loss" per evaluation
  grep '"kind":"eval"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\).*"step":\([0-9]*\).*/\2 \1/' | sort -k1,1
}
echo "| step | tokens | dense | MoE from scratch | upcycled at 750 | upcycled - scratch | upcycled - dense |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
join <(evals "$runs/compare-dense") <(evals "$runs/compare-moe") | join -a 1 - <(evals "$runs/upcycled") |
  sort -n | awk '{ if (NF == 4) printf "| %d | %.2fM | %.4f | %.4f | %.4f | %+.4f | %+.4f |\n", $1, $1 * 4096 / 1e6, $2, $3, $4, $4 - $3, $4 - $2;
    else printf "| %d | %.2fM | %.4f | %.4f | | | |\n", $1, $1 * 4096 / 1e6, $2, $3 }'
