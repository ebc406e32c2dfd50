// The 4-bit weight blocks' conversions (quant.hpp).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/quant.hpp"

namespace ablate::cpu {

BlockQ4_1 q4_0_as_q4_1(const BlockQ4_0& b) {
  const float d = to_float(b.d);
  if (!(std::abs(8.0f * d) <= 65504.0f))  // fp16's largest finite value; NaN fails too
    throw std::invalid_argument("Q4_0 block scale " + std::to_string(d) + " is beyond what -8 d in fp16 can hold (|d| < 8188)");
  BlockQ4_1 r{};
  r.d = b.d;
  r.m = to_half(-8.0f * d);  // a power-of-two multiple: exact
  std::memcpy(r.qs, b.qs, sizeof r.qs);
  return r;
}

std::vector<BlockQ4_1> quantize_q4_1(const float* w, int rows, int in) {
  if (in <= 0 || in % kQ8Block != 0) throw std::invalid_argument("quantize_q4_1: " + std::to_string(in) + " values a row is not a positive multiple of 32");
  std::vector<BlockQ4_1> out(std::size_t(rows) * (in / kQ8Block));
  for (std::size_t b = 0; b < out.size(); ++b) {
    const float* x = w + b * kQ8Block;
    float lo = x[0], hi = x[0];
    for (int i = 1; i < kQ8Block; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
    const float d = (hi - lo) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = to_half(d), out[b].m = to_half(lo);
    const auto q = [&](float v) { return std::min(15, static_cast<int>((v - lo) * id + 0.5f)); };
    for (int i = 0; i < 16; ++i) out[b].qs[i] = static_cast<std::uint8_t>(q(x[i]) | (q(x[i + 16]) << 4));
  }
  return out;
}

namespace {
// Where value i (< 32) of row j's block lies in a group block: its chunk k, its position p in the
// chunk, and whether it is a high nibble.
struct NibblePlace {
  int k, p;
  bool high;
};
NibblePlace nibble_place(int j, int i) {
  const int byte = i % 16;  // values i and i + 16 share byte i
  return {byte / 4, 4 * j + byte % 4, i >= 16};
}
// The bit of a group's qh[p] that holds that value's fifth bit (the 5-bit groups).
int fifth_bit(NibblePlace at) { return 2 * at.k + at.high; }
// Value i (< 32) of row j's sub-block in a group's 128 bytes of nibbles (qs), as a Q4_1 block's.
void put_nibble(std::uint8_t* qs, int j, int i, int q) {
  std::uint8_t& byte = qs[q8_0x8_index(j, i % 16)];
  byte = std::uint8_t(i >= 16 ? (byte & 0x0F) | (q & 0x0F) << 4 : (byte & 0xF0) | (q & 0x0F));
}
int get_nibble(const std::uint8_t* qs, int j, int i) {
  const std::uint8_t byte = qs[q8_0x8_index(j, i % 16)];
  return i >= 16 ? byte >> 4 : byte & 0x0F;
}
// Value i (< 32) of row j's sub-block: 2 of its bits (Q3_K's and Q2_K's low bits, Q6_K's top bits)
// into a group's two-chunk array ql[2][32], and back.
void put_two_bits(std::uint8_t (*ql)[32], int j, int i, int q) {
  const NibblePlace at = nibble_place(j, i);
  ql[at.k % 2][at.p] |= std::uint8_t((q & 3) << (4 * (at.k / 2) + 2 * at.high));
}
int get_two_bits(const std::uint8_t (*ql)[32], int j, int i) {
  const NibblePlace at = nibble_place(j, i);
  return ql[at.k % 2][at.p] >> (4 * (at.k / 2) + 2 * at.high) & 3;
}
// One bit of value i at a group's bit plane qh[32] (Q5's fifth bits, Q3_K's third), and back.
void put_bit(std::uint8_t* qh, int j, int i, int bit) {
  const NibblePlace at = nibble_place(j, i);
  qh[at.p] |= std::uint8_t((bit & 1) << fifth_bit(at));
}
int get_bit(const std::uint8_t* qh, int j, int i) {
  const NibblePlace at = nibble_place(j, i);
  return qh[at.p] >> fifth_bit(at) & 1;
}

}  // namespace

template <class Block>
PackedNibbles<Block> pack_nibbles(const std::vector<Block>& blocks, int out, int in) {
  if (in <= 0 || in % kQ8Block != 0 || out < 0 || blocks.size() != std::size_t(out) * std::size_t(in / kQ8Block))
    throw std::invalid_argument("pack_nibbles: " + std::to_string(blocks.size()) + " blocks are not " + std::to_string(out) +
                                " rows of " + std::to_string(in) + " values (a positive multiple of 32)");
  PackedNibbles<Block> p;
  p.out = out, p.in = in;
  const int nb = in / kQ8Block, full = out / 8 * 8;
  p.groups.resize(std::size_t(full / 8) * nb);
  for (int o = 0; o < full; ++o)
    for (int b = 0; b < nb; ++b) {
      const Block& src = blocks[std::size_t(o) * nb + b];
      auto& g = p.groups[std::size_t(o / 8) * nb + b];
      const int j = o % 8;
      g.d[j] = src.d;
      if constexpr (kHasOffset<Block>) g.m[j] = src.m;
      for (int i = 0; i < 16; ++i) g.qs[q8_0x8_index(j, i)] = src.qs[i];
      if constexpr (kFiveBit<Block>) {
        std::uint32_t qh;
        std::memcpy(&qh, src.qh, 4);
        for (int i = 0; i < kQ8Block; ++i) put_bit(g.qh, j, i, int(qh >> i & 1u));
      }
    }
  p.tail.assign(blocks.begin() + std::ptrdiff_t(std::size_t(full) * nb), blocks.end());
  return p;
}

template <class Block>
Block PackedNibbles<Block>::block(int o, int b) const {
  const int nb = in / kQ8Block, full = out / 8 * 8;
  if (o >= full) return tail[std::size_t(o - full) * nb + b];
  const Group& g = groups[std::size_t(o / 8) * nb + b];
  const int j = o % 8;
  Block r{};
  r.d = g.d[j];
  if constexpr (kHasOffset<Block>) r.m = g.m[j];
  for (int i = 0; i < 16; ++i) r.qs[i] = g.qs[q8_0x8_index(j, i)];
  if constexpr (kFiveBit<Block>) {
    std::uint32_t qh = 0;
    for (int i = 0; i < kQ8Block; ++i) qh |= std::uint32_t(get_bit(g.qh, j, i)) << i;
    std::memcpy(r.qh, &qh, 4);
  }
  return r;
}

#define ABLATE_NIBBLE_TYPES(X) X(BlockQ4_0) X(BlockQ4_1) X(BlockQ5_0) X(BlockQ5_1) X(BlockIQ4_NL)
#define ABLATE_INSTANTIATE(B)                                                              \
  template PackedNibbles<B> pack_nibbles(const std::vector<B>&, int, int);                 \
  template B PackedNibbles<B>::block(int, int) const;
ABLATE_NIBBLE_TYPES(ABLATE_INSTANTIATE)
#undef ABLATE_INSTANTIATE
#undef ABLATE_NIBBLE_TYPES

namespace {
// The 256-value blocks packed 8 rows a group: fill(src, group, j) writes row j of a group block.
template <class Group, class Block, class Fill>
PackedK<Group> pack_groups(const char* what, const std::vector<Block>& blocks, int out, int in, Fill fill) {
  if (in <= 0 || in % kQ4KBlock != 0 || out < 0 || blocks.size() != std::size_t(out) * std::size_t(in / kQ4KBlock))
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(blocks.size()) + " blocks are not " + std::to_string(out) +
                                " rows of " + std::to_string(in) + " values (a positive multiple of 256)");
  PackedK<Group> p;
  p.out = out, p.in = in;
  const int nb = in / kQ4KBlock;
  p.groups.resize(std::size_t((out + 7) / 8) * nb);  // value-initialized: the padding rows are zero
  for (int o = 0; o < out; ++o)
    for (int b = 0; b < nb; ++b) fill(blocks[std::size_t(o) * nb + b], p.groups[std::size_t(o / 8) * nb + b], o % 8);
  return p;
}

// Q4_K and Q5_K: each sub-block as a Q4_1 (Q5_1) block of the 4-bit (5-bit) groups.
template <class Group, class Block>
void fill_k4(const Block& src, Group& g, int j) {
  g.d[j] = src.d, g.dmin[j] = src.dmin;
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    k4_scale_min(src.scales, s, sc, m);
    g.sc[s][j] = std::uint8_t(sc), g.m[s][j] = std::uint8_t(m);
    for (int i = 0; i < kQ8Block; ++i) {
      const int q = k4_q(src, 32 * s + i);
      put_nibble(g.qs[s], j, i, q);
      if constexpr (kK4FiveBit<Block>) put_bit(g.qh[s], j, i, q >> 4);
    }
  }
}

template <class Group>
void k4_values(const Group& g, int j, float* dst) {
  const float d = to_float(g.d[j]), dmin = to_float(g.dmin[j]);
  for (int s = 0; s < 8; ++s)
    for (int i = 0; i < kQ8Block; ++i) {
      int q = get_nibble(g.qs[s], j, i);
      if constexpr (std::is_same_v<Group, GroupQ5_K>) q |= get_bit(g.qh[s], j, i) << 4;
      dst[32 * s + i] = d * float(g.sc[s][j]) * float(q) - dmin * float(g.m[s][j]);
    }
}
}  // namespace

