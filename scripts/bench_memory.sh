#!/usr/bin/env bash
# moe plan against measurement: the engine's peak memory per rank (build/bench_memory: high-water
# resident set after 3 training steps minus the resident set before the Trainer was built) for
# {float32, bfloat16} x recompute {none, full} x shard_optimizer {false, true}, brown-moe on 2 ranks with
# EP 1 (expert data parallel 2, so the sharded optimizer splits every parameter's state in two), each
# setting under both host-memory policies (MOE_HOST_MEMORY, core/host_memory.h): release, where the
# resident set follows the live bytes, which is what the plan counts (goal: within 15%), and the default
# retain, whose heap keeps the holes between blocks for speed. Prints a markdown table. About 3 minutes.
#   ./scripts/bench_memory.sh [--set KEY=VALUE]...
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Byte-level tokens of this repository's sources: no download.
build/moe tokenize core/*.cpp core/*.h parallel/*.cpp train/*.cpp --out "$work/tokens.bin" 2>/dev/null
measure() {  # measure POLICY ARGS...: bench_memory's JSON line
  local policy=$1
  shift
  rm -rf "$work/run"
  mpirun --oversubscribe -np 2 -x MOE_HOST_MEMORY="$policy" -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 \
    build/bench_memory configs/brown-moe.yaml --steps 3 --set parallel.expert_parallel_size=1 \
    --set data.train_path="$work/tokens.bin" --set data.val_path="$work/tokens.bin" --set train.out_dir="$work/run" "$@"
}
echo "| dtype | recompute | sharded | planned MiB | measured MiB (release) | planned / measured | measured MiB (retain) | retain / release |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for dtype in float32 bfloat16; do
  for recompute in none full; do
    for shard in false true; do
      set_args=(--set train.dtype=$dtype --set train.recompute=$recompute --set train.shard_optimizer=$shard "$@")
      release=$(measure release "${set_args[@]}")
      retain=$(measure retain "${set_args[@]}")
      /usr/bin/python3 - "$release" "$retain" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
M = 2 ** 20
print(f"| {a['dtype']} | {a['recompute']} | {'yes' if a['shard_optimizer'] else 'no'} | {a['planned_bytes'] / M:.0f} "
      f"| {a['measured_bytes'] / M:.0f} | {a['planned_over_measured']:.2f} | {b['measured_bytes'] / M:.0f} "
      f"| {b['measured_bytes'] / a['measured_bytes']:.2f} |")
PY
    done
  done
done
