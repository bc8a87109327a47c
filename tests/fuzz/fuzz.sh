#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, every finding fatal) and runs each: the config loader,
# the safetensors header parser, the manifest reader (tests/fuzz/fuzz_*.cpp, over the torch-free sources
# they test). Exits non-zero on any crash, sanitizer report, leak, timeout or uncaught non-moe exception;
# the input that caused it is kept as BUILD/crash-*. Prints each target's executions and time.
#   tests/fuzz/fuzz.sh [--seconds S | --runs N] [BUILD_DIR]
# ctest `fuzz_parsers` runs --seconds 30 (docs/parallel.md); scripts/fuzz.sh runs --runs 1000000.
# Exit 77 (ctest: skipped) when clang or libFuzzer is missing: scripts/setup.sh installs them.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
limit=(-max_total_time=30)
case "${1:-}" in
  --seconds) limit=(-max_total_time="${2:?--seconds S}"); shift 2 ;;
  --runs) limit=(-runs="${2:?--runs N}"); shift 2 ;;
esac
BUILD=${1:-$SRC/build/fuzz}
CXX=${FUZZ_CXX:-$(command -v clang++ || command -v clang++-14 || true)}
[ -n "$CXX" ] || { echo "fuzz.sh: no clang++ (apt-get install clang libclang-rt-14-dev, or scripts/setup.sh)"; exit 77; }
mkdir -p "$BUILD"
cd "$BUILD"
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' > probe.cpp ||
   ! "$CXX" -fsanitize=fuzzer probe.cpp -o probe 2>/dev/null; then
  echo "fuzz.sh: $CXX cannot link libFuzzer (apt-get install libclang-rt-14-dev, or scripts/setup.sh)"; exit 77
fi
flags=(-std=c++17 -g -O1 -I"$SRC" -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
declare -A sources=(
  [config]="core/model_options.cpp train/cli/config.cpp"
  [safetensors_header]="train/checkpoint/safetensors_header.cpp"
  [manifest]="train/checkpoint/crc32.cpp train/checkpoint/manifest.cpp"
)
declare -A libs=([config]="-lyaml-cpp" [safetensors_header]="" [manifest]="")
declare -A seeds=([config]="$SRC/configs" [safetensors_header]="$SRC/tests/fuzz/seeds/safetensors"
                  [manifest]="$SRC/tests/fuzz/seeds/manifest")
built=0
for t in config safetensors_header manifest; do
  objs=()
  for s in ${sources[$t]} "tests/fuzz/fuzz_$t.cpp"; do
    o=$(echo "$s" | tr / _).o
    if [ ! -f "$o" ] || [ "$SRC/$s" -nt "$o" ] || [ -n "$(find "$SRC/core" "$SRC/train" -name '*.h' -newer "$o" | head -1)" ]; then
      "$CXX" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$SRC/$s" -o "$o"
      built=1
    fi
    objs+=("$o")
  done
  [ -x "fuzz_$t" ] && [ $built = 0 ] || "$CXX" "${flags[@]}" -fsanitize=fuzzer "${objs[@]}" ${libs[$t]} -o "fuzz_$t"
done
status=0
for t in config safetensors_header manifest; do
  mkdir -p "corpus_$t"
  start=$(date +%s.%N)
  # One worker, the seeds read but never written; what it learns goes to corpus_T and is kept between runs.
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     "./fuzz_$t" "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
       -artifact_prefix="$BUILD/crash-$t-" "corpus_$t" "${seeds[$t]}" > "log_$t" 2>&1; then
    verdict=clean
  else
    verdict="FAILED (see $BUILD/log_$t)"
    status=1
    grep -E "ERROR|SUMMARY|runtime error|uncaught|what\(\)" "log_$t" | head -5 || true
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "log_$t" | tail -1)
  echo "fuzz_$t: ${runs:-?} executions in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }') s, $(ls "corpus_$t" | wc -l) corpus inputs: $verdict"
done
exit $status