PackedQ4_K pack_q4_k(const std::vector<BlockQ4_K>& blocks, int out, int in) {
  return pack_groups<GroupQ4_K>("pack_q4_k", blocks, out, in, fill_k4<GroupQ4_K, BlockQ4_K>);
}
PackedQ5_K pack_q5_k(const std::vector<BlockQ5_K>& blocks, int out, int in) {
  return pack_groups<GroupQ5_K>("pack_q5_k", blocks, out, in, fill_k4<GroupQ5_K, BlockQ5_K>);
}
template <>
void PackedQ4_K::values(int o, int b, float* dst) const {
  k4_values(groups[std::size_t(o / 8) * (in / kQ4KBlock) + b], o % 8, dst);
}
template <>
void PackedQ5_K::values(int o, int b, float* dst) const {
  k4_values(groups[std::size_t(o / 8) * (in / kQ4KBlock) + b], o % 8, dst);
}

PackedIQ4_XS pack_iq4_xs(const std::vector<BlockIQ4_XS>& blocks, int out, int in) {
  return pack_groups<GroupIQ4_XS>("pack_iq4_xs", blocks, out, in, [](const BlockIQ4_XS& src, GroupIQ4_XS& g, int j) {
    g.d[j] = src.d;
    for (int s = 0; s < 8; ++s) {
      g.sc[s][j] = std::int8_t(iq4_xs_scale(src, s));
      for (int i = 0; i < kQ8Block; ++i) put_nibble(g.qs[s], j, i, iq4_xs_q(src, 32 * s + i));
    }
  });
}
template <>
void PackedIQ4_XS::values(int o, int b, float* dst) const {
  const GroupIQ4_XS& g = groups[std::size_t(o / 8) * (in / kQ4KBlock) + b];
  const int j = o % 8;
  for (int s = 0; s < 8; ++s) {
    const float dl = to_float(g.d[j]) * float(g.sc[s][j]);
    for (int i = 0; i < kQ8Block; ++i) dst[32 * s + i] = dl * float(kIQ4Levels[get_nibble(g.qs[s], j, i)]);
  }
}

