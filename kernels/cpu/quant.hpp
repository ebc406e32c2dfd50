#pragma once
// 8-bit formats for the CPU kernels: Q8_0 weight blocks (GGUF's layout) and the 8-bit KV-cache
// element formats (fp8 e4m3, and int8 with a per-token-per-head scale). Scalar, portable code;
// the kernels vectorise the reading side.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>
#include <type_traits>

#include "cpu/half.hpp"

namespace ablate::cpu {

// ---- Q8_0 ----------------------------------------------------------------------------------
// 32 int8 values and their fp16 scale, 34 bytes: ggml's block_q8_0, so a block is read from a
// GGUF file as it lies. Value i of a block is to_float(d) * qs[i]; that product is exact in fp32
// (11 + 8 significant bits), so a Q8_0 matmul is the fp32 product of the dequantized matrix.
struct BlockQ8_0 {
  Half d;
  std::int8_t qs[32];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 blocks are 34 bytes, as in GGUF");
inline constexpr int kQ8Block = 32;

inline int q8_0_blocks_per_row(int in) { return (in + kQ8Block - 1) / kQ8Block; }

// One block from n <= 32 values (the rest are zeros). ggml's rule: d = max|x| / 127, q = round(x / d).
// The division uses the fp16-rounded scale, which makes a block dequantized from a ggml Q8_0 file
// (largest |q| = 127, as ggml writes every block) quantize back to exactly the same bytes.
inline BlockQ8_0 quantize_q8_0_block(const float* x, int n) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::abs(x[i]));
  BlockQ8_0 b{};
  b.d = to_half(amax / 127.0f);
  const float d = to_float(b.d);
  for (int i = 0; i < n; ++i)
    b.qs[i] = d > 0.0f ? static_cast<std::int8_t>(std::clamp(std::nearbyint(x[i] / d), -127.0f, 127.0f)) : 0;
  return b;
}

// rows x in, row-major, into rows x q8_0_blocks_per_row(in) blocks; a row whose length is not a
// multiple of 32 ends in a zero-padded block (the matmul never reads x there).
inline std::vector<BlockQ8_0> quantize_q8_0(const float* w, int rows, int in) {
  const int nb = q8_0_blocks_per_row(in);
  std::vector<BlockQ8_0> out(std::size_t(rows) * nb);
  for (int r = 0; r < rows; ++r)
    for (int b = 0; b < nb; ++b)
      out[std::size_t(r) * nb + b] =
          quantize_q8_0_block(w + std::size_t(r) * in + std::size_t(b) * kQ8Block, std::min(kQ8Block, in - b * kQ8Block));
  return out;
}

inline float q8_0_value(const BlockQ8_0* row, int i) { return to_float(row[i / kQ8Block].d) * row[i / kQ8Block].qs[i % kQ8Block]; }

// Q8_0 rows as the CPU matmul holds them: whole groups of 8 rows interleaved block by block, the
// last out % 8 rows as plain blocks. The same 34 bytes a block, rearranged so that AVX2 computes
// 8 rows' block dot products in the 8 lanes of one register: a 32-byte load gives 4 values of each
// of the 8 rows, times 4 values of x broadcast to every lane, and the 8 fp16 scales widen in one
// instruction. No horizontal sums, and one sequential stream per group (ggml's CPU "repack" of
// quantized weights rests on the same idea).
struct BlockQ8_0x8 {
  Half d[8];              // d[j]: row j's scale
  std::int8_t qs[8 * 32];  // qs[32 k + 4 j + i]: value 4 k + i of row j's block (q8_0x8_index)
};
static_assert(sizeof(BlockQ8_0x8) == 8 * sizeof(BlockQ8_0), "a group block holds 8 blocks' bytes");
// Where value i of row j's block lies in BlockQ8_0x8::qs.
inline constexpr int q8_0x8_index(int j, int i) { return 32 * (i / 4) + 4 * j + i % 4; }

