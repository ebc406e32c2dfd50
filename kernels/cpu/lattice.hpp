#pragma once
// ggml's lattice ("i-quant") types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: 256
// values a block, 8 sub-blocks of 32. Each 8 values (IQ3: 4) are one point of a fixed lattice,
// stored as its index, with the 8 signs apart (IQ1: no signs; a shift of +-1/8 instead), times a
// scale for each 16 or 32 values. Every sub-block is read through one description (LatticeSub), so
// one decoder and one kernel serve all seven types: its 32 values are scale[half] times small
// integers w (|w| <= 62), which an int8 dot product with x's Q8_0 block sums exactly.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/half.hpp"

namespace ablate::cpu {

// The lattices (kernels/cpu/iq_grids.inc, generated from PyPI gguf): point p's byte j is value j.
extern const std::uint64_t kIq2xxsGrid[256];
extern const std::uint64_t kIq2xsGrid[512];
extern const std::uint64_t kIq2sGrid[1024];
extern const std::uint32_t kIq3xxsGrid[256];
extern const std::uint32_t kIq3sGrid[512];
extern const std::uint64_t kIq1sGrid[2048];  // IQ1_S and IQ1_M; values -1, 0, 1

// The blocks as a GGUF file holds them (ggml-common.h's block_iq*).
struct BlockIQ2_XXS {  // 4 grid indices, then 4 x 7 sign bits and a 4-bit scale, in two u32 a sub-block
  Half d;
  std::uint8_t qs[64];
};
struct BlockIQ2_XS {  // u16 a point: 9-bit index, 7 sign bits; 4-bit scales a 16 values
  Half d;
  std::uint8_t qs[64];
  std::uint8_t scales[8];
};
struct BlockIQ2_S {  // index low bytes, then sign bytes; qh: the indices' 2 high bits
  Half d;
  std::uint8_t qs[32], signs[32];
  std::uint8_t qh[8];
  std::uint8_t scales[8];
};
struct BlockIQ3_XXS {  // 8-bit indices of 4-value points, then a u32 a sub-block: 4 x 7 sign bits, 4-bit scale
  Half d;
  std::uint8_t qs[64];
  std::uint8_t scales_signs[32];
};
struct BlockIQ3_S {  // index low bytes, their 9th bits, sign bytes, 4-bit scales a sub-block
  Half d;
  std::uint8_t qs[64];
  std::uint8_t qh[8];
  std::uint8_t signs[32];
  std::uint8_t scales[4];
};
struct BlockIQ1_S {  // index low bytes; a u16 a sub-block: 4 x 3 high index bits, 3-bit scale, delta sign
  Half d;
  std::uint8_t qs[32];
  std::uint8_t qh[16];
};
struct BlockIQ1_M {  // index low bytes; a nibble an index (3 high bits, delta sign); 3-bit scales a 16
  std::uint8_t qs[32];  // values, whose 4 u16 also carry the fp16 d in their top nibbles
  std::uint8_t qh[16];
  std::uint8_t scales[8];
};
static_assert(sizeof(BlockIQ2_XXS) == 66 && sizeof(BlockIQ2_XS) == 74 && sizeof(BlockIQ2_S) == 82 && sizeof(BlockIQ3_XXS) == 98 &&
                  sizeof(BlockIQ3_S) == 110 && sizeof(BlockIQ1_S) == 50 && sizeof(BlockIQ1_M) == 56,
              "the lattice blocks are as large as in GGUF");

// One sub-block of 32 values: value 8 k + j is scale[(8 k + j) / 16] times
//   w = sign * byte_j(point[k]) * times + delta[k]
// (sign: bit 8 k + j of `signs`; IQ1: times 8 and delta +-1, its scale d (2 ls + 1) / 8, so that
// (d (2 ls + 1) / 8) w is d (2 ls + 1) (grid +- 1/8) exactly, as ggml computes it).
struct LatticeSub {
  std::uint64_t point[4];
  std::uint32_t signs = 0;
  std::int8_t times = 1;
  std::int8_t delta[4] = {0, 0, 0, 0};
  float scale[2];
};

namespace lattice_detail {
inline std::uint32_t u32_at(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline unsigned u16_at(const std::uint8_t* p) { return unsigned(p[0]) | unsigned(p[1]) << 8; }
// IQ2_XXS, IQ2_XS, IQ3_XXS keep 7 sign bits of each 8 values; the 8th makes the count of minus
// signs even (ggml's ksigns_iq2xs).
inline std::uint32_t even_signs(unsigned seven) { return seven | (std::popcount(seven) & 1u) << 7; }
inline std::uint64_t pair(std::uint32_t a, std::uint32_t b) { return a | std::uint64_t(b) << 32; }
}  // namespace lattice_detail

// Sub-block s of a block, for each type (the scales as ggml's dequantize_row_iq* computes them).
inline LatticeSub lattice_sub(const BlockIQ2_XXS& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  const std::uint32_t aux = u32_at(b.qs + 8 * s + 4);
  for (int l = 0; l < 4; ++l) {
    u.point[l] = kIq2xxsGrid[b.qs[8 * s + l]];
    u.signs |= even_signs((aux >> (7 * l)) & 127) << (8 * l);
  }
  u.scale[0] = u.scale[1] = to_float(b.d) * (0.5f + float(aux >> 28)) * 0.25f;
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ2_XS& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  for (int l = 0; l < 4; ++l) {
    const unsigned q = u16_at(b.qs + 2 * (4 * s + l));
    u.point[l] = kIq2xsGrid[q & 511];
    u.signs |= even_signs(q >> 9) << (8 * l);
  }
  for (int h = 0; h < 2; ++h) u.scale[h] = to_float(b.d) * (0.5f + float((b.scales[s] >> (4 * h)) & 15)) * 0.25f;
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ2_S& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  for (int l = 0; l < 4; ++l) u.point[l] = kIq2sGrid[b.qs[4 * s + l] | ((b.qh[s] >> (2 * l)) & 3u) << 8];
  u.signs = u32_at(b.signs + 4 * s);
  for (int h = 0; h < 2; ++h) u.scale[h] = to_float(b.d) * (0.5f + float((b.scales[s] >> (4 * h)) & 15)) * 0.25f;
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ3_XXS& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  const std::uint32_t aux = u32_at(b.scales_signs + 4 * s);
  for (int l = 0; l < 4; ++l) {
    u.point[l] = pair(kIq3xxsGrid[b.qs[8 * s + 2 * l]], kIq3xxsGrid[b.qs[8 * s + 2 * l + 1]]);
    u.signs |= even_signs((aux >> (7 * l)) & 127) << (8 * l);
  }
  u.scale[0] = u.scale[1] = to_float(b.d) * (0.5f + float(aux >> 28)) * 0.5f;
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ3_S& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  const auto index = [&](int k) { return b.qs[8 * s + k] | ((b.qh[s] >> k) & 1u) << 8; };
  for (int l = 0; l < 4; ++l) u.point[l] = pair(kIq3sGrid[index(2 * l)], kIq3sGrid[index(2 * l + 1)]);
  u.signs = u32_at(b.signs + 4 * s);
  u.scale[0] = u.scale[1] = to_float(b.d) * float(1 + 2 * ((b.scales[s / 2] >> (4 * (s % 2))) & 15));
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ1_S& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  const unsigned qh = u16_at(b.qh + 2 * s);
  u.times = 8;
  for (int l = 0; l < 4; ++l) {
    u.point[l] = kIq1sGrid[b.qs[4 * s + l] | ((qh >> (3 * l)) & 7u) << 8];
    u.delta[l] = qh & 0x8000 ? -1 : 1;
  }
  u.scale[0] = u.scale[1] = to_float(b.d) * float(2 * ((qh >> 12) & 7) + 1) / 8.0f;
  return u;
}
inline LatticeSub lattice_sub(const BlockIQ1_M& b, int s) {
  using namespace lattice_detail;
  LatticeSub u;
  unsigned sc[4];
  for (int i = 0; i < 4; ++i) sc[i] = u16_at(b.scales + 2 * i);
  const float d = to_float(Half{static_cast<std::uint16_t>((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000))});
  u.times = 8;
  for (int l = 0; l < 4; ++l) {
    const unsigned h = (b.qh[2 * s + l / 2] >> (4 * (l % 2))) & 15;
    u.point[l] = kIq1sGrid[b.qs[4 * s + l] | (h & 7u) << 8];
    u.delta[l] = h & 8 ? -1 : 1;
  }
  for (int h = 0; h < 2; ++h) u.scale[h] = d * float(2 * ((sc[s / 2] >> (6 * (s % 2) + 3 * h)) & 7) + 1) / 8.0f;
  return u;
}

// The sub-block's 32 integers w (the scalar reference of the kernels' vector expansion).
inline void lattice_ints(const LatticeSub& u, std::int8_t* w) {
  for (int k = 0; k < 4; ++k)
    for (int j = 0; j < 8; ++j) {
      const int v = static_cast<std::int8_t>(u.point[k] >> (8 * j)) * u.times + u.delta[k];
      w[8 * k + j] = static_cast<std::int8_t>((u.signs >> (8 * k + j)) & 1u ? -v : v);
    }
}

// A block's 256 values as ggml dequantizes them.
template <class Block>
void lattice_values(const Block& b, float* y) {
  for (int s = 0; s < 8; ++s) {
    const LatticeSub u = lattice_sub(b, s);
    std::int8_t w[32];
    lattice_ints(u, w);
    for (int i = 0; i < 32; ++i) y[32 * s + i] = u.scale[i / 16] * float(w[i]);
  }
}

// A matrix of one lattice type in the file's own blocks ([out][in / 256], row-major), which the
// kernels read as stored: 2.06 (IQ2_XXS) to 3.44 (IQ3_S) bits a weight.
// (Its values are ggml's type ids, so a GGUF tensor's type converts to it directly.)
enum class LatticeType { IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ3_S = 21, IQ2_S = 22, IQ1_M = 29 };
// f(Block{}) for the block type of `type`: the one place a LatticeType becomes its block.
template <class F>
decltype(auto) with_lattice_block(LatticeType type, F&& f) {
  switch (type) {
    case LatticeType::IQ2_XXS: return f(BlockIQ2_XXS{});
    case LatticeType::IQ2_XS: return f(BlockIQ2_XS{});
    case LatticeType::IQ2_S: return f(BlockIQ2_S{});
    case LatticeType::IQ3_XXS: return f(BlockIQ3_XXS{});
    case LatticeType::IQ3_S: return f(BlockIQ3_S{});
    case LatticeType::IQ1_S: return f(BlockIQ1_S{});
    case LatticeType::IQ1_M: return f(BlockIQ1_M{});
  }
  throw std::invalid_argument("unknown lattice type");
}
struct LatticeMatrix {
  LatticeType type = LatticeType::IQ2_XXS;
  int out = 0, in = 0;  // in: a multiple of 256
  std::vector<std::uint8_t> bytes;
  bool empty() const { return bytes.empty(); }
  std::size_t bytes_size() const { return bytes.size(); }
};
// The bytes of one block of `type`.
std::size_t lattice_block_bytes(LatticeType type);
// Throws std::invalid_argument unless in is a positive multiple of 256 and bytes holds out * in / 256 blocks.
LatticeMatrix make_lattice_matrix(LatticeType type, std::vector<std::uint8_t> bytes, int out, int in);
// Row o's values [256 b, 256 b + 256), as ggml dequantizes them.
void lattice_row_values(const LatticeMatrix& m, int o, int b, float* dst);

}  // namespace ablate::cpu
