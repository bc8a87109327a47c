#!/usr/bin/env bash
# Configures and builds into build/ (build/moe, and build/moe-engine that it runs). Extra arguments go to cmake,
# e.g. -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)').
set -euo pipefail
cd "$(dirname "$0")/.."
MOE_DEPS_CMAKE_ARGS=()
# The libraries setup.sh --offline unpacked, when there are any.
# shellcheck disable=SC1091
[ ! -f .deps/env.sh ] || source .deps/env.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "${MOE_DEPS_CMAKE_ARGS[@]}" "$@" >/dev/null
cmake --build build -j "${MOE_BUILD_JOBS:-2}"