PackedQ3_K pack_q3_k(const std::vector<BlockQ3_K>& blocks, int out, int in) {
  return pack_groups<GroupQ3_K>("pack_q3_k", blocks, out, in, [](const BlockQ3_K& src, GroupQ3_K& g, int j) {
    g.d[j] = src.d;
    for (int gi = 0; gi < 16; ++gi) g.sc[gi][j] = std::int8_t(q3_k_scale(src, gi));
    for (int s = 0; s < 8; ++s)
      for (int i = 0; i < kQ8Block; ++i) {
        const int q = q3_k_q(src, 32 * s + i);
        put_two_bits(g.ql[s], j, i, q);
        put_bit(g.qh[s], j, i, q >> 2);
      }
  });
}
template <>
void PackedQ3_K::values(int o, int b, float* dst) const {
  const GroupQ3_K& g = groups[std::size_t(o / 8) * (in / kQ4KBlock) + b];
  const int j = o % 8;
  for (int s = 0; s < 8; ++s)
    for (int i = 0; i < kQ8Block; ++i) {
      const int q = get_two_bits(g.ql[s], j, i) | get_bit(g.qh[s], j, i) << 2;
      dst[32 * s + i] = to_float(g.d[j]) * float(g.sc[(32 * s + i) / 16][j]) * float(q - 4);
    }
}

