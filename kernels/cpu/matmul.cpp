// GCC 12 reports false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packet code, and a
// false -Wuninitialized inside avx512fintrin.h's _mm512_reduce_add_ps (its __Y is an
// intentionally undefined vector); both only for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/kernels.hpp"

namespace ablate::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ABLATE_SIMD_W 1
// 16 weights as fp32, whatever their stored type: 16-bit formats are widened as they are read, so
// a decode step streams half the bytes and still accumulates in fp32.
inline __m512 load_w(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_w(const Bf16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_w(const Half* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load_w(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_w(const Bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_w(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#endif

inline float widen(float v) { return v; }
inline float widen(Bf16 v) { return to_float(v); }
inline float widen(Half v) { return to_float(v); }

// Products with at most kFewRows rows of x take the few-rows kernels below (where the CPU has
// AVX-512 or AVX2); larger ones the GEMM paths.
constexpr int kFewRows = 16;

// tile<R>(r0) over rows of x in tiles of 4, then the 1 to 3 rows left as one smaller tile.
template <class Tile>
[[gnu::always_inline]] inline void over_rows(int rows, Tile&& tile) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) tile.template operator()<4>(r);
  switch (rows - r) {
    case 3: tile.template operator()<3>(r); break;
    case 2: tile.template operator()<2>(r); break;
    case 1: tile.template operator()<1>(r); break;
    default: break;
  }
}

// The K-quants' packed matrices: 256-value super-blocks, 8 rows a group.
template <class W>
constexpr bool kKQuant = std::is_same_v<W, PackedQ4_K> || std::is_same_v<W, PackedQ5_K> || std::is_same_v<W, PackedQ6_K> ||
                        std::is_same_v<W, PackedIQ4_XS> || std::is_same_v<W, PackedQ3_K> || std::is_same_v<W, PackedQ2_K>;
// The 32-value blocks' packed matrices (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL).
template <class W>
constexpr bool kPackedNibbles = false;
template <class Block>
constexpr bool kPackedNibbles<PackedNibbles<Block>> = true;

// x's rows as Q8_0 blocks, and each block's d * sum(q): what a Q4_1 block's offset m multiplies
// (ggml's block_q8_1 carries the same sum).
struct Q8Rows {
  const BlockQ8_0* q;
  const float* s;
  const float* s16 = nullptr;  // Q2_K: d * sum(q) over each block's two halves of 16 ([block][2])
};

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// ---- AVX2-level helpers and kernels, which AVX-512 CPUs run too ----------------------------
#define ABLATE_AVX2 1
#define ABLATE_Q8_INT8 1
// 8 values from element i, as fp32 (exact).
inline __m256 load8(const float* r, int i) { return _mm256_loadu_ps(r + i); }
inline __m256 load8(const Bf16* r, int i) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const Half* r, int i) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r + i))); }
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// Software prefetch of the weight stream into L2, kPrefetchAhead bytes ahead: the decode step
// streams ~120 matrices of 0.1-2 MB, each a fresh start for the hardware prefetcher. On Zen 3
// (AVX2) 2 KiB ahead helped (bench_kernels BM_Matmul rows 1 dtype 3, medians of 4 alternating
// runs: 0.61 -> 0.70 of the roofline at 576 x 576, 0.76 -> 0.81 at 576 x 1536); on Zen 4 (AVX-512)
// it hurts (3 alternating runs, no prefetch against 2 KiB: 576 x 49152 Q8_0 772 against 1084 us,
// Q4_1 406 against 610 us; 576 x 576 alike), so builds for AVX-512 hosts leave it to the hardware.
#if defined(__AVX512F__)
constexpr int kPrefetchAhead = 0;
#else
constexpr int kPrefetchAhead = 2048;
#endif
inline void prefetch_ahead(const void* p, int lines) {
  if constexpr (kPrefetchAhead > 0)
    for (int c = 0; c < lines; ++c) _mm_prefetch(static_cast<const char*>(p) + kPrefetchAhead + 64 * c, _MM_HINT_T1);
}

// ---- Q8_0 x Q8_0 (dtype q8_0; AVX2, and vpdpbusd where the CPU has AVX-512 VNNI: dot4) ---
// Both operands are blocks of 32 int8 values with an fp16 scale: a block pair's 32 products are
// summed exactly in int32, then times d_w * d_x (exact in fp32: two 11-bit significands). AVX2 has
// no signed x signed byte product, so |w| (unsigned) times x with w's sign: vpmaddubsw sums pairs,
// at most 2 * 128 * 127 < 2^15 in magnitude (x is within +-127; a file's w may hold -128), so it
// never saturates; vpmaddwd then sums quads.
inline __m256i q8_bytes(const BlockQ8_0& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
inline float q8_d(const BlockQ8_0& b) { return _cvtsh_ss(b.d.bits); }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define ABLATE_VNNI 1
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif
// acc + the sums of 4 adjacent u8 x s8 products, per int32 lane. With AVX-512 VNNI one vpdpbusd;
// otherwise vpmaddubsw's pair sums (which must not saturate: the callers' operands keep them
// within int16, as above) then vpmaddwd. The same exact int32 either way, so every host computes
// the same bits.
inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
#if defined(ABLATE_VNNI)
  return _mm256_dpbusd_epi32(acc, u, s);  // no int16 step: nothing can saturate
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
inline __m256 q8_pair_sums(__m256i w_abs, __m256i w, __m256i x) {  // 8 lanes of 4 products each, as fp32
  return _mm256_cvtepi32_ps(dot4(_mm256_setzero_si256(), w_abs, _mm256_sign_epi8(x, w)));
}

// Eight rows of w (one group of PackedQ8_0) x R rows of x from r0: lane j of acc[r] is
// y[r0 + r][o + j]. Per block, each 32-byte load of w holds 4 values of each of the 8 rows, x's
// matching 4 values are broadcast to all lanes, and the 8 chunks' sums add up in int32 (at most
// 8 * 4 * 128 * 127 in magnitude: exact) before the one conversion and the 8 rows' scales.
template <int R>
void group_q8q8(float* y, const BlockQ8_0* x, const BlockQ8_0x8* g, int nb, int out, int o, int r0) {
  __m256 acc[R];  // as dot_tile: no helpers take their address
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const BlockQ8_0* xr = x + std::size_t(r0) * nb;
  for (int b = 0; b < nb; ++b) {
    // Two chains of sums, even and odd chunks: vpdpbusd's latency (~4 cycles) on one chain of 8
    // would bound a one-row product below the memory's speed.
    __m256i sum[R][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_si256();
    prefetch_ahead(&g[b], 5);  // a 288-byte group block: 5 cache lines
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g[b].qs + 32 * k));
      const __m256i wa = _mm256_sign_epi8(wq, wq);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        std::int32_t x4;
        std::memcpy(&x4, xr[std::size_t(r) * nb + b].qs + 4 * k, 4);
        sum[r][k % 2] = dot4(sum[r][k % 2], wa, _mm256_sign_epi8(_mm256_set1_epi32(x4), wq));
      }
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].d)));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(sum[r][0], sum[r][1])),
                               _mm256_mul_ps(dw, _mm256_set1_ps(q8_d(xr[std::size_t(r) * nb + b]))), acc[r]);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + std::size_t(r0 + r) * out + o, acc[r]);
}

