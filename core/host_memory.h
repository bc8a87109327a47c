#pragma once

namespace moe {

// Makes glibc keep freed memory for reuse instead of returning it to the OS. A training step allocates
// and frees the same large activation buffers every time; by default glibc serves each block over 32 MB
// with a fresh mmap, whose pages are then faulted in again (~1.2 GB/s on our machines): measured 20% of
// an MoE layer's forward+backward (docs/performance.md). The cost is memory: the heap keeps the holes
// between blocks of different lifetimes, so the resident set grows past the live bytes (measured
// 1.4-3.3x the activations' peak: scripts/bench_memory.sh). MOE_HOST_MEMORY=release trades the speed
// back for memory: blocks over 64 KiB are returned to the OS when freed, and the resident set follows
// what is live. Exits 2 on another value. Call once at the start of an executable.
void retain_freed_host_memory();

}  // namespace moe
