#pragma once

namespace moe {

// Makes glibc keep freed memory for reuse instead of returning it to the OS. A training step allocates
// and frees the same large activation buffers every time; by default glibc serves each block over 32 MB
// with a fresh mmap, whose pages are then faulted in again (~1.2 GB/s on our machines): measured 20% of
// an MoE layer's forward+backward (docs/performance.md). Call once at the start of an executable.
void retain_freed_host_memory();

}  // namespace moe
