#!/usr/bin/env bash
# Set-up if needed, build, run every test (multi-rank ones under mpirun).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
# shellcheck disable=SC1091
[ ! -f .deps/env.sh ] || source .deps/env.sh  # mpirun and libraries from setup.sh --offline
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd build
ctest --output-on-failure -j "${MOE_TEST_JOBS:-2}" "$@"
