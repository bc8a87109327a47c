#!/usr/bin/env bash
# The main job: set-up if needed, build, prepare the Brown corpus, then train the default experiment
# (configs/brown-moe.yaml: a Mixtral-layout MoE, its experts sharded over 2 MPI ranks) and end with its
# validation loss. Extra arguments go to `moe train` (e.g. --set train.steps=3). Each run gets its own
# directory under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
./scripts/prepare_data.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
config=${MOE_CONFIG:-configs/brown-moe.yaml}
out="runs/$(basename "$config" .yaml)-$(date +%Y%m%d-%H%M%S)"
scripts/moe-launch --oversubscribe -np "${MOE_RANKS:-2}" -- build/moe train "$config" --set train.out_dir="$out" "$@"