// One plain row of w (PackedQ8_0's last out % 8 rows) x R rows of x from r0.
template <int R>
void row_q8q8(float* y, const BlockQ8_0* x, const BlockQ8_0* wr, int nb, int out, int o, int r0) {
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const BlockQ8_0* xr = x + std::size_t(r0) * nb;
  for (int b = 0; b < nb; ++b) {
    const __m256i wq = q8_bytes(wr[b]), wa = _mm256_sign_epi8(wq, wq);
    const float dw = q8_d(wr[b]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0& xb = xr[std::size_t(r) * nb + b];
      acc[r] = _mm256_fmadd_ps(q8_pair_sums(wa, wq, q8_bytes(xb)), _mm256_set1_ps(dw * q8_d(xb)), acc[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) y[std::size_t(r0 + r) * out + o] = hsum8(acc[r]);
}

// Columns [o0, o1) of y; o0 is a multiple of 8 (matmul_any splits w in multiples of 16 rows).
void matmul_block(float* y, const BlockQ8_0* x, const PackedQ8_0* w, int rows, int in, int out, int o0, int o1) {
  const int nb = q8_0_blocks_per_row(in), full = out / 8 * 8;
  int o = o0;
  for (; o + 8 <= std::min(o1, full); o += 8) {
    const BlockQ8_0x8* g = w->groups.data() + std::size_t(o / 8) * nb;
    over_rows(rows, [&]<int R>(int r0) { group_q8q8<R>(y, x, g, nb, out, o, r0); });
  }
  for (; o < o1; ++o) {
    const BlockQ8_0* wr = w->tail.data() + std::size_t(o - full) * nb;
    over_rows(rows, [&]<int R>(int r0) { row_q8q8<R>(y, x, wr, nb, out, o, r0); });
  }
}

// ---- Q4_0, Q4_1, Q5_0, Q5_1 x Q8_0 (dtype native on a GGUF's 4- and 5-bit blocks) ------------
// Per block pair, sum_i (d_w q_w + m_w) d_x q_x = d_w d_x sum(q_w q_x) + m_w (d_x sum(q_x)): the
// int8 products summed exactly in int32, then the two scalings (llama.cpp's Q4_1 x Q8_1 product;
// x's d_x sum(q_x) per block is computed once per call; Q4_0's m_w is -8 d_w, Q5_0's -16 d_w).
// Unsigned w goes straight into vpmaddubsw: a pair sum is at most 2 * 15 * 127 = 3810 for 4-bit q,
// so a block's 8 of them add up in int16 (at most 30480) before one vpmaddwd; 5-bit q (at most
// 7874 a pair) widen to int32 every 4 pair sums.
inline __m256 group_offsets(const GroupQ4_1& g, __m256) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g.m))); }
inline __m256 group_offsets(const GroupQ5_1& g, __m256) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g.m))); }
inline __m256 group_offsets(const GroupQ4_0&, __m256 dw) { return _mm256_mul_ps(dw, _mm256_set1_ps(-8.0f)); }
inline __m256 group_offsets(const GroupQ5_0&, __m256 dw) { return _mm256_mul_ps(dw, _mm256_set1_ps(-16.0f)); }

// Byte i of the result is 0x10 where bit i of `bits` is set, else 0: Q5's fifth bits in place.
inline __m256i fifth_bits(std::uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)),  // byte i <- byte i / 8 of bits
                                             _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i select = _mm256_set1_epi64x(std::int64_t(0x8040201008040201));  // byte i: bit i % 8
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select), _mm256_set1_epi8(0x10));
}

// Byte i of the result has bit `to` set where bit `from` (both constant after inlining) of byte i
// of h is set, and no other: a 5-bit group's fifth bits (to 4), Q3_K's third bits (to 2) in place
// (16-bit shifts; the mask drops what crosses a byte).
[[gnu::always_inline]] inline __m256i bit_at(__m256i h, int from, int to) {
  const __m256i moved = from < to ? _mm256_slli_epi16(h, to - from) : _mm256_srli_epi16(h, from - to);
  return _mm256_and_si256(moved, _mm256_set1_epi8(static_cast<char>(1 << to)));
}

// What a group's nibbles are: unsigned 4-bit q, 5-bit q with qh's fifth bits, or IQ4's levels.
enum class Nibbles { u4, u5, iq4 };
template <class Block>
inline constexpr Nibbles kNibblesOf = kFiveBit<Block> ? Nibbles::u5 : kLevels<Block> ? Nibbles::iq4 : Nibbles::u4;

// The exact int32 dot products of one group block's 8 rows (qs: 128 bytes in chunk order; u5: plus
// qh's fifth bits) with R rows of x's blocks, xb[r * x_stride]: lane j of dot[r] is row j's. IQ4's
// levels are signed: vpshufb looks 32 of them up at once, then |w| times x with w's sign, as Q8_0
// (a pair sum reaches 32258, so each goes to int32 at once).
template <int R, Nibbles N>
[[gnu::always_inline]] inline void group_dots(__m256i* dot, const std::uint8_t* qs, const std::uint8_t* qh, const BlockQ8_0* xb,
                                              std::size_t x_stride) {
  const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
  // wide: int32 sums, lo and hi chunks on two chains (vpdpbusd's latency, as group_q8q8).
  __m256i sum[R], wide[R], wide_hi[R], h = _mm256_setzero_si256(), levels = _mm256_setzero_si256();
  if constexpr (N == Nibbles::u5) h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
  if constexpr (N == Nibbles::iq4) levels = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4Levels)));
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) sum[r] = wide[r] = wide_hi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * k));
    __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    if constexpr (N == Nibbles::u5) {
      lo = _mm256_or_si256(lo, bit_at(h, 2 * k, 4));
      hi = _mm256_or_si256(hi, bit_at(h, 2 * k + 1, 4));
    }
    if constexpr (N == Nibbles::iq4) lo = _mm256_shuffle_epi8(levels, lo), hi = _mm256_shuffle_epi8(levels, hi);
    const __m256i lo_abs = N == Nibbles::iq4 ? _mm256_sign_epi8(lo, lo) : lo, hi_abs = N == Nibbles::iq4 ? _mm256_sign_epi8(hi, hi) : hi;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      std::int32_t xlo, xhi;
      std::memcpy(&xlo, xb[std::size_t(r) * x_stride].qs + 4 * k, 4);
      std::memcpy(&xhi, xb[std::size_t(r) * x_stride].qs + 16 + 4 * k, 4);
      if constexpr (N == Nibbles::iq4) {
        wide[r] = dot4(wide[r], lo_abs, _mm256_sign_epi8(_mm256_set1_epi32(xlo), lo));
        wide_hi[r] = dot4(wide_hi[r], hi_abs, _mm256_sign_epi8(_mm256_set1_epi32(xhi), hi));
        continue;
      }
      if constexpr (kVnni) {  // straight to int32; the int16 sums below only save vpmaddwd's
        wide[r] = dot4(wide[r], lo, _mm256_set1_epi32(xlo));
        wide_hi[r] = dot4(wide_hi[r], hi, _mm256_set1_epi32(xhi));
        continue;
      }
      sum[r] = _mm256_add_epi16(sum[r], _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_set1_epi32(xlo)),
                                                         _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xhi))));
      if (N == Nibbles::u5 && k % 2 == 1) {  // 4 pair sums of 5-bit q: at most 31496, then to int32
        wide[r] = _mm256_add_epi32(wide[r], _mm256_madd_epi16(sum[r], ones));
        sum[r] = _mm256_setzero_si256();
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) dot[r] = N == Nibbles::u4 && !kVnni ? _mm256_madd_epi16(sum[r], ones) : _mm256_add_epi32(wide[r], wide_hi[r]);
}

template <int R, class Block>
void group_nibbles_q8(float* y, const Q8Rows& x, const typename GroupOf<Block>::type* g, int nb, int out, int o, int r0) {
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const BlockQ8_0* xr = x.q + std::size_t(r0) * nb;
  const float* sr = x.s + std::size_t(r0) * nb;
  for (int b = 0; b < nb; ++b) {
    prefetch_ahead(&g[b], 3);  // 144- to 192-byte group blocks: 3 cache lines
    const std::uint8_t* qh = nullptr;
    if constexpr (kFiveBit<Block>) qh = g[b].qh;
    __m256i dot[R];
    group_dots<R, kNibblesOf<Block>>(dot, g[b].qs, qh, xr + b, std::size_t(nb));
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].d)));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_mul_ps(dw, _mm256_set1_ps(q8_d(xr[std::size_t(r) * nb + b]))), acc[r]);
      if constexpr (!kLevels<Block>) acc[r] = _mm256_fmadd_ps(group_offsets(g[b], dw), _mm256_set1_ps(sr[std::size_t(r) * nb + b]), acc[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + std::size_t(r0 + r) * out + o, acc[r]);
}

