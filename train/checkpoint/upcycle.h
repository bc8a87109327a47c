#pragma once
// Sparse upcycling (Komatsuzaki et al., 2022; Megatron-Core's upcycling): a dense checkpoint becomes the
// starting point of an MoE model. Every expert of an MoE layer starts as a copy of that layer's dense FFN,
// layers the MoE config keeps dense keep theirs, everything else (embedding, attention, norms, head) is
// copied, the routers start from the config's initialisation and the optimizer from zero; the step is the
// dense checkpoint's, so a run resumed from it continues the schedule and the batches. With the top-k
// weights renormalised and no token dropped, the MoE layer's output is sum_k w_k FFN(x) = FFN(x): the
// upcycled model computes the dense model's function at step 0.
#include <string>

#include "train/cli/config.h"

namespace moe {

// Reads the dense checkpoint `dense_dir`, checks that `config` (the MoE experiment, resolved) differs from
// its model only in its MoE part, and writes the upcycled checkpoint at the dense one's step to `out_dir` with
// `config` as its config.yaml and parallel.expert_parallel_size expert files. Refusals, before anything is
// written: a source that is not dense, a target that is, a model dimension that differs (named, with both
// values), an expert width other than the dense FFN's, shared experts or GELU experts (no copy of a SwiGLU
// FFN gives the same function), an existing out_dir.
void upcycle_checkpoint(const std::string& dense_dir, const Config& config, const std::string& out_dir);

}  // namespace moe