struct PackedQ8_0 {
  int out = 0, in = 0;
  std::vector<BlockQ8_0x8> groups;  // [out / 8][blocks per row]
  std::vector<BlockQ8_0> tail;      // [out % 8][blocks per row]
  bool empty() const { return groups.empty() && tail.empty(); }
  std::size_t bytes() const { return groups.size() * sizeof(BlockQ8_0x8) + tail.size() * sizeof(BlockQ8_0); }
  // Row o's block b, as quantize_q8_0 wrote it.
  BlockQ8_0 block(int o, int b) const {
    const int nb = q8_0_blocks_per_row(in), full = out / 8 * 8;
    if (o >= full) return tail[std::size_t(o - full) * nb + b];
    const BlockQ8_0x8& g = groups[std::size_t(o / 8) * nb + b];
    BlockQ8_0 r{};
    r.d = g.d[o % 8];
    for (int i = 0; i < kQ8Block; ++i) r.qs[i] = g.qs[q8_0x8_index(o % 8, i)];
    return r;
  }
};

// blocks: [out][q8_0_blocks_per_row(in)], as quantize_q8_0 returns them.
inline PackedQ8_0 pack_q8_0(const std::vector<BlockQ8_0>& blocks, int out, int in) {
  PackedQ8_0 p;
  p.out = out, p.in = in;
  const int nb = q8_0_blocks_per_row(in), full = out / 8 * 8;
  p.groups.resize(std::size_t(full / 8) * nb);
  for (int o = 0; o < full; ++o)
    for (int b = 0; b < nb; ++b) {
      const BlockQ8_0& src = blocks[std::size_t(o) * nb + b];
      BlockQ8_0x8& g = p.groups[std::size_t(o / 8) * nb + b];
      g.d[o % 8] = src.d;
      for (int i = 0; i < kQ8Block; ++i) g.qs[q8_0x8_index(o % 8, i)] = src.qs[i];
    }
  p.tail.assign(blocks.begin() + std::ptrdiff_t(std::size_t(full) * nb), blocks.end());
  return p;
}

// ---- Q4_0, Q4_1, Q5_0, Q5_1 (dtype native: a GGUF file's own 4- and 5-bit blocks) ---------------
// ggml's 32-value blocks of unsigned q: byte i of qs holds q_i's low 4 bits in its low nibble and
// q_{i+16}'s in its high one; Q5's 32-bit qh holds bit 4 of q_i in bit i. The value is d * q + m
// (d * q exact in fp32, one rounding for + m, as ggml dequantizes), where Q4_0 and Q5_0 have no m
// of their own: their value d (q - 8) or d (q - 16) is d q + m with m = -8 d or -16 d, exactly. So
// one kernel serves all four, each held in its own 18, 20, 22 or 24 bytes a block.
struct BlockQ4_0 {
  Half d;
  std::uint8_t qs[16];
};
struct BlockQ4_1 {
  Half d, m;
  std::uint8_t qs[16];
};
struct BlockQ5_0 {
  Half d;
  std::uint8_t qh[4];
  std::uint8_t qs[16];
};
struct BlockQ5_1 {
  Half d, m;
  std::uint8_t qh[4];
  std::uint8_t qs[16];
};
// IQ4_NL: Q4_0's 18 bytes, but each 4-bit q picks one of 16 non-uniform int8 levels (ggml's
// kvalues_iq4nl): value = d * kIQ4Levels[q], one rounding, as ggml dequantizes.
struct BlockIQ4_NL {
  Half d;
  std::uint8_t qs[16];
};
inline constexpr std::int8_t kIQ4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 &&
                  sizeof(BlockIQ4_NL) == 18,
              "the blocks are 18, 20, 22, 24 and 18 bytes, as in GGUF");