// One plain row of w (PackedNibbles' last out % 8 rows) x R rows of x from r0.
template <int R, class Block>
void row_nibbles_q8(float* y, const Q8Rows& x, const Block* wr, int nb, int out, int o, int r0) {
  const __m128i low = _mm_set1_epi8(0x0F);
  __m256 acc[R];
  float offset[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps(), offset[r] = 0.0f;
  const BlockQ8_0* xr = x.q + std::size_t(r0) * nb;
  const float* sr = x.s + std::size_t(r0) * nb;
  for (int b = 0; b < nb; ++b) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr[b].qs));
    __m256i wq = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low), _mm_and_si128(v, low));  // values 0..31
    if constexpr (kFiveBit<Block>) {
      std::uint32_t qh;
      std::memcpy(&qh, wr[b].qh, 4);
      wq = _mm256_or_si256(wq, fifth_bits(qh));
    }
    if constexpr (kLevels<Block>)  // the signed levels: |w| times x with w's sign, as Q8_0
      wq = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4Levels))), wq);
    const float dw = _cvtsh_ss(wr[b].d.bits), mw = nibble_offset(wr[b]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const BlockQ8_0& xb = xr[std::size_t(r) * nb + b];
      const __m256 dot = kLevels<Block> ? q8_pair_sums(_mm256_sign_epi8(wq, wq), wq, q8_bytes(xb))
                                        : _mm256_cvtepi32_ps(dot4(_mm256_setzero_si256(), wq, q8_bytes(xb)));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(dw * q8_d(xb)), acc[r]);
      offset[r] += mw * sr[std::size_t(r) * nb + b];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) y[std::size_t(r0 + r) * out + o] = hsum8(acc[r]) + offset[r];
}

// Columns [o0, o1) of y; o0 is a multiple of 8.
template <class Block>
void matmul_block(float* y, const Q8Rows* x, const PackedNibbles<Block>* w, int rows, int in, int out, int o0, int o1) {
  const int nb = in / kQ8Block, full = out / 8 * 8;
  int o = o0;
  for (; o + 8 <= std::min(o1, full); o += 8) {
    const auto* g = w->groups.data() + std::size_t(o / 8) * nb;
    over_rows(rows, [&]<int R>(int r0) { group_nibbles_q8<R, Block>(y, *x, g, nb, out, o, r0); });
  }
  for (; o < o1; ++o) {
    const Block* wr = w->tail.data() + std::size_t(o - full) * nb;
    over_rows(rows, [&]<int R>(int r0) { row_nibbles_q8<R>(y, *x, wr, nb, out, o, r0); });
  }
}

// ---- Q4_K, Q5_K, IQ4_XS x Q8_0 (dtype native on a GGUF's tensors of those types) ----------------
// Each 32-value sub-block s is a Q4_1 (Q5_1) block with scale d sc_s and offset -dmin m_s (both
// exact in fp32, ggml's own d1 and m1), or an IQ4_NL block with scale d (ls_s - 32), against x's
// Q8_0 block at the same place: group_dots' int32 sums, then the scalings.
inline __m256 bytes_as_floats(const std::uint8_t* p) {  // 8 unsigned bytes as 8 floats
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline __m256 bytes_as_floats(const std::int8_t* p) {  // 8 signed bytes as 8 floats
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline __m256 sub_block_scales(const GroupQ4_K& g, int s, __m256 d) { return _mm256_mul_ps(d, bytes_as_floats(g.sc[s])); }
inline __m256 sub_block_scales(const GroupQ5_K& g, int s, __m256 d) { return _mm256_mul_ps(d, bytes_as_floats(g.sc[s])); }
inline __m256 sub_block_scales(const GroupIQ4_XS& g, int s, __m256 d) { return _mm256_mul_ps(d, bytes_as_floats(g.sc[s])); }

template <int R, class G>
  requires std::is_same_v<G, GroupQ4_K> || std::is_same_v<G, GroupQ5_K> || std::is_same_v<G, GroupIQ4_XS>
void group_k_q8(float* y, const Q8Rows& x, const G* g, int nbk, int out, int o, int r0) {
  constexpr bool kFive = std::is_same_v<G, GroupQ5_K>, kMins = !std::is_same_v<G, GroupIQ4_XS>;
  constexpr Nibbles kKind = kFive ? Nibbles::u5 : kMins ? Nibbles::u4 : Nibbles::iq4;
  const int nb = nbk * 8;  // x's Q8_0 blocks a row
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const BlockQ8_0* xr = x.q + std::size_t(r0) * nb;
  const float* sr = x.s + std::size_t(r0) * nb;
  for (int b = 0; b < nbk; ++b) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].d)));
    __m256 dmin = _mm256_setzero_ps();
    if constexpr (kMins) dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].dmin)));
    for (int s = 0; s < 8; ++s) {
      prefetch_ahead(g[b].qs[s], 2);
      const std::uint8_t* qh = nullptr;
      if constexpr (kFive) {
        prefetch_ahead(g[b].qh[s], 1);
        qh = g[b].qh[s];
      }
      const int xb = 8 * b + s;
      __m256i dot[R];
      group_dots<R, kKind>(dot, g[b].qs[s], qh, xr + xb, std::size_t(nb));
      const __m256 dw = sub_block_scales(g[b], s, d);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_mul_ps(dw, _mm256_set1_ps(q8_d(xr[std::size_t(r) * nb + xb]))), acc[r]);
      if constexpr (kMins) {
        const __m256 mw = _mm256_mul_ps(dmin, bytes_as_floats(g[b].m[s]));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r] = _mm256_fnmadd_ps(mw, _mm256_set1_ps(sr[std::size_t(r) * nb + xb]), acc[r]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + std::size_t(r0 + r) * out + o, acc[r]);
}

// Columns [o0, o1) of y for the K-quants' 8-row groups (PackedQ4_K, PackedQ5_K, PackedQ6_K); o0 is
// a multiple of 8. A last group of fewer than 8 rows goes through a scratch row of 8.
template <class W>
  requires kKQuant<W>
void matmul_block(float* y, const Q8Rows* x, const W* w, int rows, int in, int out, int o0, int o1) {
  const int nbk = in / kQ4KBlock;
  for (int o = o0; o < o1; o += 8) {
    const auto* g = w->groups.data() + std::size_t(o / 8) * nbk;
    if (o + 8 <= out) {
      over_rows(rows, [&]<int R>(int r0) { group_k_q8<R>(y, *x, g, nbk, out, o, r0); });
      continue;
    }
    thread_local std::vector<float> part;
    part.resize(std::size_t(rows) * 8);
    over_rows(rows, [&]<int R>(int r0) { group_k_q8<R>(part.data(), *x, g, nbk, 8, 0, r0); });
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < out - o; ++j) y[std::size_t(r) * out + o + j] = part[std::size_t(r) * 8 + j];
  }
}

// ---- Q6_K, Q3_K, Q2_K x Q8_0 (dtype native on a GGUF's tensors of those types) -------------------
// Per 32-value sub-block against x's Q8_0 block there: its low 16 values have one scale, its high
// 16 another, and a chunk's low nibble places hold low values, its high ones high values, so the
// two halves' int sums stay apart. Q6_K's q - 32 in [-32, 31]: vpmaddubsw(q, x) - vpmaddubsw(32, x)
// is exact in int16 (at most 8128 a pair, 32512 over the 4 chunks), then one vpmaddwd for each
// half; Q3_K's q - 4 the same way; Q2_K's q has no offset in the int sums but a min for each half,
// dmin m_g times d_x sum(q_x) over those 16 values (x.s16).
template <class G>
constexpr int kQOffset = std::is_same_v<G, GroupQ6_K> ? 32 : std::is_same_v<G, GroupQ3_K> ? 4 : 0;

