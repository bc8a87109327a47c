#!/usr/bin/env bash
# setup.sh --download then --offline, as on a GPU node without apt or network: the folder stays under
# 60 MB, unpacks without root into .deps/, and what it unpacked is what CMake and mpirun then use (an
# MPI program built with its mpicc runs on 2 ranks under its mpirun, loading its libmpi; the project
# configures against its spdlog, yaml-cpp, CLI11, nlohmann-json, GoogleTest and MPI).
# Usage: tests/setup_offline.sh [SOURCE_DIR]   (needs Debian's archive, like setup.sh itself)
set -euo pipefail
SRC=${1:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$SRC/scripts/setup.sh" --download "$WORK/debs"
kb=$(du -sk "$WORK/debs" | cut -f1)
[ "$kb" -lt $((60 * 1024)) ] || fail "the download folder is $kb KB, over 60 MB"
echo "ok: download folder $((kb / 1024)) MB, $(ls "$WORK/debs" | wc -l) packages"

# A copy of the scripts, so that .deps/ lands in the scratch tree and not in the checkout.
mkdir -p "$WORK/repo/scripts"
cp "$SRC/scripts/setup.sh" "$WORK/repo/scripts/"
"$WORK/repo/scripts/setup.sh" --offline "$WORK/debs"
out=$("$WORK/repo/scripts/setup.sh" --offline "$WORK/nothing" 2>&1) && fail "--offline of a missing folder succeeded"
[[ "$out" == *"no such directory"* ]] || fail "--offline of a missing folder said: $out"
P=$WORK/repo/.deps/root/usr
(
  # shellcheck disable=SC1091
  source "$WORK/repo/.deps/env.sh"
  [ "$(command -v mpirun)" = "$P/bin/mpirun" ] || fail "mpirun is $(command -v mpirun), not the unpacked one"
  printf '#include <mpi.h>\n#include <stdio.h>\nint main(int c, char** v) { MPI_Init(&c, &v); int r, s, x, y = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &s); x = r + 1;
  MPI_Allreduce(&x, &y, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD); if (!r) printf("sum %%d of %%d ranks\\n", y, s);
  MPI_Finalize(); return 0; }\n' > "$WORK/hello.c"
  mpicc "$WORK/hello.c" -o "$WORK/hello"
  libs=$(ldd "$WORK/hello")  # whole, then matched: grep -q closing the pipe early would fail it under pipefail
  [[ "$libs" == *"libmpi.so.40 => $P/"* ]] || fail "hello does not load the unpacked libmpi: $libs"
  got=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np 2 "$WORK/hello")
  [ "$got" = "sum 3 of 2 ranks" ] || fail "mpirun of hello printed '$got'"
  echo "ok: mpicc and mpirun from .deps: $got"
  cmake -S "$SRC" -B "$WORK/build" -DMOE_BUILD_TESTS=ON "${MOE_DEPS_CMAKE_ARGS[@]}" > "$WORK/cmake.log" 2>&1 \
    || { cat "$WORK/cmake.log"; fail "cmake configure against .deps failed"; }
  for key in spdlog_DIR yaml-cpp_DIR CLI11_DIR nlohmann_json_DIR GTest_DIR MPI_C_HEADER_DIR; do
    grep -q "^$key:[A-Z]*=$P/" "$WORK/build/CMakeCache.txt" \
      || fail "CMake's $key is not under .deps: $(grep "^$key:" "$WORK/build/CMakeCache.txt")"
  done
  echo "ok: CMake finds spdlog, yaml-cpp, CLI11, nlohmann-json, GoogleTest and MPI under .deps"
)
