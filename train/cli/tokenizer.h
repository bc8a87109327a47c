#pragma once
// Token files are flat little-endian arrays of uint16 or uint32 (as nanoGPT- and Megatron-style
// preprocessors write them); train/data.h reads them. The tokenizer is byte-level (vocab 256).
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// Bytes per token of a token-file dtype, "uint16" or "uint32"; anything else is bad input.
int token_element_size(const std::string& dtype);

// The bytes of every file in order, written as `dtype` tokens to `out` (through a temporary file renamed
// into place). Returns the number of tokens.
int64_t tokenize_files(const std::vector<std::string>& files, const std::string& out, const std::string& dtype);

}  // namespace moe