// Sub-block s's chunk k as unsigned q: lo at its low-nibble places, hi at its high ones.
[[gnu::always_inline]] inline void chunk_q(const GroupQ6_K& g, int s, int k, __m256i& lo, __m256i& hi) {
  const __m256i low = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.qs[s] + 32 * k));
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.qh[s][k % 2]));
  // The top 2 bits to bits 4-5 (16-bit shifts: the mask drops what crosses a byte).
  const __m256i hlo = k < 2 ? _mm256_slli_epi16(h, 4) : h, hhi = k < 2 ? _mm256_slli_epi16(h, 2) : _mm256_srli_epi16(h, 2);
  lo = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(hlo, top));
  hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), _mm256_and_si256(hhi, top));
}
[[gnu::always_inline]] inline void low_bits(const std::uint8_t (*ql)[32], int k, __m256i& lo, __m256i& hi) {
  const __m256i three = _mm256_set1_epi8(3), l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql[k % 2]));
  lo = _mm256_and_si256(_mm256_srli_epi16(l, 4 * (k / 2)), three);
  hi = _mm256_and_si256(_mm256_srli_epi16(l, 4 * (k / 2) + 2), three);
}
[[gnu::always_inline]] inline void chunk_q(const GroupQ3_K& g, int s, int k, __m256i& lo, __m256i& hi) {
  low_bits(g.ql[s], k, lo, hi);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g.qh[s]));
  lo = _mm256_or_si256(lo, bit_at(h, 2 * k, 2));
  hi = _mm256_or_si256(hi, bit_at(h, 2 * k + 1, 2));
}
[[gnu::always_inline]] inline void chunk_q(const GroupQ2_K& g, int s, int k, __m256i& lo, __m256i& hi) { low_bits(g.ql[s], k, lo, hi); }

// 8 rows' scales of 16-value group gi, times d (Q2_K: the low nibbles of sm).
inline __m256 group_scales(const GroupQ6_K& g, int gi, __m256 d) { return _mm256_mul_ps(d, bytes_as_floats(g.sc[gi])); }
inline __m256 group_scales(const GroupQ3_K& g, int gi, __m256 d) { return _mm256_mul_ps(d, bytes_as_floats(g.sc[gi])); }
inline __m256i q2_k_sm(const GroupQ2_K& g, int gi) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g.sm[gi]))); }
inline __m256 group_scales(const GroupQ2_K& g, int gi, __m256 d) {
  return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(q2_k_sm(g, gi), _mm256_set1_epi32(0xF))));
}

template <int R, class G>
  requires std::is_same_v<G, GroupQ6_K> || std::is_same_v<G, GroupQ3_K> || std::is_same_v<G, GroupQ2_K>
void group_k_q8(float* y, const Q8Rows& x, const G* g, int nbk, int out, int o, int r0) {
  constexpr bool kMins = std::is_same_v<G, GroupQ2_K>;
  const int nb = nbk * 8;
  const __m256i ones = _mm256_set1_epi16(1), offset = _mm256_set1_epi8(kQOffset<G>);
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const BlockQ8_0* xr = x.q + std::size_t(r0) * nb;
  for (int b = 0; b < nbk; ++b) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].d)));
    __m256 dmin = _mm256_setzero_ps();
    if constexpr (kMins) dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g[b].dmin)));
    for (int s = 0; s < 8; ++s) {
      prefetch_ahead(reinterpret_cast<const char*>(&g[b]) + sizeof(G) / 8 * s, int(sizeof(G) / 8 / 64));  // sub-block s's bytes
      const int xb = 8 * b + s;
      __m256i sum_lo[R], sum_hi[R], off_lo[R], off_hi[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) sum_lo[r] = sum_hi[r] = off_lo[r] = off_hi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        __m256i lo, hi;
        chunk_q(g[b], s, k, lo, hi);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          std::int32_t xlo, xhi;
          std::memcpy(&xlo, xr[std::size_t(r) * nb + xb].qs + 4 * k, 4);
          std::memcpy(&xhi, xr[std::size_t(r) * nb + xb].qs + 16 + 4 * k, 4);
          const __m256i bl = _mm256_set1_epi32(xlo), bh = _mm256_set1_epi32(xhi);
          if constexpr (kVnni) {  // int32 sums at once: q x and offset x apart, subtracted at the end
            sum_lo[r] = dot4(sum_lo[r], lo, bl);
            sum_hi[r] = dot4(sum_hi[r], hi, bh);
            if constexpr (kQOffset<G> != 0) {
              off_lo[r] = dot4(off_lo[r], offset, bl);
              off_hi[r] = dot4(off_hi[r], offset, bh);
            }
            continue;
          }
          __m256i plo = _mm256_maddubs_epi16(lo, bl), phi = _mm256_maddubs_epi16(hi, bh);
          if constexpr (kQOffset<G> != 0) {
            plo = _mm256_sub_epi16(plo, _mm256_maddubs_epi16(offset, bl));
            phi = _mm256_sub_epi16(phi, _mm256_maddubs_epi16(offset, bh));
          }
          sum_lo[r] = _mm256_add_epi16(sum_lo[r], plo);
          sum_hi[r] = _mm256_add_epi16(sum_hi[r], phi);
        }
      }
      const __m256 dlo = group_scales(g[b], 2 * s, d), dhi = group_scales(g[b], 2 * s + 1, d);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256 dx = _mm256_set1_ps(q8_d(xr[std::size_t(r) * nb + xb]));
        const __m256i ilo = kVnni ? _mm256_sub_epi32(sum_lo[r], off_lo[r]) : _mm256_madd_epi16(sum_lo[r], ones);
        const __m256i ihi = kVnni ? _mm256_sub_epi32(sum_hi[r], off_hi[r]) : _mm256_madd_epi16(sum_hi[r], ones);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ilo), _mm256_mul_ps(dlo, dx), acc[r]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ihi), _mm256_mul_ps(dhi, dx), acc[r]);
      }
      if constexpr (kMins) {
        const auto mins = [&](int gi) { return _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(q2_k_sm(g[b], gi), 4))); };
        const __m256 mlo = mins(2 * s), mhi = mins(2 * s + 1);
        const float* s16 = x.s16 + (std::size_t(r0) * nb + xb) * 2;
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          acc[r] = _mm256_fnmadd_ps(mlo, _mm256_set1_ps(s16[std::size_t(r) * nb * 2]), acc[r]);
          acc[r] = _mm256_fnmadd_ps(mhi, _mm256_set1_ps(s16[std::size_t(r) * nb * 2 + 1]), acc[r]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + std::size_t(r0 + r) * out + o, acc[r]);
}


// Rows of x as Q8_0 blocks, 8 lanes at a time with quantize_q8_0_block's arithmetic (the same
// division by the fp16-rounded scale, round to nearest even), so the same bytes; a partial last
// block goes through quantize_q8_0_block itself.
void quantize_row_q8(BlockQ8_0* dst, const float* x, int in) {
  const int full = in / kQ8Block;
  const __m256 sign = _mm256_set1_ps(-0.0f), lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
  for (int b = 0; b < full; ++b) {
    const float* xb = x + std::size_t(b) * kQ8Block;
    __m256 v[4], m = _mm256_setzero_ps();
    for (int g = 0; g < 4; ++g) {  // max |x|; a NaN lane keeps m, as std::max does
      v[g] = _mm256_loadu_ps(xb + 8 * g);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[g]), m);
    }
    const float amax = hmax8(m);
    dst[b].d = to_half(amax / 127.0f);
    const float d = to_float(dst[b].d);
    if (!(d > 0.0f)) {
      std::memset(dst[b].qs, 0, sizeof dst[b].qs);
      continue;
    }
    __m256i q[4];
    for (int g = 0; g < 4; ++g) {
      const __m256 t = _mm256_round_ps(_mm256_div_ps(v[g], _mm256_set1_ps(d)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q[g] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, nlim), lim));
    }
    // int32 -> int8: packs work within 128-bit lanes, so the result is permuted back to order.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[b].qs), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  if (full * kQ8Block < in) dst[full] = quantize_q8_0_block(x + std::size_t(full) * kQ8Block, in - full * kQ8Block);
}
#else
void quantize_row_q8(BlockQ8_0* dst, const float* x, int in) {
  for (int b = 0; b < q8_0_blocks_per_row(in); ++b)
    dst[b] = quantize_q8_0_block(x + std::size_t(b) * kQ8Block, std::min(kQ8Block, in - b * kQ8Block));
}
#endif

