#pragma once
// The filesystem contract of a run across hosts: every rank sees one run directory. Checkpoints are
// written by several ranks into one directory (each EP rank its experts' file, rank 0 the rest), and a
// resume, an export or a load on another number of ranks reads them all back from one place; so moe
// requires a shared filesystem for train.out_dir (NFS, Lustre, GPFS, ...), as Megatron and DeepSpeed
// checkpoints do, and checks it at the start instead of failing at the first save or resume.
#include <string>

#include "parallel/communicator.h"

namespace moe {

// Collective. Rank 0 writes a token file with a fresh random name into `dir` (which it must already
// have made); every other rank reads it back. A rank that cannot see it, or sees other contents, is
// refused as bad input naming the rank, both hosts, the directory and the key (train.out_dir). The token
// file is removed either way.
void check_shared_directory(Communicator& comm, const std::string& dir);

}  // namespace moe
