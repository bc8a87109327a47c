#include "core/host_memory.h"

#include <malloc.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace moe {

void retain_freed_host_memory() {
  const char* policy = std::getenv("MOE_HOST_MEMORY");
  const bool release = policy != nullptr && std::strcmp(policy, "release") == 0;
  if (policy != nullptr && !release && std::strcmp(policy, "retain") != 0) {
    std::fprintf(stderr, "moe: error: MOE_HOST_MEMORY=%s: expected retain (the default) or release\n", policy);
    std::exit(2);
  }
#if defined(__GLIBC__)
  if (release) {
    mallopt(M_MMAP_THRESHOLD, 64 << 10);  // a fixed threshold: every block over 64 KiB is unmapped when freed
    return;
  }
  mallopt(M_MMAP_MAX, 0);                // every block from the heap, where freed blocks are reused
  mallopt(M_TRIM_THRESHOLD, INT_MAX);    // and the heap's top is kept unless 2 GiB of it is free
#endif
}

}  // namespace moe