#if defined(ABLATE_SIMD_W)
// Few rows (decode, speculative verification, small batches): the product is bound by reading w,
// so each row of w is read once and dotted with every row of x while it sits in L1. Hand-written
// because, measured side by side (bench_kernels, 2 threads), Eigen's GEMV reads these short rows
// (576 floats) ~10 % slower at rows = 1, and its GEMM packs w first: 1.4-2.2x slower at rows = 5
// (a k = 4 verification pass). Tiles of 4 rows of w x up to 4 rows of x keep 16 accumulators in
// registers. Without AVX-512 the AVX2 kernels below do the same with 8 lanes (and fp32 at rows = 1
// stays on Eigen's GEMV, faster there).

// The sums of a 4 x 4 tile's 16 accumulators, y[r][j] = sum of acc[j][r]'s lanes, stored as four
// rows of four floats: a tree of 128-bit-lane shuffles and adds (45 instructions) instead of 16
// horizontal reductions (~110), which at in = 576 was a quarter of the tile's instructions.
// Lane 4r + j of the final vector holds acc[j][r].
inline __m512 fold_128(__m512 a, __m512 b) {  // lanes: a's halves summed, then b's (128-bit lane pairs)
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
inline __m512 fold_lanes(__m512 c, __m512 d) {  // 128-bit lane q: the 4 partials of accumulator q
  return _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1)));
}
inline void reduce_store_4x4(float* y, std::size_t out, __m512 a00, __m512 a01, __m512 a02, __m512 a03, __m512 a10,
                             __m512 a11, __m512 a12, __m512 a13, __m512 a20, __m512 a21, __m512 a22, __m512 a23,
                             __m512 a30, __m512 a31, __m512 a32, __m512 a33) {
  // e_j: 128-bit lane r holds the four partial sums of acc[j][r].
  const __m512 e0 = fold_lanes(fold_128(a00, a01), fold_128(a02, a03));
  const __m512 e1 = fold_lanes(fold_128(a10, a11), fold_128(a12, a13));
  const __m512 e2 = fold_lanes(fold_128(a20, a21), fold_128(a22, a23));
  const __m512 e3 = fold_lanes(fold_128(a30, a31), fold_128(a32, a33));
  const __m512 g0 = _mm512_add_ps(_mm512_unpacklo_ps(e0, e1), _mm512_unpackhi_ps(e0, e1));
  const __m512 g1 = _mm512_add_ps(_mm512_unpacklo_ps(e2, e3), _mm512_unpackhi_ps(e2, e3));
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(g0, g1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(g0, g1, _MM_SHUFFLE(3, 2, 3, 2)));
  _mm_storeu_ps(y, _mm512_extractf32x4_ps(sums, 0));
  _mm_storeu_ps(y + out, _mm512_extractf32x4_ps(sums, 1));
  _mm_storeu_ps(y + 2 * out, _mm512_extractf32x4_ps(sums, 2));
  _mm_storeu_ps(y + 3 * out, _mm512_extractf32x4_ps(sums, 3));
}

// y[r0 + r][o + j] = the sum of acc[j][r]'s lanes, for every tile shape (inlined, so the
// accumulators never leave their registers).
template <int NW, int R>
[[gnu::always_inline]] inline void store_sums(float* y, int out, int o, int r0, const __m512 (&acc)[NW][R]) {
  if constexpr (NW == 4 && R == 4) {
    reduce_store_4x4(y + std::size_t(r0) * out + o, std::size_t(out), acc[0][0], acc[0][1], acc[0][2], acc[0][3],
                     acc[1][0], acc[1][1], acc[1][2], acc[1][3], acc[2][0], acc[2][1], acc[2][2], acc[2][3], acc[3][0],
                     acc[3][1], acc[3][2], acc[3][3]);
  } else {
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) y[std::size_t(r0 + r) * out + o + j] = _mm512_reduce_add_ps(acc[j][r]);
  }
}

// NW rows of w from o, R rows of x from r0; both compile-time so the accumulators stay in registers.
template <int NW, int R, class W>
void dot_tile(float* y, const float* x, const W* w, int in, int out, int o, int r0) {
  // Written out without helpers: GCC keeps the accumulators in registers only when nothing takes
  // their address (a lambda over them spilled every FMA to the stack).
  __m512 acc[NW][R];
#pragma GCC unroll 4
  for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  const float* xr = x + std::size_t(r0) * in;
  const W* wr = w + std::size_t(o) * in;
  const int nv = in / 16, tail = in - nv * 16;
  for (int v = 0; v <= nv; ++v) {
    const int i = v * 16;
    const __mmask16 m = v < nv ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << tail) - 1u);
    if (m == 0) break;
    __m512 xv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(m, xr + std::size_t(r) * in + i);
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) {
      // The next tile's rows of w, a whole tile ahead: the loads here are too sparse in time
      // (16 FMAs per 64 bytes) for the hardware prefetcher to keep the stream going.
      if (R > 1) _mm_prefetch(reinterpret_cast<const char*>(wr + std::size_t(NW + j) * in + i), _MM_HINT_T0);
      const __m512 wv = load_w(wr + std::size_t(j) * in + i, m);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  store_sums(y, out, o, r0, acc);
}

template <int NW, class W>
void dot_rows(float* y, const float* x, const W* w, int rows, int in, int out, int o) {
  over_rows(rows, [&]<int R>(int r0) { dot_tile<NW, R>(y, x, w, in, out, o, r0); });
}

// One row of x: each row of w is streamed start to end with four accumulators along it (one
// stream at a time is what the hardware prefetcher follows best).
template <class W>
void gemv_block(float* y, const float* x, const W* w, int in, int o0, int o1) {
  const int nv = in / 16, tail = in - nv * 16;
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  for (int o = o0; o < o1; ++o) {
    const W* r = w + std::size_t(o) * in;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int v = 0;
    for (; v + 4 <= nv; v += 4) {
      a0 = _mm512_fmadd_ps(load_w(r + v * 16), _mm512_loadu_ps(x + v * 16), a0);
      a1 = _mm512_fmadd_ps(load_w(r + v * 16 + 16), _mm512_loadu_ps(x + v * 16 + 16), a1);
      a2 = _mm512_fmadd_ps(load_w(r + v * 16 + 32), _mm512_loadu_ps(x + v * 16 + 32), a2);
      a3 = _mm512_fmadd_ps(load_w(r + v * 16 + 48), _mm512_loadu_ps(x + v * 16 + 48), a3);
    }
    for (; v < nv; ++v) a0 = _mm512_fmadd_ps(load_w(r + v * 16), _mm512_loadu_ps(x + v * 16), a0);
    if (tail)
      a1 = _mm512_fmadd_ps(load_w(r + nv * 16, tail_mask), _mm512_maskz_loadu_ps(tail_mask, x + nv * 16), a1);
    y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

template <class W>
void few_rows_block(float* y, const float* x, const W* w, int rows, int in, int out, int o0, int o1) {
  if (rows == 1) return gemv_block(y, x, w, in, o0, o1);
  int o = o0;
  for (; o + 4 <= o1; o += 4) dot_rows<4>(y, x, w, rows, in, out, o);
  for (; o < o1; ++o) dot_rows<1>(y, x, w, rows, in, out, o);
}

#if defined(__AVX512BF16__)
#define ABLATE_DPBF16 1
// ---- bf16 x bf16 (vdpbf16ps) ----------------------------------------------------------------
// dtype bf16 multiplies bf16 weights by bf16-rounded inputs with fp32 sums, as a tensor-core bf16
// GEMM does. vdpbf16ps takes 32 bf16 pairs a step (two fp32 FMAs' worth of products in one
// instruction); both operands are read as stored, with no widening. Each product of two bf16
// values is exact in fp32, so only the sums round.
inline __m512bh load_bh(const Bf16* p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }
inline __m512bh load_bh(const Bf16* p) { return (__m512bh)_mm512_loadu_si512(p); }

template <int NW, int R>
void dp_tile(float* y, const Bf16* x, const Bf16* w, int in, int out, int o, int r0) {
  __m512 acc[NW][R];  // as dot_tile: no helpers, so the accumulators stay in registers
#pragma GCC unroll 4
  for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  const Bf16* xr = x + std::size_t(r0) * in;
  const Bf16* wr = w + std::size_t(o) * in;
  const int nv = in / 32, tail = in - nv * 32;
  for (int v = 0; v <= nv; ++v) {
    const int i = v * 32;
    const __mmask32 m = v < nv ? __mmask32(0xFFFFFFFFu) : static_cast<__mmask32>((1ull << tail) - 1u);
    if (m == 0) break;
    __m512bh xv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) xv[r] = load_bh(xr + std::size_t(r) * in + i, m);
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) {
      if (R > 1) _mm_prefetch(reinterpret_cast<const char*>(wr + std::size_t(NW + j) * in + i), _MM_HINT_T0);
      const __m512bh wv = load_bh(wr + std::size_t(j) * in + i, m);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], wv, xv[r]);
    }
  }
  store_sums(y, out, o, r0, acc);
}

