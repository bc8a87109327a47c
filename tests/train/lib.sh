# Shared by the training tests: the moe binary, mpirun as root, and small token files made from this
# repository's own sources (byte-level), so the tests need no download.
set -euo pipefail
MOE=${MOE:?set MOE to the moe executable}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

make_test_data() {
  "$MOE" tokenize "$SRC"/core/*.cpp "$SRC"/core/*.h --out "$WORK/train.bin" 2>/dev/null
  "$MOE" tokenize "$SRC"/parallel/*.cpp --out "$WORK/val.bin" 2>/dev/null
  DATA=(--set "data.train_path=$WORK/train.bin" --set "data.val_path=$WORK/val.bin")
}

# make_fixed_test_data: the same from fixed text every Debian system ships (base-files' licences), for
# tests whose bounds hold for one trajectory and must not move when this repository's sources do.
make_fixed_test_data() {
  "$MOE" tokenize /usr/share/common-licenses/GPL-3 --out "$WORK/train.bin" 2>/dev/null
  "$MOE" tokenize /usr/share/common-licenses/Apache-2.0 --out "$WORK/val.bin" 2>/dev/null
  DATA=(--set "data.train_path=$WORK/train.bin" --set "data.val_path=$WORK/val.bin")
}

# moe_train NP ARGS...: mpirun with one BLAS thread per rank.
moe_train() {
  local np=$1
  shift
  mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$MOE" train "$@"
}

# field FILE KIND KEY: the KEY of every KIND record of a metrics.jsonl, one per line.
field() {
  grep "\"kind\":\"$2\"" "$1" | grep -o "\"$3\":[^,}]*" | cut -d: -f2
}

# strip_traffic [FILE]: metrics.jsonl (or stdin) without the all-to-all bytes, which recomputation (its
# replayed exchanges) and the compute dtype (the rows' width) change while the training numbers stay.
strip_traffic() {
  sed 's/"a2a_bytes_received":[^,]*,//g; s/"a2a_bytes_sent":[^,]*,//g' "${1:--}"
}

# strip_timing [FILE]: metrics.jsonl (or stdin) without what depends on the clock: tokens/s, GFLOP/s,
# MFU, the training time, and the telemetry's seconds. Keys are sorted, so each is followed by the next.
strip_timing() {
  sed 's/"gflops_per_rank":[^,]*,//; s/"mfu":[^,]*,//; s/"tokens_per_s":[^,]*,//; s/,*"train_seconds":[^,}]*//;
       s/"a2a_seconds":[^,]*,//g; s/"a2a_share":[^,]*,//g; s/"seconds":[^,]*,//' "${1:--}"
}

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Debian's python3 (with python3-numpy from setup.sh), not whichever python3 comes first on the PATH.
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3