template <class Block>
inline constexpr bool kHasOffset = std::is_same_v<Block, BlockQ4_1> || std::is_same_v<Block, BlockQ5_1>;
template <class Block>
inline constexpr bool kFiveBit = std::is_same_v<Block, BlockQ5_0> || std::is_same_v<Block, BlockQ5_1>;
template <class Block>
inline constexpr bool kLevels = std::is_same_v<Block, BlockIQ4_NL>;  // q indexes kIQ4Levels

inline int q4_nibble(const std::uint8_t* qs, int i) { return i < 16 ? qs[i] & 0x0F : qs[i - 16] >> 4; }
template <class Block>
int block_q(const Block& b, int i) {
  if constexpr (kFiveBit<Block>) {
    std::uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    return q4_nibble(b.qs, i) | int((qh >> i) & 1u) << 4;
  } else {
    return q4_nibble(b.qs, i);
  }
}
// The integer a block's value i is d times (plus m): q, or IQ4_NL's level kIQ4Levels[q].
template <class Block>
int block_w(const Block& b, int i) {
  if constexpr (kLevels<Block>) return kIQ4Levels[block_q(b, i)];
  else return block_q(b, i);
}
// A block's offset m: value i = d * block_w(b, i) + m (none for IQ4_NL).
template <class Block>
float nibble_offset(const Block& b) {
  if constexpr (kHasOffset<Block>) return to_float(b.m);
  else if constexpr (kLevels<Block>) return 0.0f;
  else return (kFiveBit<Block> ? -16.0f : -8.0f) * to_float(b.d);
}
template <class Block>
float nibble_value(const Block& b, int i) {
  if constexpr (kLevels<Block>) return to_float(b.d) * float(block_w(b, i));
  else return float(block_q(b, i)) * to_float(b.d) + nibble_offset(b);
}

// rows x in values (in a multiple of 32) as Q4_1 blocks by ggml's rule: per block d = (max - min) / 15,
// m = min, q = min(15, int((x - min) / d + 0.5)) (the benchmarks' and tests' Q4_1 matrices).
std::vector<BlockQ4_1> quantize_q4_1(const float* w, int rows, int in);

// Throws std::invalid_argument when -8 d does not fit in fp16 (|d| >= 8188, no real checkpoint's).
BlockQ4_1 q4_0_as_q4_1(const BlockQ4_0& b);

// Rows of these blocks as the CPU matmul holds them, PackedQ8_0's design: whole groups of 8 rows
// interleaved block by block, the last out % 8 rows as plain blocks. In a group block, the 32-byte
// chunk k holds bytes 4k..4k+3 of each of the 8 rows' blocks (position 4 j + t: row j, byte 4k + t),
// so its low nibbles are those rows' values 4k..4k+3 and its high nibbles values 16+4k..16+4k+3:
// unsigned values go straight into vpmaddubsw against x's int8 values broadcast to all 8 lanes.
// Q5's fifth bits lie at the same positions, one byte for the 8 nibbles there: bit 2k (2k + 1) of
// qh[p] is bit 4 of the value whose low bits are the low (high) nibble at position p of chunk k, so
// one 32-byte load holds the block's fifth bits and a shift and a mask put a chunk's in place.
struct GroupQ4_0 {
  Half d[8];                // row j's scale
  std::uint8_t qs[8 * 16];  // qs[q8_0x8_index(j, i)]: byte i (< 16) of row j's block
};
struct GroupQ4_1 {
  Half d[8], m[8];          // row j's scale and offset
  std::uint8_t qs[8 * 16];
};
struct GroupQ5_0 {
  Half d[8];
  std::uint8_t qh[32];      // fifth bits: qh[p] bit 2k (2k + 1): chunk k's low (high) nibble at p
  std::uint8_t qs[8 * 16];
};
struct GroupQ5_1 {
  Half d[8], m[8];
  std::uint8_t qh[32];
  std::uint8_t qs[8 * 16];
};
struct GroupIQ4_NL {
  Half d[8];
  std::uint8_t qs[8 * 16];  // as GroupQ4_0's; the kernel looks each q's level up
};
template <class Block> struct GroupOf;
template <> struct GroupOf<BlockIQ4_NL> { using type = GroupIQ4_NL; };
template <> struct GroupOf<BlockQ4_0> { using type = GroupQ4_0; };
template <> struct GroupOf<BlockQ4_1> { using type = GroupQ4_1; };
template <> struct GroupOf<BlockQ5_0> { using type = GroupQ5_0; };
template <> struct GroupOf<BlockQ5_1> { using type = GroupQ5_1; };
static_assert(sizeof(GroupQ4_0) == 8 * sizeof(BlockQ4_0) && sizeof(GroupQ4_1) == 8 * sizeof(BlockQ4_1) &&
                  sizeof(GroupQ5_0) == 8 * sizeof(BlockQ5_0) && sizeof(GroupQ5_1) == 8 * sizeof(BlockQ5_1) &&
                  sizeof(GroupIQ4_NL) == 8 * sizeof(BlockIQ4_NL),
              "a group block holds 8 blocks' bytes");