template <int NW>
void dp_rows(float* y, const Bf16* x, const Bf16* w, int rows, int in, int out, int o) {
  over_rows(rows, [&]<int R>(int r0) { dp_tile<NW, R>(y, x, w, in, out, o, r0); });
}

// One row of x: each row of w streamed start to end, four sums in flight along it (as gemv_block).
void gemv_dp_block(float* y, const Bf16* x, const Bf16* w, int in, int o0, int o1) {
  const int nv = in / 32, tail = in - nv * 32;
  const __mmask32 tail_mask = static_cast<__mmask32>((1ull << tail) - 1u);
  for (int o = o0; o < o1; ++o) {
    const Bf16* r = w + std::size_t(o) * in;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int v = 0;
    for (; v + 4 <= nv; v += 4) {
      a0 = _mm512_dpbf16_ps(a0, load_bh(r + v * 32), load_bh(x + v * 32));
      a1 = _mm512_dpbf16_ps(a1, load_bh(r + v * 32 + 32), load_bh(x + v * 32 + 32));
      a2 = _mm512_dpbf16_ps(a2, load_bh(r + v * 32 + 64), load_bh(x + v * 32 + 64));
      a3 = _mm512_dpbf16_ps(a3, load_bh(r + v * 32 + 96), load_bh(x + v * 32 + 96));
    }
    for (; v < nv; ++v) a0 = _mm512_dpbf16_ps(a0, load_bh(r + v * 32), load_bh(x + v * 32));
    if (tail) a1 = _mm512_dpbf16_ps(a1, load_bh(r + nv * 32, tail_mask), load_bh(x + nv * 32, tail_mask));
    y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

void few_rows_block(float* y, const Bf16* x, const Bf16* w, int rows, int in, int out, int o0, int o1) {
  if (rows == 1) return gemv_dp_block(y, x, w, in, o0, o1);
  int o = o0;
  for (; o + 4 <= o1; o += 4) dp_rows<4>(y, x, w, rows, in, out, o);
  for (; o < o1; ++o) dp_rows<1>(y, x, w, rows, in, out, o);
}
#endif

#endif

#if !defined(ABLATE_SIMD_W) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ABLATE_SIMD_W8 1
// ---- AVX2 (8 lanes): the same few-rows kernels for CPUs without AVX-512 -----------------------
// (AMD Zen 1-3, Intel before Skylake-X). Same products as the AVX-512 kernels (each weight widened
// to fp32 times the fp32 input), only a different summation order; a row's last in % 8 columns are
// summed by scalar code.

// NW rows of w from o x R rows of x from r0, NW * R accumulators in registers (2 x 4 of AVX2's 16).
template <int NW, int R, class W>
void dot_tile8(float* y, const float* x, const W* w, int in, int out, int o, int r0) {
  __m256 acc[NW][R];  // no helpers take their address, so they stay in registers (as dot_tile)
#pragma GCC unroll 4
  for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[j][r] = _mm256_setzero_ps();
  const float* xr = x + std::size_t(r0) * in;
  const int n8 = in / 8 * 8;
  for (int i = 0; i < n8; i += 8) {
    __m256 xv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(xr + std::size_t(r) * in + i);
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) {
      const __m256 wv = load8(w + std::size_t(o + j) * in, i);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[j][r] = _mm256_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
  for (int j = 0; j < NW; ++j) {
    const W* wr = w + std::size_t(o + j) * in;
    for (int r = 0; r < R; ++r) {
      float s = hsum8(acc[j][r]);
      for (int i = n8; i < in; ++i) s += widen(wr[i]) * xr[std::size_t(r) * in + i];
      y[std::size_t(r0 + r) * out + o + j] = s;
    }
  }
}

// One row of x: each row of w streamed start to end, four sums in flight along it.
template <class W>
void gemv8_block(float* y, const float* x, const W* w, int in, int o0, int o1) {
  const int n8 = in / 8 * 8;
  for (int o = o0; o < o1; ++o) {
    const W* r = w + std::size_t(o) * in;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n8; i += 32) {
      a0 = _mm256_fmadd_ps(load8(r, i), _mm256_loadu_ps(x + i), a0);
      a1 = _mm256_fmadd_ps(load8(r, i + 8), _mm256_loadu_ps(x + i + 8), a1);
      a2 = _mm256_fmadd_ps(load8(r, i + 16), _mm256_loadu_ps(x + i + 16), a2);
      a3 = _mm256_fmadd_ps(load8(r, i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i < n8; i += 8) a0 = _mm256_fmadd_ps(load8(r, i), _mm256_loadu_ps(x + i), a0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < in; ++i) s += widen(r[i]) * x[i];
    y[o] = s;
  }
}

template <class W>
void few_rows_block(float* y, const float* x, const W* w, int rows, int in, int out, int o0, int o1) {
  if (rows == 1) return gemv8_block(y, x, w, in, o0, o1);
  int o = o0;
  for (; o + 2 <= o1; o += 2) over_rows(rows, [&]<int R>(int r0) { dot_tile8<2, R>(y, x, w, in, out, o, r0); });
  for (; o < o1; ++o) over_rows(rows, [&]<int R>(int r0) { dot_tile8<1, R>(y, x, w, in, out, o, r0); });
}
#endif
#if defined(ABLATE_SIMD_W) || defined(ABLATE_SIMD_W8)
#define ABLATE_FEW_ROWS 1
#endif

// Columns [o0, o1) of y: rows o0..o1 of w, read once (few rows) or reused across x's rows (GEMM).
void matmul_block(float* y, const float* x, const float* w, int rows, int in, int out, int o0, int o1) {
#if defined(ABLATE_SIMD_W)
  if (rows <= kFewRows) return few_rows_block(y, x, w, rows, in, out, o0, o1);
#elif defined(ABLATE_SIMD_W8)
  // With AVX2, Eigen's fp32 GEMV beats gemv8_block (bench_kernels BM_Matmul, rows 1, Zen 3: ours
  // at 0.88-0.96 of its speed), so only the multi-row tiles are ours (1.1-2.6x faster there).
  if (rows > 1 && rows <= kFewRows) return few_rows_block(y, x, w, rows, in, out, o0, o1);
#endif
  const int n = o1 - o0;
  Eigen::Map<const RowMat> wb(w + std::size_t(o0) * in, n, in);
  if (rows == 1) {
    Eigen::Map<Eigen::VectorXf>(y + o0, n).noalias() = wb * Eigen::Map<const Eigen::VectorXf>(x, in);
  } else {
    Eigen::Map<RowMat, 0, Eigen::OuterStride<>> yb(y + o0, rows, n, Eigen::OuterStride<>(out));
    yb.noalias() = Eigen::Map<const RowMat>(x, rows, in) * wb.transpose();
  }
}

// 16-bit and Q8_0 weights: few rows read them directly; many rows (prefill) widen a panel of w to fp32 at a
// time and reuse it across every row of x through the fp32 GEMM, so the conversion costs one pass
// over w however many rows there are.
// Rows [p0, p1) of w as fp32, row-major [p1 - p0][in].
template <class W>
void widen_rows(float* dst, const W* w, int in, int p0, int p1) {
  const std::size_t n = std::size_t(p1 - p0) * in;
  const W* src = w + std::size_t(p0) * in;
  for (std::size_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}
void widen_block(float* dst, const BlockQ8_0& blk, int n) {
  const float d = to_float(blk.d);
  for (int i = 0; i < n; ++i) dst[i] = d * blk.qs[i];
}
void widen_rows(float* dst, const BlockQ8_0* w, int in, int p0, int p1) {
  const int nb = q8_0_blocks_per_row(in);
  for (int o = p0; o < p1; ++o, dst += in)
    for (int b = 0; b < nb; ++b) widen_block(dst + b * kQ8Block, w[std::size_t(o) * nb + b], std::min(kQ8Block, in - b * kQ8Block));
}
void widen_rows(float* dst, const PackedQ8_0* w, int in, int p0, int p1) {
  const int nb = q8_0_blocks_per_row(in);
  for (int o = p0; o < p1; ++o, dst += in)
    for (int b = 0; b < nb; ++b) widen_block(dst + b * kQ8Block, w->block(o, b), std::min(kQ8Block, in - b * kQ8Block));
}

template <class Block>
void widen_rows(float* dst, const PackedNibbles<Block>* w, int in, int p0, int p1) {
  const int nb = in / kQ8Block;
  for (int o = p0; o < p1; ++o, dst += in)
    for (int b = 0; b < nb; ++b) {
      const Block blk = w->block(o, b);
      for (int i = 0; i < kQ8Block; ++i) dst[b * kQ8Block + i] = nibble_value(blk, i);
    }
}

template <class W>
  requires kKQuant<W>
void widen_rows(float* dst, const W* w, int in, int p0, int p1) {
  for (int o = p0; o < p1; ++o, dst += in)
    for (int b = 0; b < in / kQ4KBlock; ++b) w->values(o, b, dst + b * kQ4KBlock);
}

// ---- The lattice types IQ1_S..IQ3_S (dtype native): the file's own blocks, a row at a time -----
void widen_rows(float* dst, const LatticeMatrix* w, int in, int p0, int p1) {
  for (int o = p0; o < p1; ++o, dst += in)
    for (int b = 0; b < in / 256; ++b) lattice_row_values(*w, o, b, dst + 256 * b);
}

#if defined(ABLATE_Q8_INT8)
// lattice_ints, 32 bytes at once: the 4 points' bytes side by side (IQ1: times 8, plus the
// deltas), then sign bit i of the sub-block spread to byte i's mask and applied as (v ^ m) - m.
inline __m256i lattice_ints8(const LatticeSub& u) {
  __m256i v = _mm256_setr_epi64x(static_cast<long long>(u.point[0]), static_cast<long long>(u.point[1]),
                                 static_cast<long long>(u.point[2]), static_cast<long long>(u.point[3]));
  if (u.times == 8) {
    v = _mm256_add_epi8(v, v);
    v = _mm256_add_epi8(v, v);
    v = _mm256_add_epi8(v, v);
    const auto rep = [](std::int8_t d) { return static_cast<long long>(std::uint8_t(d) * 0x0101010101010101ull); };
    v = _mm256_add_epi8(v, _mm256_setr_epi64x(rep(u.delta[0]), rep(u.delta[1]), rep(u.delta[2]), rep(u.delta[3])));
  }
  // Each 128-bit lane holds the 4 sign bytes; lane 0 spreads bytes 0 and 1, lane 1 bytes 2 and 3.
  const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(u.signs)),
                                             _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
  const __m256i neg = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_sub_epi8(_mm256_xor_si256(v, neg), neg);
}

// Rows [o0, o1) of w times `rows` rows of x: each sub-block expanded once, then its 32 integers
// times each x row's Q8_0 block there, summed exactly as Q8_0 x Q8_0 is (|w| <= 62, so vpmaddubsw
// stays below 2 * 62 * 127), then times the half's scale and d_x.
template <class Block>
void lattice_rows(float* y, const Q8Rows& x, const LatticeMatrix& w, int rows, int out, int o0, int o1) {
  const int nb = w.in / 256, nbx = w.in / kQ8Block;
  for (int o = o0; o < o1; ++o) {
    __m256 acc[kFewRows];
    for (int r = 0; r < rows; ++r) acc[r] = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      Block blk;
      std::memcpy(&blk, w.bytes.data() + (std::size_t(o) * nb + b) * sizeof(Block), sizeof blk);
      for (int s = 0; s < 8; ++s) {
        const LatticeSub u = lattice_sub(blk, s);
        const __m256i wv = lattice_ints8(u);
        const __m256i wa = _mm256_sign_epi8(wv, wv);
        const __m256 sc = _mm256_setr_ps(u.scale[0], u.scale[0], u.scale[0], u.scale[0], u.scale[1], u.scale[1], u.scale[1], u.scale[1]);
        for (int r = 0; r < rows; ++r) {
          const BlockQ8_0& xb = x.q[std::size_t(r) * nbx + 8 * b + s];
          acc[r] = _mm256_fmadd_ps(q8_pair_sums(wa, wv, q8_bytes(xb)), _mm256_mul_ps(sc, _mm256_set1_ps(q8_d(xb))), acc[r]);
        }
      }
    }
    for (int r = 0; r < rows; ++r) y[std::size_t(r) * out + o] = hsum8(acc[r]);
  }
}

void matmul_block(float* y, const Q8Rows* x, const LatticeMatrix* w, int rows, int, int out, int o0, int o1) {
  with_lattice_block(w->type, [&](auto blk) { lattice_rows<decltype(blk)>(y, *x, *w, rows, out, o0, o1); });
}
#endif

template <class W>
void matmul_block(float* y, const float* x, const W* w, int rows, int in, int out, int o0, int o1) {
#if defined(ABLATE_FEW_ROWS)
  // (Q8_0 and the 4- and 5-bit blocks with few rows multiply int8 inputs: matmul_block on Q8_0 x, above.)
  if constexpr (!std::is_same_v<W, PackedQ8_0> && !kPackedNibbles<W> && !kKQuant<W> && !std::is_same_v<W, LatticeMatrix>)
    if (rows <= kFewRows) return few_rows_block(y, x, w, rows, in, out, o0, o1);
#endif
  constexpr int kPanel = 64;  // rows of w widened at once: 64 x in floats stay in L2
  thread_local std::vector<float> panel;
  panel.resize(std::size_t(kPanel) * in);
  for (int p0 = o0; p0 < o1; p0 += kPanel) {
    const int p1 = std::min(o1, p0 + kPanel);
    widen_rows(panel.data(), w, in, p0, p1);
    // y columns [p0, p1) from the widened panel, as the fp32 path computes them.
    matmul_block(y + p0, x, panel.data(), rows, in, out, 0, p1 - p0);
  }
}

#if defined(ABLATE_DPBF16)
// bf16 inputs: vdpbf16ps at any number of rows. Many rows (prefill) go past a panel of w that
// stays in L2 (64 rows: 72 KiB at 576 inputs) in tiles of kFewRows, so w is read from memory once
// and no fp32 copy of it or of x is made: the widened-panel fp32 GEMM the other hosts take costs
// that widening and repacks x for every panel, which made a bf16 prefill slower than fp32.
void matmul_block(float* y, const Bf16* x, const Bf16* w, int rows, int in, int out, int o0, int o1) {
  if (rows <= kFewRows) return few_rows_block(y, x, w, rows, in, out, o0, o1);
  constexpr int kPanel = 64;
  for (int p0 = o0; p0 < o1; p0 += kPanel)
    for (int r0 = 0; r0 < rows; r0 += kFewRows)
      few_rows_block(y + std::size_t(r0) * out, x + std::size_t(r0) * in, w, std::min(kFewRows, rows - r0), in, out, p0,
                     std::min(o1, p0 + kPanel));
}
#endif

template <class X, class W>
void matmul_any(float* y, const X* x, const W* w, int rows, int in, int out) {
  if (std::size_t(rows) * in * out < kMatmulParallelMinWork || omp_in_parallel()) {
    matmul_block(y, x, w, rows, in, out, 0, out);
    return;
  }
  // Guided split: a thread takes 1/(2 threads) of the rows left (at least 32), in multiples of 16
  // rows of w (whole SIMD panels, whole 8-row Q8_0 groups). Long contiguous streams first, small
  // pieces last, so that a thread slowed by its neighbour's memory traffic does not hold up the
  // join: a static halving left each thread ~10 % of the step waiting for the other (perf, q8_0
  // decode). Each piece starts where the last ended, so the pieces are the same every call; only
  // which thread takes which varies, and that does not change a result bit.
  std::atomic<int> next{0};
#pragma omp parallel
  {
    const int nt = omp_get_num_threads();
    for (int o0 = next.load(std::memory_order_relaxed), o1 = 0;;) {
      do {
        if (o0 >= out) break;
        o1 = std::min(out, o0 + std::max(32, ((out - o0) / (2 * nt) + 15) / 16 * 16));
      } while (!next.compare_exchange_weak(o0, o1, std::memory_order_relaxed));
      if (o0 >= out) break;
      matmul_block(y, x, w, rows, in, out, o0, o1);
      o0 = next.load(std::memory_order_relaxed);
    }
  }
}

}  // namespace

void matmul(float* y, const float* x, const float* w, int rows, int in, int out) { matmul_any(y, x, w, rows, in, out); }
void round_to_bf16(Bf16* dst, const float* src, std::size_t n) {
  std::size_t i = 0;
#if defined(ABLATE_SIMD_W)
  // to_bf16's rounding, 16 at a time: round to nearest even, NaN kept quiet with its sign.
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x400000);
  for (; i + 16 <= n; i += 16) {
    const __m512 f = _mm512_loadu_ps(src + i);
    const __m512i b = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
    __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(bias, lsb));
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), b, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
  }
