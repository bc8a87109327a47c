#include "core/host_memory.h"

#include <malloc.h>

#include <climits>

namespace moe {

void retain_freed_host_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);                // every block from the heap, where freed blocks are reused
  mallopt(M_TRIM_THRESHOLD, INT_MAX);    // and the heap's top is kept unless 2 GiB of it is free
#endif
}

}  // namespace moe
