#pragma once
// CRC-32 (IEEE 802.3, as zlib and Python's zlib.crc32 compute it): every file of a checkpoint and the
// manifest itself carry one. Free of libtorch, like the parsers the fuzz targets build (tests/fuzz/).
#include <cstddef>
#include <cstdint>

namespace moe {

// The CRC-32 of a byte range, continuing from `crc` (0 to start).
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace moe