#elif defined(ABLATE_AVX2)
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x400000);
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(src + i);
    const __m256i b = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
    __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(bias, lsb));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(b, quiet), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    const __m256i h = _mm256_srli_epi32(r, 16);  // 0..65535: packus keeps them exactly
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
  }
#endif
  for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

void matmul(float* y, const float* x, const Bf16* w, int rows, int in, int out) {
  // The inputs rounded to bf16 once per call, before the threads split w between them.
  thread_local std::vector<Bf16> xb;
  const std::size_t n = std::size_t(rows) * in;
  xb.resize(n);
  round_to_bf16(xb.data(), x, n);
#if defined(ABLATE_DPBF16)
  matmul_any(y, xb.data(), w, rows, in, out);
#else  // the rounded inputs widened again: fp32 kernels on the same (exact) products
  thread_local std::vector<float> xr;
  xr.resize(n);
  for (std::size_t i = 0; i < n; ++i) xr[i] = to_float(xb[i]);
  matmul_any(y, xr.data(), w, rows, in, out);
#endif
}
void matmul(float* y, const float* x, const Half* w, int rows, int in, int out) { matmul_any(y, x, w, rows, in, out); }
const char* kernel_isa() {
#if defined(ABLATE_DPBF16)
  return "avx512-bf16";
#elif defined(ABLATE_SIMD_W)
  return "avx512";
#elif defined(ABLATE_SIMD_W8)
  return "avx2";
#else
  return "generic";
#endif
}