template <class Block>
struct PackedNibbles {
  using Group = typename GroupOf<Block>::type;
  int out = 0, in = 0;       // in: a multiple of 32 (GGUF stores whole blocks)
  std::vector<Group> groups; // [out / 8][in / 32]
  std::vector<Block> tail;   // [out % 8][in / 32]
  bool empty() const { return groups.empty() && tail.empty(); }
  std::size_t bytes() const { return groups.size() * sizeof(Group) + tail.size() * sizeof(Block); }
  Block block(int o, int b) const;  // row o's block b, as the file had it
};
using PackedQ4_0 = PackedNibbles<BlockQ4_0>;
using PackedQ4_1 = PackedNibbles<BlockQ4_1>;
using PackedQ5_0 = PackedNibbles<BlockQ5_0>;
using PackedQ5_1 = PackedNibbles<BlockQ5_1>;
using PackedIQ4_NL = PackedNibbles<BlockIQ4_NL>;

// blocks: [out][in / 32], row-major, as a GGUF tensor of that type lies. Throws
// std::invalid_argument unless in is a positive multiple of 32 and blocks.size() == out * in / 32.
template <class Block>
PackedNibbles<Block> pack_nibbles(const std::vector<Block>& blocks, int out, int in);

// ---- Q4_K and Q5_K (dtype native: the K-quants of Q4_K_M and Q5_K_M files' matrices) ------------
// ggml's block_q4_K: 256 values in 8 sub-blocks of 32, value = d sc_s q - dmin m_s with 4-bit q,
// the sub-block's 6-bit scale sc_s and min m_s packed in 12 bytes, d and dmin fp16. Bytes 32c..32c+31
// of qs hold sub-block 2c's values in their low nibbles and sub-block 2c+1's in their high ones.
// block_q5_K is the same plus qh: bit s of qh[l] is bit 4 of value l of sub-block s.
struct BlockQ4_K {
  Half d, dmin;
  std::uint8_t scales[12];
  std::uint8_t qs[128];
};
struct BlockQ5_K {
  Half d, dmin;
  std::uint8_t scales[12];
  std::uint8_t qh[32];
  std::uint8_t qs[128];
};
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176, "Q4_K and Q5_K blocks are 144 and 176 bytes, as in GGUF");
inline constexpr int kQ4KBlock = 256;  // values a K-quant super-block holds
template <class Block>
inline constexpr bool kK4FiveBit = std::is_same_v<Block, BlockQ5_K>;