PackedQ2_K pack_q2_k(const std::vector<BlockQ2_K>& blocks, int out, int in) {
  return pack_groups<GroupQ2_K>("pack_q2_k", blocks, out, in, [](const BlockQ2_K& src, GroupQ2_K& g, int j) {
    g.d[j] = src.d, g.dmin[j] = src.dmin;
    for (int gi = 0; gi < 16; ++gi) g.sm[gi][j] = src.scales[gi];
    for (int s = 0; s < 8; ++s)
      for (int i = 0; i < kQ8Block; ++i) put_two_bits(g.ql[s], j, i, q2_k_q(src, 32 * s + i));
  });
}
template <>
void PackedQ2_K::values(int o, int b, float* dst) const {
  const GroupQ2_K& g = groups[std::size_t(o / 8) * (in / kQ4KBlock) + b];
  const int j = o % 8;
  for (int s = 0; s < 8; ++s)
    for (int i = 0; i < kQ8Block; ++i) {
      const int sm = g.sm[(32 * s + i) / 16][j];
      dst[32 * s + i] = to_float(g.d[j]) * float(sm & 0xF) * float(get_two_bits(g.ql[s], j, i)) - to_float(g.dmin[j]) * float(sm >> 4);
    }
}

PackedQ6_K pack_q6_k(const std::vector<BlockQ6_K>& blocks, int out, int in) {
  return pack_groups<GroupQ6_K>("pack_q6_k", blocks, out, in, [](const BlockQ6_K& src, GroupQ6_K& g, int j) {
    g.d[j] = src.d;
    for (int gi = 0; gi < 16; ++gi) g.sc[gi][j] = src.scales[gi];
    for (int s = 0; s < 8; ++s)
      for (int i = 0; i < kQ8Block; ++i) {
        const int q = q6_k_q(src, 32 * s + i);
        put_nibble(g.qs[s], j, i, q);
        put_two_bits(g.qh[s], j, i, q >> 4);
      }
  });
}
template <>
void PackedQ6_K::values(int o, int b, float* dst) const {
  const GroupQ6_K& g = groups[std::size_t(o / 8) * (in / kQ4KBlock) + b];
  const int j = o % 8;
  for (int s = 0; s < 8; ++s)
    for (int i = 0; i < kQ8Block; ++i) {
      const int q = get_nibble(g.qs[s], j, i) | get_two_bits(g.qh[s], j, i) << 4;
      dst[32 * s + i] = to_float(g.d[j]) * float(g.sc[(32 * s + i) / 16][j]) * float(q - 32);
    }
}

}  // namespace ablate::cpu