void quantize_q8_0_rows(BlockQ8_0* dst, const float* x, int rows, int in) {
  const int nb = q8_0_blocks_per_row(in);
#pragma omp parallel for schedule(static) if (std::size_t(rows) * in >= kMatmulParallelMinWork && !omp_in_parallel())
  for (int r = 0; r < rows; ++r) quantize_row_q8(dst + std::size_t(r) * nb, x + std::size_t(r) * in, in);
}

void matmul(float* y, const float* x, const PackedQ8_0& w, int rows, int in, int out) {
  if (w.in != in || w.out != out) throw std::invalid_argument("matmul: the Q8_0 matrix is not [out][in]");
  // x's rows as Q8_0 blocks, once per call, before the threads split w between them.
  thread_local std::vector<BlockQ8_0> xq;
  const int nb = q8_0_blocks_per_row(in);
  xq.resize(std::size_t(rows) * nb);
  quantize_q8_0_rows(xq.data(), x, rows, in);
#if defined(ABLATE_Q8_INT8)
  if (rows <= kFewRows) return matmul_any(y, xq.data(), &w, rows, in, out);
#endif
  // Many rows (prefill), or no AVX2: the same products through the widened-panel GEMM, on x's
  // blocks dequantized (each d * q is exact in fp32).
  thread_local std::vector<float> xr;
  xr.resize(std::size_t(rows) * in);
  widen_rows(xr.data(), xq.data(), in, 0, rows);  // x's blocks laid out as w's rows are
  matmul_any(y, xr.data(), &w, rows, in, out);
}

namespace {
// Weights of 1.5 to 6 bits (PackedNibbles, the K-quants, PackedIQ4_XS, LatticeMatrix) times x's rows as Q8_0 blocks.
template <class W>
void matmul_low_bit(float* y, const float* x, const W& w, int rows, int in, int out) {
  if (w.in != in || w.out != out) throw std::invalid_argument("matmul: the 1- to 6-bit matrix is not [out][in]");
  thread_local std::vector<BlockQ8_0> xq;
  const int nb = in / kQ8Block;
  xq.resize(std::size_t(rows) * nb);
  quantize_q8_0_rows(xq.data(), x, rows, in);
#if defined(ABLATE_Q8_INT8)
  if (rows <= kFewRows) {
    thread_local std::vector<float> xs;  // d * sum(q) of each of x's blocks (what an offset m multiplies)
    xs.resize(xq.size());
    // The offsets and mins these multiply: Q4_0..Q5_1's, Q4_K's and Q5_K's a block, Q2_K's a half
    // block (Q6_K's and Q3_K's offsets live in their int sums; the IQ4 levels have none).
    constexpr bool kOffsets =
        (kPackedNibbles<W> && !std::is_same_v<W, PackedIQ4_NL>) || std::is_same_v<W, PackedQ4_K> || std::is_same_v<W, PackedQ5_K>;
    constexpr bool kHalves = std::is_same_v<W, PackedQ2_K>;
    if constexpr (kOffsets)
      for (std::size_t i = 0; i < xq.size(); ++i) {
        int sum = 0;
        for (int v : xq[i].qs) sum += v;
        xs[i] = to_float(xq[i].d) * float(sum);
      }
    thread_local std::vector<float> xs16;
    if constexpr (kHalves) {
      xs16.resize(2 * xq.size());
      for (std::size_t i = 0; i < xq.size(); ++i)
        for (int h = 0; h < 2; ++h) {
          int sum = 0;
          for (int v = 0; v < 16; ++v) sum += xq[i].qs[16 * h + v];
          xs16[2 * i + h] = to_float(xq[i].d) * float(sum);
        }
    }
    const Q8Rows xr{xq.data(), xs.data(), kHalves ? xs16.data() : nullptr};
    return matmul_any(y, &xr, &w, rows, in, out);
  }
#endif
  // Many rows (prefill), or no AVX2: the widened-panel GEMM on x's blocks dequantized, as Q8_0.
  thread_local std::vector<float> xr;
  xr.resize(std::size_t(rows) * in);
  widen_rows(xr.data(), xq.data(), in, 0, rows);
  matmul_any(y, xr.data(), &w, rows, in, out);
}
}  // namespace

void matmul(float* y, const float* x, const PackedQ4_1& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ4_0& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ5_0& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ5_1& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ4_K& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ5_K& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedIQ4_NL& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedIQ4_XS& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ3_K& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ2_K& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }
void matmul(float* y, const float* x, const PackedQ6_K& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }

void matmul(float* y, const float* x, const LatticeMatrix& w, int rows, int in, int out) { matmul_low_bit(y, x, w, rows, in, out); }

}  // namespace ablate::cpu