// Sub-block s's 6-bit scale and min from the 12 packed bytes (ggml's get_scale_min_k4).
inline void k4_scale_min(const std::uint8_t* q, int s, int& sc, int& m) {
  if (s < 4) {
    sc = q[s] & 63, m = q[s + 4] & 63;
  } else {
    sc = (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4);
    m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}
// Value i's q: 4 bits (Q4_K), 5 (Q5_K).
template <class Block>
int k4_q(const Block& b, int i) {
  const std::uint8_t byte = b.qs[32 * (i / 64) + i % 32];
  const int low = (i % 64) < 32 ? byte & 0x0F : byte >> 4;
  if constexpr (kK4FiveBit<Block>) return low | ((b.qh[i % 32] >> (i / 32)) & 1) << 4;
  else return low;
}
// Value i as ggml dequantizes it: (d sc) q - (dmin m), each product rounded once in fp32.
template <class Block>
float k4_value(const Block& b, int i) {
  int sc, m;
  k4_scale_min(b.scales, i / 32, sc, m);
  return to_float(b.d) * float(sc) * float(k4_q(b, i)) - to_float(b.dmin) * float(m);
}

// Q4_K (Q5_K) rows as the CPU matmul holds them: 8 rows a group, each super-block's 8 sub-blocks in
// the 4-bit (5-bit) groups' chunk order (qs[s] as GroupQ4_1's qs, qh[s] as GroupQ5_1's, for
// sub-block s), the 6-bit scales and mins unpacked to a byte each so that 8 rows' of them load at
// once: 148 (180) bytes a row's block instead of 144 (176). A last group of fewer than 8 rows is
// padded with zero blocks.
struct GroupQ4_K {
  Half d[8], dmin[8];         // row j's super-block scales
  std::uint8_t sc[8][8];      // [s][j]: sub-block s's scale, row j
  std::uint8_t m[8][8];       // [s][j]: its min
  std::uint8_t qs[8][8 * 16]; // [s][q8_0x8_index(j, i)]: byte i of row j's sub-block s, as a Q4_1 block's
};
struct GroupQ5_K {
  Half d[8], dmin[8];
  std::uint8_t sc[8][8];
  std::uint8_t m[8][8];
  std::uint8_t qh[8][32];     // [s]: sub-block s's fifth bits, as GroupQ5_1's qh
  std::uint8_t qs[8][8 * 16];
};
static_assert(sizeof(GroupQ4_K) == 8 * 148 && sizeof(GroupQ5_K) == 8 * 180, "Q4_K and Q5_K group blocks are 8 rows of 148 and 180 bytes");

// The 256-value super-blocks' rows held 8 a group (GroupQ4_K, GroupQ5_K, GroupIQ4_XS, GroupQ6_K).
template <class Group>
struct PackedK {
  int out = 0, in = 0;        // in: a multiple of 256
  std::vector<Group> groups;  // [(out + 7) / 8][in / 256]; a last group padded with zero rows
  bool empty() const { return groups.empty(); }
  std::size_t bytes() const { return groups.size() * sizeof(Group); }
  // Row o's values [256 b, 256 b + 256), as ggml dequantizes them.
  void values(int o, int b, float* dst) const;
};
using PackedQ4_K = PackedK<GroupQ4_K>;
using PackedQ5_K = PackedK<GroupQ5_K>;
template <> void PackedQ4_K::values(int o, int b, float* dst) const;
template <> void PackedQ5_K::values(int o, int b, float* dst) const;

// blocks: [out][in / 256], as a GGUF Q4_K (Q5_K) tensor lies. Throws std::invalid_argument unless in
// is a positive multiple of 256 and blocks.size() == out * in / 256.
PackedQ4_K pack_q4_k(const std::vector<BlockQ4_K>& blocks, int out, int in);
PackedQ5_K pack_q5_k(const std::vector<BlockQ5_K>& blocks, int out, int in);

// ---- IQ4_XS (dtype native: the 4.25-bit type of IQ4_XS files) -----------------------------------
// ggml's block_iq4_xs: 256 values in 8 sub-blocks of 32, value = (d (ls_s - 32)) kIQ4Levels[q] with
// 4-bit q (sub-block s's 16 bytes at qs[16 s], values i and i + 16 in byte i as a Q4_0 block's) and a
// 6-bit ls_s (low 4 bits in scales_l, high 2 in scales_h).
struct BlockIQ4_XS {
  Half d;
  std::uint16_t scales_h;
  std::uint8_t scales_l[4];
  std::uint8_t qs[128];
};
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS blocks are 136 bytes, as in GGUF");
inline int iq4_xs_scale(const BlockIQ4_XS& b, int s) {  // ls_s - 32
  return (((b.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((b.scales_h >> (2 * s)) & 3) << 4)) - 32;
}
inline int iq4_xs_q(const BlockIQ4_XS& b, int i) { return q4_nibble(b.qs + 16 * (i / 32), i % 32); }
// Value i as ggml dequantizes it: dl = d (ls - 32), then dl times the level, each rounded once.
inline float iq4_xs_value(const BlockIQ4_XS& b, int i) {
  const float dl = to_float(b.d) * float(iq4_xs_scale(b, i / 32));
  return dl * float(kIQ4Levels[iq4_xs_q(b, i)]);
}

// IQ4_XS rows as the CPU matmul holds them: 8 rows a group, each sub-block's q in the 4-bit groups'
// chunk order (qs[s]), its scale ls - 32 unpacked to an int8 so that 8 rows' load at once: 138 bytes
// a row's block instead of 136.
struct GroupIQ4_XS {
  Half d[8];                   // row j's super-block scale
  std::int8_t sc[8][8];        // [s][j]: ls_s - 32, row j
  std::uint8_t qs[8][8 * 16];  // [s][q8_0x8_index(j, i)]: byte i of row j's sub-block s
};
static_assert(sizeof(GroupIQ4_XS) == 8 * 138, "an IQ4_XS group block is 8 rows of 138 bytes");
using PackedIQ4_XS = PackedK<GroupIQ4_XS>;
template <> void PackedIQ4_XS::values(int o, int b, float* dst) const;

// blocks: [out][in / 256], as a GGUF IQ4_XS tensor lies; the same contract as pack_q4_k.
PackedIQ4_XS pack_iq4_xs(const std::vector<BlockIQ4_XS>& blocks, int out, int in);

// ---- Q6_K (dtype native: the K-quant of a Q4_K_M file's attn_v and half its ffn_down) ------------
// ggml's block_q6_K: 256 values, value = d sc_g (q - 32) with 6-bit q (low 4 bits in ql, high 2 in
// qh) and an int8 scale sc_g for each 16 values, d fp16.
struct BlockQ6_K {
  std::uint8_t ql[128];
  std::uint8_t qh[64];
  std::int8_t scales[16];
  Half d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K blocks are 210 bytes, as in GGUF");

inline int q6_k_q(const BlockQ6_K& b, int i) {  // value i's 6-bit q (0..63)
  const int h = i / 128, quarter = (i % 128) / 32, l = i % 32;
  const std::uint8_t lo = b.ql[64 * h + l + 32 * (quarter & 1)];
  return (quarter >= 2 ? lo >> 4 : lo & 0x0F) | ((b.qh[32 * h + l] >> (2 * quarter)) & 3) << 4;
}
// Value i as ggml dequantizes it: (d sc) (q - 32), each product rounded once in fp32.
inline float q6_k_value(const BlockQ6_K& b, int i) {
  return to_float(b.d) * float(b.scales[i / 16]) * float(q6_k_q(b, i) - 32);
}

// Q6_K rows as the CPU matmul holds them: 8 rows a group; each 32-value sub-block's low 4 bits in
// the 4-bit groups' chunk order (qs[s]), its top 2 bits at the same positions of 2 more 32-byte
// chunks (qh[s][k % 2][p], bits 4 (k / 2) + 2 h: chunk k's low (h = 0) or high (h = 1) nibble at
// position p), and the 16 scales of 8 rows together: 210 bytes a row's block, as in the file.
struct GroupQ6_K {
  Half d[8];                   // row j's super-block scale
  std::int8_t sc[16][8];       // [g][j]: the scale of values 16 g..16 g + 15, row j
  std::uint8_t qh[8][2][32];   // [s][k % 2][p]: sub-block s's top bits, as above
  std::uint8_t qs[8][8 * 16];  // [s][q8_0x8_index(j, i)]: values i and i + 16's low bits, row j
};
static_assert(sizeof(GroupQ6_K) == 8 * 210, "a Q6_K group block is 8 rows of 210 bytes");

using PackedQ6_K = PackedK<GroupQ6_K>;
template <> void PackedQ6_K::values(int o, int b, float* dst) const;

// blocks: [out][in / 256], as a GGUF Q6_K tensor lies. Throws std::invalid_argument unless in is a
// positive multiple of 256 and blocks.size() == out * in / 256.
PackedQ6_K pack_q6_k(const std::vector<BlockQ6_K>& blocks, int out, int in);

// ---- Q3_K and Q2_K (dtype native: the K-quants of Q3_K_* and Q2_K files) -------------------------
// 256 values, 16 scales, one for each 16 values. Value i's 2 low bits are bits 2j..2j+1 of
// qs[32 (i / 128) + i % 32] with j = (i % 128) / 32. ggml's block_q3_K: value = (d sc_g) (q - 4)
// with 3-bit q (third bit: bit 4 (i / 128) + j of hmask[i % 32]) and 6-bit sc_g - 32 (low 4 bits in
// scales[0..7], high 2 in scales[8..11]). block_q2_K: value = (d sc_g) q - (dmin m_g) with 2-bit q
// and 4-bit sc_g, m_g (low and high nibble of scales[g]).
struct BlockQ3_K {
  std::uint8_t hmask[32];
  std::uint8_t qs[64];
  std::uint8_t scales[12];
  Half d;
};
struct BlockQ2_K {
  std::uint8_t scales[16];
  std::uint8_t qs[64];
  Half d, dmin;
};
static_assert(sizeof(BlockQ3_K) == 110 && sizeof(BlockQ2_K) == 84, "Q3_K and Q2_K blocks are 110 and 84 bytes, as in GGUF");

inline int k2_low_bits(const std::uint8_t* qs, int i) { return (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3; }
inline int q3_k_q(const BlockQ3_K& b, int i) {  // 0..7: value i is d sc (q - 4)
  return k2_low_bits(b.qs, i) | ((b.hmask[i % 32] >> (4 * (i / 128) + (i % 128) / 32)) & 1) << 2;
}
inline int q3_k_scale(const BlockQ3_K& b, int g) {  // sc_g: -32..31
  const int low = g < 8 ? b.scales[g] & 0xF : b.scales[g - 8] >> 4;
  return (low | ((b.scales[8 + g % 4] >> (2 * (g / 4))) & 3) << 4) - 32;
}
// Value i as ggml dequantizes it: (d sc) (q - 4), each product rounded once in fp32.
inline float q3_k_value(const BlockQ3_K& b, int i) { return to_float(b.d) * float(q3_k_scale(b, i / 16)) * float(q3_k_q(b, i) - 4); }
inline int q2_k_q(const BlockQ2_K& b, int i) { return k2_low_bits(b.qs, i); }
// Value i as ggml dequantizes it: (d sc) q - (dmin m), each product rounded once in fp32.
inline float q2_k_value(const BlockQ2_K& b, int i) {
  const int sm = b.scales[i / 16];
  return to_float(b.d) * float(sm & 0xF) * float(q2_k_q(b, i)) - to_float(b.dmin) * float(sm >> 4);
}

// Q3_K (Q2_K) rows as the CPU matmul holds them: 8 rows a group; each 32-value sub-block's 2 low
// bits at the 4-bit groups' positions in 2 chunks of 32 bytes (ql[s][k % 2][p], bits 4 (k / 2) + 2 h:
// chunk k's low (h = 0) or high (h = 1) value at position p, as GroupQ6_K's top bits), Q3_K's third
// bits as Q5's fifth bits (qh[s][p], bit 2k + h), the 16 scales of 8 rows together: 114 (84) bytes
// a row's block instead of 110 (84).
struct GroupQ3_K {
  Half d[8];
  std::int8_t sc[16][8];       // [g][j]: sc_g of row j
  std::uint8_t ql[8][2][32];
  std::uint8_t qh[8][32];
};
struct GroupQ2_K {
  Half d[8], dmin[8];
  std::uint8_t sm[16][8];      // [g][j]: row j's scales[g] (sc_g low nibble, m_g high)
  std::uint8_t ql[8][2][32];
};
static_assert(sizeof(GroupQ3_K) == 8 * 114 && sizeof(GroupQ2_K) == 8 * 84, "Q3_K and Q2_K group blocks are 8 rows of 114 and 84 bytes");
using PackedQ3_K = PackedK<GroupQ3_K>;
using PackedQ2_K = PackedK<GroupQ2_K>;
template <> void PackedQ3_K::values(int o, int b, float* dst) const;
template <> void PackedQ2_K::values(int o, int b, float* dst) const;

// blocks: [out][in / 256], as a GGUF Q3_K (Q2_K) tensor lies; the same contract as pack_q4_k.
PackedQ3_K pack_q3_k(const std::vector<BlockQ3_K>& blocks, int out, int in);
PackedQ2_K pack_q2_k(const std::vector<BlockQ2_K>& blocks, int out, int in);

// ---- fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, S.1111.111 is NaN, largest 448) --------------
struct Fp8E4M3 {
  std::uint8_t bits;
};

inline float to_float(Fp8E4M3 h) {
  const int e = (h.bits >> 3) & 0xf, m = h.bits & 0x7;
  const float sign = (h.bits & 0x80) ? -1.0f : 1.0f;
  if (e == 15 && m == 7) return std::nanf("");
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);  // subnormal: m * 2^-9
  return sign * std::ldexp(static_cast<float>(8 + m), e - 10);     // (1 + m/8) * 2^(e-7)
}

// Round to nearest even; values beyond 448 saturate to +-448 (the "satfinite" conversion CUDA's
// __nv_cvt_float_to_fp8 offers: a KV entry must not become NaN); NaN stays NaN.
inline Fp8E4M3 to_fp8_e4m3(float f) {
  const std::uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return {static_cast<std::uint8_t>(sign | 0x7f)};
  const float a = std::abs(f);
  if (a < 0.015625f) {  // below the smallest normal 2^-6: multiples of 2^-9 (8 * 2^-9 is the normal 2^-6)
    return {static_cast<std::uint8_t>(sign | static_cast<std::uint8_t>(std::nearbyint(a * 512.0f)))};
  }
  int e = 0;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int q = static_cast<int>(std::nearbyint((m * 2.0f - 1.0f) * 8.0f));
  int E = e - 1 + 7;
  if (q == 8) q = 0, ++E;
  if (E > 15 || (E == 15 && q == 7)) return {static_cast<std::uint8_t>(sign | 0x7e)};  // 448
  return {static_cast<std::uint8_t>(sign | (E << 3) | q)};
}

// ---- int8 KV: per token, per KV head, one fp32 scale -----------------------------------------
// scale = max|x| / 127, q = round(x / scale): each value within scale / 2 of the original.
inline float quantize_int8(const float* x, int n, std::int8_t* q) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::abs(x[i]));
  const float scale = amax / 127.0f;
  for (int i = 0; i < n; ++i)
    q[i] = scale > 0.0f ? static_cast<std::int8_t>(std::clamp(std::nearbyint(x[i] / scale), -127.0f, 127.0f)) : 0;
  return scale;
}

}  // namespace ablate::cpu
