#include "model/ggml_blocks.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "cpu/lattice.hpp"
#include "cpu/quant.hpp"

namespace ablate {

namespace {

// ggml's type table for the types whose layout is stable; the ones not decoded are listed so
// that an error can name them.
constexpr GgmlTypeTraits kTypes[] = {
    {0, "F32", 1, 4, true},        {1, "F16", 1, 2, true},        {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},     {6, "Q5_0", 32, 22, true},     {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},     {9, "Q8_1", 32, 36, false},    {10, "Q2_K", 256, 84, true},
    {11, "Q3_K", 256, 110, true},  {12, "Q4_K", 256, 144, true},  {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},  {15, "Q8_K", 256, 292, false}, {16, "IQ2_XXS", 256, 66, true},
    {17, "IQ2_XS", 256, 74, true}, {18, "IQ3_XXS", 256, 98, true}, {19, "IQ1_S", 256, 50, true},
    {20, "IQ4_NL", 32, 18, true},  {21, "IQ3_S", 256, 110, true}, {22, "IQ2_S", 256, 82, true},
    {23, "IQ4_XS", 256, 136, true}, {24, "I8", 1, 1, false},      {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},      {27, "I64", 1, 8, false},      {28, "F64", 1, 8, false},
    {29, "IQ1_M", 256, 56, true},  {30, "BF16", 1, 2, true},      {34, "TQ1_0", 256, 54, true},
    {35, "TQ2_0", 256, 66, true},  {39, "MXFP4", 32, 17, true},   {40, "NVFP4", 64, 36, true},
    {41, "Q1_0", 128, 18, false},
};

std::uint16_t u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

float half(const std::uint8_t* p) { return fp16_to_float(u16(p)); }

// The block decoders, one per type; each writes the block's `block` values to y. The formulas,
// and the order of their float operations, are ggml's dequantize_row_* (ggml-quants.c).

void q8_0(const std::uint8_t* b, float* y) {  // fp16 d, int8 q[32]: x = d q
  const float d = half(b);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(static_cast<std::int8_t>(b[2 + j]));
}

// Q4_0, Q4_1, Q5_0, Q5_1: d q + m with q's fifth bit from qh (Q5) and m = -8 d, -16 d (Q4_0,
// Q5_0: exactly ggml's d (q - 8), d (q - 16)); IQ4_NL: d times q's level (kvalues_iq4nl). The CPU
// kernels' own value function (cpu/quant.hpp), so the fixture test checks theirs too.
template <class Block>
void nibbles(const std::uint8_t* b, float* y) {
  Block blk;
  std::memcpy(&blk, b, sizeof blk);
  for (int i = 0; i < 32; ++i) y[i] = cpu::nibble_value(blk, i);
}

// The K-quants and IQ4_XS: 256-value super-blocks of 16 or 32-value sub-blocks, each with its own
// scale (and min), the scales themselves quantized against the super-block's fp16 d (and dmin).
// Each decoded by the CPU kernels' own value function (cpu/quant.hpp), so the fixture test checks
// theirs too:
// - Q2_K: u8 scales[16] (low nibble scale, high nibble min), 2-bit q[256] in 64 bytes, fp16 d, dmin:
//   x = d sc q - dmin m;
// - Q3_K: hmask[32] (the third bit), 2-bit q in 64 bytes, 16 6-bit scales in 12 bytes, fp16 d:
//   x = d sc (q - 4);
// - Q4_K: fp16 d, dmin, 8 sub-blocks' 6-bit scales and mins in 12 bytes, 4-bit q[256]:
//   x = d sc q - dmin m; Q5_K: the same plus qh[32], the fifth bits;
// - IQ4_XS: fp16 d, 8 6-bit scales ls (scales_h, scales_l), 4-bit q[256]: x = d (ls - 32) level(q);
// - Q6_K: low 4 bits ql[128], high 2 bits qh[64], int8 scales[16] (one per 16 values), fp16 d:
//   x = d scale (q - 32).
template <class Block, float (*Value)(const Block&, int)>
void k_block(const std::uint8_t* b, float* y) {
  Block blk;
  std::memcpy(&blk, b, sizeof blk);
  for (int i = 0; i < 256; ++i) y[i] = Value(blk, i);
}

// The lattice types IQ1_S..IQ3_S (x = scale times a lattice point's values, with signs or IQ1's
// +-1/8): the CPU kernels' own description of a sub-block (cpu/lattice.hpp), so the fixture test
// checks theirs too.
template <class Block>
void lattice(const std::uint8_t* b, float* y) {
  Block blk;
  std::memcpy(&blk, b, sizeof blk);
  cpu::lattice_values(blk, y);
}

// TQ1_0 (54 bytes): ternary values packed 5 (the last 16: 4) to a byte in base 3, each byte scaled
// to 256/243 so that a multiply by 3^n and a shift read digit n; fp16 d last: x = d (t - 1).
void tq1_0(const std::uint8_t* b, float* y) {
  const float d = half(b + 52);
  static constexpr std::uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const auto digits = [&](const std::uint8_t* q, int n_bytes, int n_digits) {
    for (int n = 0; n < n_digits; ++n)
      for (int m = 0; m < n_bytes; ++m) {
        const std::uint8_t v = static_cast<std::uint8_t>(q[m] * kPow3[n]);  // mod 256, as ggml's uint8
        *y++ = static_cast<float>(((v * 3) >> 8) - 1) * d;
      }
  };
  digits(b, 32, 5);
  digits(b + 32, 16, 5);
  digits(b + 48, 4, 4);
}

// TQ2_0 (66 bytes): ternary values as 2-bit t, four a byte (bits 2l of 32 consecutive bytes are 32
// consecutive values), fp16 d last: x = d (t - 1).
void tq2_0(const std::uint8_t* b, float* y) {
  const float d = half(b + 64);
  for (int j = 0; j < 64; j += 32)
    for (int l = 0; l < 4; ++l)
      for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(((b[j + m] >> (2 * l)) & 3) - 1) * d;
}

// MXFP4 and NVFP4: 4-bit FP4 (E2M1) codes, their values doubled to integers (ggml's kvalues_mxfp4),
// with a scale that carries the half back: MXFP4 (17 bytes) one E8M0 power of two for 32 values,
// NVFP4 (36 bytes) four unsigned E4M3 scales, one for each 16 values. Low nibbles are a sub-block's
// first half.
constexpr std::int8_t kFp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
float e8m0_half(std::uint8_t e) {  // 2^(e - 127) / 2, subnormal for e < 2
  const std::uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<std::uint32_t>(e - 1) << 23;
  return std::bit_cast<float>(bits);
}
float ue4m3_half(std::uint8_t x) {  // unsigned E4M3 (bias 7) / 2; 0x7F (NaN) reads as 0, as ggml's
  if (x == 0 || x == 0x7F) return 0.0f;
  const int exp = (x >> 3) & 15, man = x & 7;
  const float v = exp == 0 ? static_cast<float>(man) * 0x1p-9f : (1.0f + static_cast<float>(man) / 8.0f) * std::ldexp(1.0f, exp - 7);
  return v * 0.5f;
}
void fp4_values(const std::uint8_t* q, int n, float d, float* y) {  // 2n values of n bytes
  for (int j = 0; j < n; ++j) {
    y[j] = d * static_cast<float>(kFp4Doubled[q[j] & 15]);
    y[j + n] = d * static_cast<float>(kFp4Doubled[q[j] >> 4]);
  }
}
void mxfp4(const std::uint8_t* b, float* y) { fp4_values(b + 1, 16, e8m0_half(b[0]), y); }
void nvfp4(const std::uint8_t* b, float* y) {
  for (int s = 0; s < 4; ++s) fp4_values(b + 4 + 8 * s, 8, ue4m3_half(b[s]), y + 16 * s);
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(std::uint32_t type) {
  for (const auto& t : kTypes)
    if (t.id == type) return &t;
  return nullptr;
}

std::string ggml_type_name(std::uint32_t type) {
  if (const auto* t = ggml_type_traits(type)) return t->name;
  return fmt::format("type {}", type);
}

std::string ggml_decoded_type_names() {
  std::string s;
  for (const auto& t : kTypes)
    if (t.decoded) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s;
}

float fp16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exp = (h >> 10) & 0x1F;
  std::uint32_t mant = h & 0x3FF;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_float(std::uint16_t h) {
  const std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void dequantize_row(std::uint32_t type, const std::uint8_t* src, float* dst, std::size_t n) {
  using Block = void (*)(const std::uint8_t*, float*);
  const auto blocks = [&](Block decode, std::size_t block, std::size_t bytes) {
    for (std::size_t b = 0; b < n / block; ++b) decode(src + b * bytes, dst + b * block);
  };
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
    case GgmlType::F16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(u16(src + 2 * i));
      return;
    case GgmlType::BF16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(u16(src + 2 * i));
      return;
    case GgmlType::Q8_0: return blocks(q8_0, 32, 34);
    case GgmlType::Q4_0: return blocks(nibbles<cpu::BlockQ4_0>, 32, 18);
    case GgmlType::Q4_1: return blocks(nibbles<cpu::BlockQ4_1>, 32, 20);
    case GgmlType::Q5_0: return blocks(nibbles<cpu::BlockQ5_0>, 32, 22);
    case GgmlType::Q5_1: return blocks(nibbles<cpu::BlockQ5_1>, 32, 24);
    case GgmlType::Q2_K: return blocks(k_block<cpu::BlockQ2_K, cpu::q2_k_value>, 256, 84);
    case GgmlType::Q3_K: return blocks(k_block<cpu::BlockQ3_K, cpu::q3_k_value>, 256, 110);
    case GgmlType::Q4_K: return blocks(k_block<cpu::BlockQ4_K, cpu::k4_value<cpu::BlockQ4_K>>, 256, 144);
    case GgmlType::Q5_K: return blocks(k_block<cpu::BlockQ5_K, cpu::k4_value<cpu::BlockQ5_K>>, 256, 176);
    case GgmlType::Q6_K: return blocks(k_block<cpu::BlockQ6_K, cpu::q6_k_value>, 256, 210);
    case GgmlType::IQ4_NL: return blocks(nibbles<cpu::BlockIQ4_NL>, 32, 18);
    case GgmlType::IQ4_XS: return blocks(k_block<cpu::BlockIQ4_XS, cpu::iq4_xs_value>, 256, 136);
    case GgmlType::IQ2_XXS: return blocks(lattice<cpu::BlockIQ2_XXS>, 256, 66);
    case GgmlType::IQ2_XS: return blocks(lattice<cpu::BlockIQ2_XS>, 256, 74);
    case GgmlType::IQ2_S: return blocks(lattice<cpu::BlockIQ2_S>, 256, 82);
    case GgmlType::IQ3_XXS: return blocks(lattice<cpu::BlockIQ3_XXS>, 256, 98);
    case GgmlType::IQ3_S: return blocks(lattice<cpu::BlockIQ3_S>, 256, 110);
    case GgmlType::IQ1_S: return blocks(lattice<cpu::BlockIQ1_S>, 256, 50);
    case GgmlType::IQ1_M: return blocks(lattice<cpu::BlockIQ1_M>, 256, 56);
    case GgmlType::TQ1_0: return blocks(tq1_0, 256, 54);
    case GgmlType::TQ2_0: return blocks(tq2_0, 256, 66);
    case GgmlType::MXFP4: return blocks(mxfp4, 32, 17);
    case GgmlType::NVFP4: return blocks(nvfp4, 64, 36);
  }
  throw std::invalid_argument(fmt::format("tensor type {} is not supported; supported: {}", ggml_type_name(type),
                                          ggml_decoded_type_names()));
}

}  // namespace ablate
