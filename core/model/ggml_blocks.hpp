#pragma once
// ggml's tensor types: the table of block sizes, and each block format decoded to fp32, as
// ggml-quants.c defines it (checked against PyPI gguf's numpy decoder by
// tests/fixtures/quant_reference.json).
#include <cstddef>
#include <cstdint>
#include <string>

namespace ablate {

// ggml tensor types this reader decodes (others are named in the error).
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12,
  Q5_K = 13, Q6_K = 14, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21,
  IQ2_S = 22, IQ4_XS = 23, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40,
};

struct GgmlTypeTraits {
  std::uint32_t id;
  const char* name;
  std::uint64_t block;        // elements per block
  std::uint64_t block_bytes;
  bool decoded;               // dequantize_row handles it
};

// The type's row of ggml's table, or nullptr for an id ggml does not define.
const GgmlTypeTraits* ggml_type_traits(std::uint32_t type);
std::string ggml_type_name(std::uint32_t type);
// "F32, F16, BF16, Q8_0, ...": the types dequantize_row decodes, for error messages.
std::string ggml_decoded_type_names();

// fp16 / bf16 bit patterns to float.
float fp16_to_float(std::uint16_t h);
float bf16_to_float(std::uint16_t h);
// Decodes n elements (a multiple of the type's block size) of `type` from src into dst; throws
// std::invalid_argument for a type it does not decode.
void dequantize_row(std::uint32_t type, const std::uint8_t* src, float* dst, std::size_t n);

}  // namespace ablate
