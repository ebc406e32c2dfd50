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

template <class Block>
PackedQ4<Block> pack_q4(const std::vector<Block>& blocks, int out, int in) {
  if (in <= 0 || in % kQ8Block != 0 || out < 0 || blocks.size() != std::size_t(out) * std::size_t(in / kQ8Block))
    throw std::invalid_argument("pack_q4: " + std::to_string(blocks.size()) + " blocks are not " + std::to_string(out) +
                                " rows of " + std::to_string(in) + " values (a positive multiple of 32)");
  PackedQ4<Block> p;
  p.out = out, p.in = in;
  const int nb = in / kQ8Block, full = out / 8 * 8;
  p.groups.resize(std::size_t(full / 8) * nb);
  for (int o = 0; o < full; ++o)
    for (int b = 0; b < nb; ++b) {
      const Block& src = blocks[std::size_t(o) * nb + b];
      auto& g = p.groups[std::size_t(o / 8) * nb + b];
      g.d[o % 8] = src.d;
      if constexpr (std::is_same_v<Block, BlockQ4_1>) g.m[o % 8] = src.m;
      for (int i = 0; i < 16; ++i) g.qs[q8_0x8_index(o % 8, i)] = src.qs[i];
    }
  p.tail.assign(blocks.begin() + std::ptrdiff_t(std::size_t(full) * nb), blocks.end());
  return p;
}
template PackedQ4_1 pack_q4(const std::vector<BlockQ4_1>&, int, int);
template PackedQ4_0 pack_q4(const std::vector<BlockQ4_0>&, int, int);

}  // namespace ablate::cpu
