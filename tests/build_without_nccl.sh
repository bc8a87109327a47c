#!/usr/bin/env bash
# A machine without CUDA builds moe without the NCCL backend and says so once at configure time; that
# build refuses `parallel.backend: nccl` with one message naming the key (exit 2). CUDA's absence is
# simulated by hiding CMake's CUDAToolkit package; only the light `moe` is built (it loads configs too).
# Usage: tests/build_without_nccl.sh [SOURCE_DIR]
set -euo pipefail
SRC=${1:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cmake -S "$SRC" -B "$WORK/build" -DMOE_BUILD_TESTS=OFF -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON > "$WORK/cmake.log" 2>&1 \
  || { cat "$WORK/cmake.log"; fail "configure"; }
[ "$(grep -c "moe: building without NCCL" "$WORK/cmake.log")" -eq 1 ] || { cat "$WORK/cmake.log"; fail "no single 'building without NCCL' line"; }
grep "moe: building without NCCL" "$WORK/cmake.log"
cmake --build "$WORK/build" --target moe -j 2 > "$WORK/build.log" 2>&1 || { tail -20 "$WORK/build.log"; fail "build of moe"; }
version=$("$WORK/build/moe" --version)
[ "$version" = "moe 0.1.0 (backends: mpi)" ] || fail "--version says '$version'"
rc=0
"$WORK/build/moe" plan "$SRC/configs/tiny.yaml" --world 1 --set parallel.backend=nccl > "$WORK/out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || { cat "$WORK/out"; fail "plan with nccl: exit $rc, expected 2"; }
grep -q "parallel.backend nccl: this moe was built without NCCL" "$WORK/out" || { cat "$WORK/out"; fail "message"; }
echo "ok: $version; $(grep -o 'parallel.backend.*' "$WORK/out")"
