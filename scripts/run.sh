#!/usr/bin/env bash
# The main job: set-up if needed, build, then run the default experiment on 2 MPI ranks. Until the
# trainer lands, that is one MoE layer with its experts sharded over the 2 ranks (EP=2), forward and
# backward on random tokens: it prints the routing statistics, the time per step and its floors.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 build/bench_moe_layer "$@"
