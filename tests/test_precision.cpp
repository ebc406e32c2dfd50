// Precision formats below 16 bits: Q8_0 and Q4_1 weights (blocks, GEMV/GEMM vs the scalar
// reference, the CPU backend at dtype q8_0 and native) and the KV-cache element types.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "base/paths.hpp"
#include "config/load.hpp"
#include "experiment/quality.hpp"
#include "cpu/kernels.hpp"
#include "cpu/kv_format.hpp"
#include "cpu/quant.hpp"
#include "cpu/reference.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"
#include "model/gguf.hpp"
#include "model/shape.hpp"
#include "support.hpp"

using namespace ablate;

namespace {

using test::random_vec;

// Largest |y - yr| relative to the sum of |terms| of each dot product, the terms taken with the
// dequantized weights (what both sides multiply).
double worst_term_relative_q8(const std::vector<float>& y, const std::vector<float>& yr, const std::vector<float>& x,
                              const std::vector<cpu::BlockQ8_0>& w, int rows, int in, int out) {
  const int nb = cpu::q8_0_blocks_per_row(in);
  const auto xq = cpu::quantize_q8_0(x.data(), rows, in);  // the matmul's inputs, as it rounds them
  double worst = 0.0;
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double mag = 0.0;
      for (int i = 0; i < in; ++i)
        mag += std::abs(double(cpu::q8_0_value(&xq[std::size_t(r) * nb], i)) * cpu::q8_0_value(&w[std::size_t(o) * nb], i));
      const std::size_t k = std::size_t(r) * out + o;
      worst = std::max(worst, std::abs(double(y[k]) - yr[k]) / std::max(mag, 1e-30));
    }
  return worst;
}

}  // namespace

TEST_CASE("Q8_0 blocks: each value within half a step of the original, and ggml's blocks round-trip exactly",
          "[precision][q8_0]") {
  std::mt19937 rng(21);
  for (int in : {32, 64, 70, 576}) {
    auto w = random_vec(std::size_t(3) * in, rng, -3.0f, 3.0f);
    w[5] = 0.0f;
    const auto q = cpu::quantize_q8_0(w.data(), 3, in);
    const int nb = cpu::q8_0_blocks_per_row(in);
    REQUIRE(q.size() == std::size_t(3) * nb);
    for (int r = 0; r < 3; ++r)
      for (int i = 0; i < in; ++i) {
        const cpu::BlockQ8_0& b = q[std::size_t(r) * nb + i / 32];
        // |x - d q| <= d / 2, d the block's stored scale; and d itself is max|x| / 127 to fp16 precision.
        const double d = cpu::to_float(b.d);
        CHECK(std::abs(w[std::size_t(r) * in + i] - cpu::q8_0_value(&q[std::size_t(r) * nb], i)) <= d / 2 * (1 + 1e-6));
      }
    // Padding of a partial last block is zeros: the kernels may read it.
    if (in % 32)
      for (int i = in % 32; i < 32; ++i) CHECK(q[std::size_t(nb) - 1].qs[i] == 0);
  }
  // A block as ggml writes it (largest |q| 127), dequantized by the GGUF reader, quantizes back to
  // the same 34 bytes: a Q8_0 file loaded at dtype q8_0 keeps its own weights.
  for (int trial = 0; trial < 200; ++trial) {
    std::uint8_t raw[34];
    const cpu::Half d = cpu::to_half(std::uniform_real_distribution<float>(1e-4f, 0.5f)(rng));
    std::memcpy(raw, &d.bits, 2);
    for (int i = 0; i < 32; ++i) raw[2 + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(int(rng() % 255) - 127));
    raw[2 + rng() % 32] = static_cast<std::uint8_t>(trial % 2 ? 127 : -127);
    float deq[32];
    dequantize_row(static_cast<std::uint32_t>(GgmlType::Q8_0), raw, deq, 32);
    const cpu::BlockQ8_0 back = cpu::quantize_q8_0_block(deq, 32);
    CHECK(std::memcmp(&back, raw, 34) == 0);
  }
}

TEST_CASE("pack_q8_0 keeps every block: groups of 8 rows interleaved, the rest plain, the same bytes in all", "[precision][q8_0]") {
  std::mt19937 rng(24);
  for (int out : {1, 7, 8, 9, 24, 61})  // 24 and 61: groups 1 and 2 hold rows 8..23
    for (int in : {32, 70}) {
      INFO("out=" << out << " in=" << in);
      const auto w = random_vec(std::size_t(out) * in, rng, -2.0f, 2.0f);
      const auto q = cpu::quantize_q8_0(w.data(), out, in);
      const cpu::PackedQ8_0 p = cpu::pack_q8_0(q, out, in);
      const int nb = cpu::q8_0_blocks_per_row(in);
      CHECK(p.bytes() == q.size() * sizeof(cpu::BlockQ8_0));
      CHECK(p.groups.size() == std::size_t(out / 8) * nb);
      for (int o = 0; o < out; ++o)
        for (int b = 0; b < nb; ++b) {
          const cpu::BlockQ8_0 got = p.block(o, b);
          CHECK(std::memcmp(&got, &q[std::size_t(o) * nb + b], sizeof got) == 0);
        }
      // Lane j of a group block's k-th 32 bytes is row j's values 4k..4k+3: what the AVX2 kernel reads.
      if (out >= 16) CHECK(p.groups[std::size_t(nb)].qs[32 * 2 + 4 * 3 + 1] == q[std::size_t(8 + 3) * nb].qs[4 * 2 + 1]);
    }
}

TEST_CASE("matmul with Q8_0 weights matches the scalar reference on the same blocks", "[precision][q8_0][matmul]") {
  std::mt19937 rng(22);
  const std::pair<int, int> shapes[] = {{32, 1}, {7, 13}, {33, 65}, {576, 193}, {100, 1001}, {576, 1537}, {1536, 64}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17, 70})  // GEMV, the few-rows tiles and tails, then the widened-panel GEMM
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      auto x = random_vec(std::size_t(rows) * in, rng), w = random_vec(std::size_t(out) * in, rng);
      const auto q = cpu::quantize_q8_0(w.data(), out, in);
      std::vector<float> y(std::size_t(rows) * out), yr(y.size());
      cpu::matmul(y.data(), x.data(), cpu::pack_q8_0(q, out, in), rows, in, out);
      ref::matmul(yr.data(), x.data(), q.data(), rows, in, out);
      // Both sides quantize x's rows to the same blocks and sum each block pair's int8 products
      // exactly; only the fp32 scaling and summation order differ, so the fp32 matmul's bound
      // applies.
      CHECK(worst_term_relative_q8(y, yr, x, q, rows, in, out) < 1e-5);
    }
}

namespace {
// out x in / 32 Q4_1 blocks of random nibbles, scales and offsets (a GGUF tensor's shape).
std::vector<cpu::BlockQ4_1> random_q4_1(int out, int in, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> d(0.001f, 0.1f), m(-0.8f, 0.2f);
  std::vector<cpu::BlockQ4_1> w(std::size_t(out) * (in / 32));
  for (auto& b : w) {
    b.d = cpu::to_half(d(rng)), b.m = cpu::to_half(m(rng));
    for (auto& q : b.qs) q = static_cast<std::uint8_t>(byte(rng));
  }
  return w;
}
// The same nibbles and scales in another of the 4- and 5-bit block types (random fifth bits).
template <class Block>
std::vector<Block> random_q4(int out, int in, std::mt19937& rng) {
  if constexpr (std::is_same_v<Block, cpu::BlockQ4_1>) {
    return random_q4_1(out, in, rng);
  } else {
    std::vector<Block> w;
    for (const cpu::BlockQ4_1& b : random_q4_1(out, in, rng)) {
      Block z{};
      z.d = b.d;
      if constexpr (cpu::kHasOffset<Block>) z.m = b.m;
      std::memcpy(z.qs, b.qs, sizeof z.qs);
      if constexpr (cpu::kFiveBit<Block>)
        for (auto& h : z.qh) h = static_cast<std::uint8_t>(rng());
      w.push_back(z);
    }
    return w;
  }
}
}  // namespace

TEMPLATE_TEST_CASE("32-value nibble blocks: pack_nibbles keeps every block, in the file's bytes", "[precision][q4_1]",
                   cpu::BlockQ4_0, cpu::BlockQ4_1, cpu::BlockQ5_0, cpu::BlockQ5_1, cpu::BlockIQ4_NL) {
  std::mt19937 rng(31);
  for (int out : {1, 7, 8, 9, 24, 29})
    for (int in : {32, 96}) {
      INFO("out=" << out << " in=" << in);
      const auto q = random_q4<TestType>(out, in, rng);
      const cpu::PackedNibbles<TestType> p = cpu::pack_nibbles(q, out, in);
      CHECK(p.bytes() == q.size() * sizeof(TestType));  // 18, 20, 22, 24 or 18 bytes a block
      for (int o = 0; o < out; ++o)
        for (int b = 0; b < in / 32; ++b) {
          const TestType got = p.block(o, b);
          CHECK(std::memcmp(&got, &q[std::size_t(o) * (in / 32) + b], sizeof got) == 0);
        }
    }
  CHECK_THROWS_WITH(cpu::pack_nibbles(std::vector<TestType>(3), 1, 96 + 16), Catch::Contains("positive multiple of 32"));
}

TEST_CASE("Q4_1 blocks: quantize_q4_1 within ggml's bound; Q4_0 as Q4_1 keeps every value", "[precision][q4_1]") {
  std::mt19937 rng(31);
  // quantize_q4_1 (ggml's rule): each value within half a step of the original, plus the fp16
  // rounding of the scale (times at most 15 steps) and of the offset.
  const auto x = random_vec(5 * 64, rng, -3.0f, 2.0f);
  const auto q = cpu::quantize_q4_1(x.data(), 5, 64);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const cpu::BlockQ4_1& b = q[i / 32];
    const float d = cpu::to_float(b.d), m = cpu::to_float(b.m);
    CHECK(std::abs(x[i] - cpu::nibble_value(b, int(i % 32))) <= 0.5f * d + 15.0f * d * 0x1p-11f + std::abs(m) * 0x1p-11f + 1e-6f);
  }
  CHECK_THROWS_WITH(cpu::quantize_q4_1(x.data(), 1, 48), Catch::Contains("multiple of 32"));
  // Every Q4_0 block of a few scales: the Q4_1 form gives ggml's Q4_0 values bit for bit.
  for (float d : {0.0f, 1e-4f, 0.0371f, -0.5f, 3.0f, 8000.0f}) {
    std::uint8_t raw[18];
    const std::uint16_t h = cpu::to_half(d).bits;
    std::memcpy(raw, &h, 2);
    for (int i = 0; i < 16; ++i) raw[2 + i] = static_cast<std::uint8_t>(17 * i + 3);
    cpu::BlockQ4_0 b0;
    std::memcpy(&b0, raw, sizeof b0);
    float want[32];
    dequantize_row(static_cast<std::uint32_t>(GgmlType::Q4_0), raw, want, 32);
    const cpu::BlockQ4_1 b1 = cpu::q4_0_as_q4_1(b0);
    for (int i = 0; i < 32; ++i) CHECK(cpu::nibble_value(b1, i) == want[i]);
    for (int i = 0; i < 32; ++i) CHECK(cpu::nibble_value(b0, i) == want[i]);
  }
  cpu::BlockQ4_0 huge{cpu::to_half(9000.0f), {}};
  CHECK_THROWS_WITH(cpu::q4_0_as_q4_1(huge), Catch::Contains("|d| < 8188"));
}

TEMPLATE_TEST_CASE("matmul with 32-value nibble blocks matches the scalar reference on them",
                   "[precision][q4_1][matmul]", cpu::BlockQ4_0, cpu::BlockQ4_1, cpu::BlockQ5_0, cpu::BlockQ5_1, cpu::BlockIQ4_NL) {
  std::mt19937 rng(32);
  const std::pair<int, int> shapes[] = {{32, 1}, {64, 13}, {96, 65}, {576, 193}, {1536, 64}, {576, 1537}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17, 70})  // GEMV, the few-rows tiles and tails, then the widened-panel GEMM
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      const auto x = random_vec(std::size_t(rows) * in, rng);
      const auto q = random_q4<TestType>(out, in, rng);
      std::vector<float> y(std::size_t(rows) * out), yr(y.size());
      cpu::matmul(y.data(), x.data(), cpu::pack_nibbles(q, out, in), rows, in, out);
      if constexpr (std::is_same_v<TestType, cpu::BlockQ4_0>) {
        // Q4_0's m = -8 d is exact, so its 18-byte blocks give what the same blocks as Q4_1 give, bit for bit.
        std::vector<cpu::BlockQ4_1> q41(q.size());
        std::transform(q.begin(), q.end(), q41.begin(), cpu::q4_0_as_q4_1);
        std::vector<float> y41(y.size());
        cpu::matmul(y41.data(), x.data(), cpu::pack_nibbles(q41, out, in), rows, in, out);
        CHECK(y41 == y);
      }
      ref::matmul(yr.data(), x.data(), q.data(), rows, in, out);
      // Both sides sum the same int8 products exactly; the fp32 scalings and summation order
      // differ, so the fp32 matmul's bound applies, relative to the sum of |terms|.
      const auto xq = cpu::quantize_q8_0(x.data(), rows, in);
      const int nb = in / 32;
      double worst = 0.0;
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < out; ++o) {
          double mag = 0.0;
          for (int i = 0; i < in; ++i)
            mag += std::abs(double(cpu::q8_0_value(&xq[std::size_t(r) * nb], i)) * cpu::nibble_value(q[std::size_t(o) * nb + i / 32], i % 32));
          const std::size_t k = std::size_t(r) * out + o;
          worst = std::max(worst, std::abs(double(y[k]) - yr[k]) / std::max(mag, 1e-30));
        }
      CHECK(worst < 1e-5);
    }
  CHECK_THROWS_AS(cpu::matmul(std::vector<float>(64).data(), std::vector<float>(64).data(),
                              cpu::pack_nibbles(random_q4<TestType>(2, 32, rng), 2, 32), 1, 64, 2),
                  std::invalid_argument);
}

namespace {
// out x in / 256 K-quant (or IQ4_XS) blocks of random bytes, with finite fp16 scales (a GGUF tensor's shape).
template <class Block>
std::vector<Block> random_k(int out, int in, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> d(0.0005f, 0.02f);
  std::vector<Block> w(std::size_t(out) * (in / 256));
  for (auto& b : w) {
    auto* raw = reinterpret_cast<std::uint8_t*>(&b);
    for (std::size_t i = 0; i < sizeof b; ++i) raw[i] = static_cast<std::uint8_t>(byte(rng));
    b.d = cpu::to_half(d(rng));
    if constexpr (requires { b.dmin; }) b.dmin = cpu::to_half(d(rng));
  }
  return w;
}
// Each K-quant's type, packing, value function and bytes a row's block as held.
template <class Block> struct KQuant;
template <> struct KQuant<cpu::BlockQ4_K> {
  static constexpr GgmlType type = GgmlType::Q4_K;
  static constexpr std::size_t row_bytes = 148;  // its 6-bit scales unpacked
  static cpu::PackedQ4_K pack(const std::vector<cpu::BlockQ4_K>& q, int out, int in) { return cpu::pack_q4_k(q, out, in); }
};
template <> struct KQuant<cpu::BlockQ5_K> {
  static constexpr GgmlType type = GgmlType::Q5_K;
  static constexpr std::size_t row_bytes = 180;
  static cpu::PackedQ5_K pack(const std::vector<cpu::BlockQ5_K>& q, int out, int in) { return cpu::pack_q5_k(q, out, in); }
};
template <> struct KQuant<cpu::BlockQ6_K> {
  static constexpr GgmlType type = GgmlType::Q6_K;
  static constexpr std::size_t row_bytes = 210;  // as in the file
  static cpu::PackedQ6_K pack(const std::vector<cpu::BlockQ6_K>& q, int out, int in) { return cpu::pack_q6_k(q, out, in); }
};
template <> struct KQuant<cpu::BlockIQ4_XS> {
  static constexpr GgmlType type = GgmlType::IQ4_XS;
  static constexpr std::size_t row_bytes = 138;  // its 6-bit scales unpacked
  static cpu::PackedIQ4_XS pack(const std::vector<cpu::BlockIQ4_XS>& q, int out, int in) { return cpu::pack_iq4_xs(q, out, in); }
};
template <> struct KQuant<cpu::BlockQ3_K> {
  static constexpr GgmlType type = GgmlType::Q3_K;
  static constexpr std::size_t row_bytes = 114;  // its scales unpacked to a byte each
  static cpu::PackedQ3_K pack(const std::vector<cpu::BlockQ3_K>& q, int out, int in) { return cpu::pack_q3_k(q, out, in); }
};
template <> struct KQuant<cpu::BlockQ2_K> {
  static constexpr GgmlType type = GgmlType::Q2_K;
  static constexpr std::size_t row_bytes = 84;  // as in the file
  static cpu::PackedQ2_K pack(const std::vector<cpu::BlockQ2_K>& q, int out, int in) { return cpu::pack_q2_k(q, out, in); }
};
template <class Block>
auto pack_k(const std::vector<Block>& q, int out, int in) { return KQuant<Block>::pack(q, out, in); }
inline float k_value(const cpu::BlockQ4_K& b, int i) { return cpu::k4_value(b, i); }
inline float k_value(const cpu::BlockQ5_K& b, int i) { return cpu::k4_value(b, i); }
inline float k_value(const cpu::BlockQ6_K& b, int i) { return cpu::q6_k_value(b, i); }
inline float k_value(const cpu::BlockIQ4_XS& b, int i) { return cpu::iq4_xs_value(b, i); }
inline float k_value(const cpu::BlockQ3_K& b, int i) { return cpu::q3_k_value(b, i); }
inline float k_value(const cpu::BlockQ2_K& b, int i) { return cpu::q2_k_value(b, i); }
}  // namespace

TEMPLATE_TEST_CASE("256-value blocks: packed, they keep every value as ggml decodes it", "[precision][q4_k]",
                   cpu::BlockQ2_K, cpu::BlockQ3_K, cpu::BlockQ4_K, cpu::BlockQ5_K, cpu::BlockQ6_K, cpu::BlockIQ4_XS) {
  std::mt19937 rng(41);
  for (int out : {1, 7, 8, 9, 29})
    for (int in : {256, 768}) {
      INFO("out=" << out << " in=" << in);
      const auto q = random_k<TestType>(out, in, rng);
      const auto p = pack_k(q, out, in);
      // Whole groups of 8 rows.
      CHECK(p.bytes() == std::size_t((out + 7) / 8) * (in / 256) * 8 * KQuant<TestType>::row_bytes);
      std::vector<float> want(256), got(256);
      for (int o = 0; o < out; ++o)
        for (int b = 0; b < in / 256; ++b) {
          dequantize_row(static_cast<std::uint32_t>(KQuant<TestType>::type),
                         reinterpret_cast<const std::uint8_t*>(&q[std::size_t(o) * (in / 256) + b]), want.data(), 256);
          p.values(o, b, got.data());
          CHECK(got == want);
        }
    }
  CHECK_THROWS_WITH(pack_k(std::vector<TestType>(3), 1, 512 + 32), Catch::Contains("positive multiple of 256"));
}

TEMPLATE_TEST_CASE("matmul with 256-value blocks matches the scalar reference on them", "[precision][q4_k][matmul]",
                   cpu::BlockQ2_K, cpu::BlockQ3_K, cpu::BlockQ4_K, cpu::BlockQ5_K, cpu::BlockQ6_K, cpu::BlockIQ4_XS) {
  std::mt19937 rng(42);
  const std::pair<int, int> shapes[] = {{256, 1}, {256, 13}, {512, 65}, {1536, 64}, {768, 77}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17, 70})  // GEMV, the few-rows tiles and tails, then the widened-panel GEMM
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      const auto x = random_vec(std::size_t(rows) * in, rng);
      const auto q = random_k<TestType>(out, in, rng);
      std::vector<float> y(std::size_t(rows) * out, -1.0f), yr(y.size());
      cpu::matmul(y.data(), x.data(), pack_k(q, out, in), rows, in, out);
      ref::matmul(yr.data(), x.data(), q.data(), rows, in, out);
      // The same int8 products summed exactly on both sides; the fp32 scalings and summation order
      // differ, so the fp32 matmul's bound applies, relative to the sum of |terms|.
      const auto xq = cpu::quantize_q8_0(x.data(), rows, in);
      const int nb = in / 32, nbk = in / 256;
      double worst = 0.0;
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < out; ++o) {
          double mag = 0.0;
          for (int i = 0; i < in; ++i)
            mag += std::abs(double(cpu::q8_0_value(&xq[std::size_t(r) * nb], i)) * k_value(q[std::size_t(o) * nbk + i / 256], i % 256));
          const std::size_t k = std::size_t(r) * out + o;
          worst = std::max(worst, std::abs(double(y[k]) - yr[k]) / std::max(mag, 1e-30));
        }
      CHECK(worst < 1e-5);
    }
  CHECK_THROWS_AS(cpu::matmul(std::vector<float>(512).data(), std::vector<float>(512).data(),
                              pack_k(random_k<TestType>(2, 256, rng), 2, 256), 1, 512, 2),
                  std::invalid_argument);
}

TEST_CASE("quantize_q8_0_rows writes quantize_q8_0's bytes, vector lanes and partial blocks alike", "[precision][q8_0]") {
  std::mt19937 rng(23);
  for (int in : {32, 70, 576, 1536})
    for (int rows : {1, 3, 40}) {
      INFO("rows=" << rows << " in=" << in);
      auto x = random_vec(std::size_t(rows) * in, rng, -4.0f, 4.0f);
      for (int i = 0; i < 32 && i < in; ++i) x[i] = 0.0f;                  // an all-zero block: d = 0
      const auto want = cpu::quantize_q8_0(x.data(), rows, in);
      std::vector<cpu::BlockQ8_0> got(want.size());
      cpu::quantize_q8_0_rows(got.data(), x.data(), rows, in);
      CHECK(std::memcmp(got.data(), want.data(), want.size() * sizeof(cpu::BlockQ8_0)) == 0);
    }
}

TEST_CASE("dtype q8_0 on the CPU: int8 inputs times int8 weights, near the fp32 pass of the dequantized matrices, a quarter of the bytes",
          "[precision][q8_0][model]") {
  // stories260k's hidden_dim 172 is not a multiple of 32: w2's rows end in a partial block.
  const ModelShape shape = *find_preset("stories260k");
  const Weights w = synthetic_weights(shape, 5);
  const auto round = [&](std::vector<float> v, int in) {
    const auto q = cpu::quantize_q8_0(v.data(), static_cast<int>(v.size() / std::size_t(in)), in);
    const int nb = cpu::q8_0_blocks_per_row(in);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = cpu::q8_0_value(&q[i / std::size_t(in) * nb], int(i % std::size_t(in)));
    return v;
  };
  Weights rounded = w;
  for (LayerWeights& L : rounded.layers) {
    for (auto* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w3}) *m = round(*m, shape.dim);
    L.w2 = round(L.w2, shape.hidden_dim);
  }
  rounded.classifier = round(std::vector<float>(w.lm_head(), w.lm_head() + w.token_embedding.size()), shape.dim);
  CpuBackend q8(w, "q8_0"), ref(std::move(rounded), "fp32"), full(w, "fp32");
  const std::vector<int> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};
  std::vector<float> a, b, c;
  for (auto [be, out] : {std::pair{&q8, &a}, {&ref, &b}, {&full, &c}}) {
    ContiguousKvCache kv(shape, 8u << 20, 64, ContiguousKvCache::Reserve::MaxSeqLen);
    NaiveAttention att;
    REQUIRE(kv.admit(0, static_cast<int>(prompt.size()), 0));
    REQUIRE(kv.ensure(0, static_cast<int>(prompt.size())));
    ForwardBatch batch;
    batch.chunks.push_back({0, 0, prompt, true});
    *out = be->forward(batch, kv, att);
  }
  REQUIRE(a.size() == b.size());
  double worst = 0, drift = 0, weights_only = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
    drift = std::max(drift, std::abs(double(a[i]) - c[i]));
    weights_only = std::max(weights_only, std::abs(double(b[i]) - c[i]));
  }
  // b: the weights rounded, inputs not; a: both. Rounding each matmul's inputs to 8 bits per 32
  // values, by the same rule as the weights, moves the logits by as much again, not more (measured:
  // 0.069 against 0.061 from the weights alone).
  CHECK(worst > 1e-3);                // the inputs were quantized too
  CHECK(worst < 2 * weights_only);
  CHECK(drift > 1e-4);
  // Matrix bytes: 34 per 32 weights (scales counted), against 4 bytes a weight in fp32.
  std::size_t weights = std::size_t(shape.vocab_size) * shape.dim;
  std::size_t blocks = std::size_t(shape.vocab_size) * cpu::q8_0_blocks_per_row(shape.dim);
  for (int l = 0; l < shape.n_layers; ++l) {
    const std::size_t qkv = std::size_t(shape.dim + 2 * shape.kv_dim()), h = std::size_t(shape.hidden_dim);
    weights += (qkv + shape.dim + 2 * h) * shape.dim + std::size_t(shape.dim) * h;
    blocks += (qkv + shape.dim + 2 * h) * cpu::q8_0_blocks_per_row(shape.dim) +
              std::size_t(shape.dim) * cpu::q8_0_blocks_per_row(shape.hidden_dim);
  }
  CHECK(full.matrix_bytes() == weights * 4);
  CHECK(q8.matrix_bytes() == blocks * 34);
  // bits_per_weight: the same bytes over the weights (w2's rows end in a zero-padded block).
  CHECK(full.bits_per_weight() == 32.0);
  CHECK(q8.bits_per_weight() == Approx(8.0 * double(blocks * 34) / double(weights)).epsilon(1e-12));
  CHECK(CpuBackend(w, "bf16").bits_per_weight() == 16.0);
}

// ---- KV-cache element types ------------------------------------------------------------------

TEST_CASE("fp8 e4m3: every code round-trips, rounding goes to the nearest, overflow saturates at 448",
          "[precision][kv][fp8]") {
  for (int b = 0; b < 256; ++b) {
    const cpu::Fp8E4M3 h{static_cast<std::uint8_t>(b)};
    const float f = cpu::to_float(h);
    if ((b & 0x7f) == 0x7f) {
      CHECK(std::isnan(f));
      continue;
    }
    CHECK(cpu::to_fp8_e4m3(f).bits == h.bits);
  }
  CHECK(cpu::to_float(cpu::Fp8E4M3{0x7e}) == 448.0f);
  CHECK(cpu::to_float(cpu::Fp8E4M3{0x01}) == std::ldexp(1.0f, -9));  // the smallest subnormal
  CHECK(cpu::to_fp8_e4m3(1e6f).bits == 0x7e);
  CHECK(cpu::to_fp8_e4m3(-500.0f).bits == 0xfe);
  CHECK(cpu::to_fp8_e4m3(1.0625f).bits == cpu::to_fp8_e4m3(1.0f).bits);  // a tie: to even
  std::mt19937 rng(31);
  std::uniform_real_distribution<float> u(-460.f, 460.f);
  for (int i = 0; i < 20000; ++i) {
    const float f = i % 3 == 0 ? u(rng) : i % 3 == 1 ? u(rng) * 1e-3f : u(rng) * 1e-5f;
    const std::uint8_t b = cpu::to_fp8_e4m3(f).bits;
    const double err = std::abs(double(cpu::to_float(cpu::Fp8E4M3{b})) - f);
    for (int d : {-1, 1}) {  // the neighbours (same sign, finite) are no closer
      const int nb = b + d;
      if ((nb & 0x80) != (b & 0x80) || (nb & 0x7f) == 0x7f || nb < 0 || nb > 255) continue;
      CHECK(err <= std::abs(double(cpu::to_float(cpu::Fp8E4M3{static_cast<std::uint8_t>(nb)})) - f));
    }
  }
}

TEST_CASE("kv_rows widens every stored code exactly as kv_decode_one does, SIMD lanes and tail",
          "[precision][kv]") {
  // The attention kernels read K/V through kv_rows (AVX-512 or AVX2 where the CPU has them);
  // kv_decode_one is the scalar definition. head_dim 13 and 72 exercise both the vector lanes and
  // the scalar tail.
  std::mt19937 rng(41);
  for (KvDtype dt : {KvDtype::bf16, KvDtype::fp16, KvDtype::fp8_e4m3, KvDtype::int8})
    for (int hd : {13, 72}) {
      INFO("kv.dtype=" << kv_dtype_name(dt) << " head_dim=" << hd);
      const int tokens = 256, heads = 2, stride = heads * hd;
      const std::size_t bytes = kv_dtype_bytes(dt), n = std::size_t(tokens) * stride;
      std::vector<std::uint8_t> pool(n * bytes);
      for (std::size_t i = 0; i < n; ++i) {
        // 8-bit types: every byte value appears (code = element index mod 256), NaN codes excepted.
        std::uint32_t code = bytes == 1 ? std::uint32_t(i % 256) : std::uint32_t(rng() & 0xffff);
        const float f = bytes == 1 ? 0.0f
                        : dt == KvDtype::bf16 ? cpu::to_float(cpu::Bf16{std::uint16_t(code)})
                                              : cpu::to_float(cpu::Half{std::uint16_t(code)});
        if ((dt == KvDtype::fp8_e4m3 && (code & 0x7f) == 0x7f) || std::isnan(f)) code = 0;
        std::memcpy(&pool[i * bytes], &code, bytes);
      }
      std::vector<float> scales(std::size_t(tokens) * heads);
      for (float& s : scales) s = std::uniform_real_distribution<float>(1e-4f, 2.0f)(rng);
      const std::int32_t page = 0;
      KvSeqView view;
      view.indices = &page;
      view.num_pages = 1;
      view.page_size = tokens;
      view.length = tokens;
      view.token_stride = stride;
      view.dtype = dt;
      view.k_data = view.v_data = pool.data();
      view.k_scale = view.v_scale = scales.data();
      std::vector<float> buf(std::size_t(cpu::kKvDecodeRows) * hd);
      int mismatches = 0;
      for (int g = 0; g < heads; ++g) {
        int row_stride = 0;
        const float* rows = cpu::kv_rows(view, g == 1, g, hd, 0, tokens, buf.data(), &row_stride);
        for (int t = 0; t < tokens; ++t)
          for (int i = 0; i < hd; ++i) {
            const std::size_t e = std::size_t(t) * stride + std::size_t(g) * hd + i;
            const float want = cpu::kv_decode_one(dt, pool.data(), e, scales.data(), std::size_t(t) * heads + g);
            const float got = rows[std::size_t(t) * row_stride + i];
            if (std::memcmp(&want, &got, sizeof(float)) != 0) ++mismatches;
          }
      }
      CHECK(mismatches == 0);
    }
}

namespace {

const KvDtype kKvDtypes[] = {KvDtype::fp32, KvDtype::bf16, KvDtype::fp16, KvDtype::fp8_e4m3, KvDtype::int8};

// The fp32 layout of a test (test::contiguous / test::paged, NaN in slots nobody wrote) stored in
// `dtype`: every written slot encoded as the caches encode it; unwritten slots hold all-ones bytes
// (NaN in bf16, fp16 and fp8; -1 with a NaN scale in int8), so a stray read shows.
struct TypedKv {
  std::vector<std::uint8_t> k, v;
  std::vector<float> ks, vs;
  KvSeqView view;
  TypedKv(const test::KvLayout& l, KvDtype dtype, int head_dim) {
    const int ts = l.view.token_stride, heads = ts / head_dim;
    const std::size_t slots = l.k.size() / std::size_t(ts), eb = kv_dtype_bytes(dtype);
    k.assign(slots * ts * eb, 0xff);
    v = k;
    ks.assign(slots * heads, std::nanf(""));
    vs = ks;
    for (std::size_t s = 0; s < slots; ++s)
      if (!std::isnan(l.k[s * ts])) {
        cpu::kv_encode(dtype, &l.k[s * ts], heads, head_dim, &k[s * ts * eb], &ks[s * heads]);
        cpu::kv_encode(dtype, &l.v[s * ts], heads, head_dim, &v[s * ts * eb], &vs[s * heads]);
      }
    view = l.view;
    const std::size_t slot0 = std::size_t(l.view.k_pool - l.k.data()) / std::size_t(ts);
    view.dtype = dtype;
    view.k_pool = view.v_pool = nullptr;
    if (dtype == KvDtype::fp32) view.k_pool = l.view.k_pool, view.v_pool = l.view.v_pool;
    view.k_data = &k[slot0 * ts * eb];
    view.v_data = &v[slot0 * ts * eb];
    view.k_scale = &ks[slot0 * heads];
    view.v_scale = &vs[slot0 * heads];
  }
};

// Largest error of one stored element: half a unit in the last place of its format (8, 11 and 4
// significant bits; fp8's subnormal spacing is 2^-9), or half an int8 step of its row's scale.
double element_error(KvDtype d, double x, double row_amax) {
  switch (d) {
    case KvDtype::fp32: return 0.0;
    case KvDtype::bf16: return std::abs(x) * std::ldexp(1.0, -8);
    case KvDtype::fp16: return std::abs(x) * std::ldexp(1.0, -11);
    case KvDtype::fp8_e4m3: return std::max(std::abs(x) * std::ldexp(1.0, -4), std::ldexp(1.0, -10));
    case KvDtype::int8: return row_amax / 254.0;
  }
  return 0.0;
}

// A first-order bound on |attention(stored K, V) - attention(K, V)|: the values move the output
// by at most max |dv|; the scores s_t move by ds_t <= scale sum_d |q_d| |dk_td|, which moves the
// softmax weights by a factor within exp(+-2 max ds), so the output by about 2 max ds max|v|.
// Per query head, over the keys it sees.
double kv_error_bound(const test::AttentionCase& c, KvDtype d) {
  const auto& s = c.s;
  const int hd = s.head_dim, G = s.n_heads / s.n_kv_heads;
  const auto err_of = [&](const std::vector<float>& x, int t, int h, int i) {
    const float* row = &x[std::size_t(t) * c.ts + std::size_t(h) * hd];
    double amax = 0;
    for (int j = 0; j < hd; ++j) amax = std::max(amax, std::abs(double(row[j])));
    return element_error(d, row[i], amax);
  };
  double worst = 0;
  for (int i = 0; i < s.n_q; ++i)
    for (int h = 0; h < s.n_heads; ++h) {
      const int kvh = h / G, n_keys = s.q_pos0 + i + 1;
      const float* q = &c.q[std::size_t(i) * c.q_stride + std::size_t(h) * hd];
      double ds = 0, dv = 0, vmax = 0;
      for (int t = 0; t < n_keys; ++t) {
        double e = 0;
        for (int j = 0; j < hd; ++j) {
          e += std::abs(double(q[j])) * err_of(c.k, t, kvh, j);
          dv = std::max(dv, err_of(c.v, t, kvh, j));
          vmax = std::max(vmax, std::abs(double(c.v[std::size_t(t) * c.ts + std::size_t(kvh) * hd + j])));
        }
        ds = std::max(ds, e / std::sqrt(double(hd)));
      }
      worst = std::max(worst, dv + (std::exp(2 * ds) - 1) * vmax);
    }
  return worst;
}

}  // namespace

TEST_CASE("attention reads every KV dtype: the reference on the stored values, and the fp32 one within the format's bound",
          "[precision][kv][attention]") {
  std::mt19937 rng(32);
  const test::AttentionShape cases[] = {{1, 300, 9, 3, 64}, {5, 40, 8, 8, 64}, {33, 0, 9, 3, 64}, {1, 20, 4, 2, 24}};
  for (const auto& shape : cases) {
    const test::AttentionCase c(shape, rng, 3, 50.0f);
    test::KvLayout contiguous = test::contiguous(c.k, c.v, c.len, c.ts);
    std::vector<float> exact = c.out_buffer();
    AttentionProblem pe = c.problem(contiguous.view, exact.data());
    ref::attention({&pe, 1});  // fp32 K/V, as computed
    for (KvDtype dt : kKvDtypes)
      for (int page_size : {0, 1, 16}) {
        INFO("n_q=" << shape.n_q << " q_pos0=" << shape.q_pos0 << " head_dim=" << shape.head_dim << " dtype="
                    << kv_dtype_name(dt) << " page_size=" << page_size);
        // A fresh layout (prvalue): a copy would keep view pointers into the original.
        test::KvLayout l = page_size ? test::paged(c.k, c.v, c.len, c.ts, page_size, rng) : test::contiguous(c.k, c.v, c.len, c.ts);
        const TypedKv typed(l, dt, shape.head_dim);
        std::vector<float> expect = c.out_buffer();
        AttentionProblem pr = c.problem(typed.view, expect.data());
        ref::attention({&pr, 1});
        const double bound = kv_error_bound(c, dt);
        const double moved = c.err(expect, exact, 1.0);
        CHECK(moved <= bound + 1e-6);
        if (dt != KvDtype::fp32) CHECK(moved > 0);  // the values were stored in the narrower type
        for (int kernel = 0; kernel < 3; ++kernel) {
          INFO("kernel " << (kernel == 0 ? "naive" : kernel == 1 ? "flash" : "flash_split x3"));
          std::vector<float> out = c.out_buffer();
          AttentionProblem p = c.problem(typed.view, out.data());
          if (kernel == 0) cpu::attention_naive({&p, 1});
          if (kernel == 1) cpu::attention_flash({&p, 1});
          if (kernel == 2) cpu::attention_flash_split({&p, 1}, 3);
          // The same stored values on both sides: fp32 summation order only, as for fp32 K/V.
          CHECK(c.err(out, expect, 1.0) < 1e-5);
          CHECK(c.err(out, exact, 1.0) <= bound + 1e-5);
        }
      }
  }
}

TEST_CASE("KV dtype: a run's KV bytes per token are 2 x layers x kv_heads x head_dim x bytes (+ int8 scales), and kv.memory_mb buys tokens at that size",
          "[precision][kv]") {
  test::OneThread one;
  const ModelShape shape = *find_preset("stories260k");
  const Weights w = synthetic_weights(shape, 6);
  const std::size_t elems = 2 * std::size_t(shape.n_layers) * shape.n_kv_heads * shape.head_dim();
  const std::pair<KvDtype, std::size_t> expected[] = {
      {KvDtype::fp32, elems * 4}, {KvDtype::bf16, elems * 2}, {KvDtype::fp16, elems * 2}, {KvDtype::fp8_e4m3, elems},
      {KvDtype::int8, elems + 2 * std::size_t(shape.n_layers) * shape.n_kv_heads * 4}};
  for (auto [dt, bytes] : expected) {
    INFO(kv_dtype_name(dt));
    CHECK(kv_bytes_per_token(shape, KvStorage::host(dt)) == bytes);
    CpuBackend be(w, "fp32", kv_dtype_name(dt));
    const std::size_t budget = 1u << 20;
    ContiguousKvCache kv(shape, budget, 64, ContiguousKvCache::Reserve::MaxSeqLen, be.kv_storage());
    CHECK(kv.capacity_tokens() == int(budget / bytes));
    StaticScheduler sched(2);
    NaiveAttention att;
    NoDrafter none;
    const RunRecords rec = run_engine({be, kv, sched, att, none}, test::random_requests(3, 2, shape.vocab_size, 12, 6), {});
    long long checked = 0;
    for (const StepRecord& s : rec.steps)
      if (s.kv_tokens_stored > 0) {
        CHECK(s.kv_used_bytes == std::size_t(s.kv_tokens_stored) * bytes);
        ++checked;
      }
    CHECK(checked > 0);
  }
}

TEST_CASE("KV dtype: paged and contiguous caches give the same logits at each kv.dtype, and a narrow KV moves them",
          "[precision][kv][paged]") {
  test::OneThread one;
  const ModelShape shape = *find_preset("stories260k");
  const Weights w = synthetic_weights(shape, 7);
  const std::vector<int> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 300, 301, 17, 99, 5, 6, 7, 8, 9, 10};
  std::vector<float> fp32_last;
  for (KvDtype dt : kKvDtypes) {
    INFO(kv_dtype_name(dt));
    CpuBackend be(w, "fp32", kv_dtype_name(dt));
    std::vector<float> last[2];
    for (int layout = 0; layout < 2; ++layout) {
      std::unique_ptr<KvCache> kv;
      if (layout == 0) kv = std::make_unique<ContiguousKvCache>(shape, 4u << 20, 64, ContiguousKvCache::Reserve::MaxSeqLen, be.kv_storage());
      else kv = std::make_unique<PagedKvCache>(shape, 4u << 20, 8, 64, PagedKvCache::Admission::OnDemand, be.kv_storage());
      FlashAttention att;
      REQUIRE(kv->admit(0, static_cast<int>(prompt.size()), 4));
      // The prompt in two chunks, then a decode step: later steps read what earlier ones stored.
      const std::vector<int> a(prompt.begin(), prompt.begin() + 11), b(prompt.begin() + 11, prompt.end());
      for (auto [pos0, toks] : {std::pair{0, a}, {11, b}, {20, std::vector<int>{42}}}) {
        REQUIRE(kv->ensure(0, pos0 + static_cast<int>(toks.size())));
        ForwardBatch fb;
        fb.chunks.push_back({0, pos0, toks, false});
        last[layout] = be.forward(fb, *kv, att);
        kv->set_length(0, pos0 + static_cast<int>(toks.size()));
      }
    }
    double diff = 0, mag = 0;
    for (std::size_t i = 0; i < last[0].size(); ++i) {
      diff = std::max(diff, std::abs(double(last[0][i]) - last[1][i]));
      mag = std::max(mag, std::abs(double(last[0][i])));
    }
    CHECK(diff / mag < 1e-5);  // the same stored K/V: page boundaries change fp32 summation order only
    if (dt == KvDtype::fp32) {
      fp32_last = last[0];
    } else {
      double drift = 0;
      for (std::size_t i = 0; i < last[0].size(); ++i) drift = std::max(drift, std::abs(double(last[0][i]) - fp32_last[i]));
      CHECK(drift > 1e-6);  // the cache did store the narrower type
    }
  }
}

TEST_CASE("ablate list's precision table is what the config accepts", "[precision][config]") {
  const auto& table = backend_precisions();
  REQUIRE(!table.empty());
  REQUIRE(table.front().backend == "cpu");
  const auto loads = [](const std::string& yaml) {
    try {
      load_experiment_text(yaml, "x.yaml", {});
      return true;
    } catch (const ConfigError&) {
      return false;
    }
  };
  const BackendPrecision& cpu = table.front();
  // native keeps a checkpoint file's own encoding, so it is listed for a GGUF model (and refused for a synthetic one).
  const std::filesystem::path gguf = project_root() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  for (const auto& d : cpu.dtypes) {
    if (d == "native" && !std::filesystem::exists(gguf)) continue;
    const std::string model = d == "native" ? "model: {source: gguf, gguf: '" + gguf.string() + "'}\nmax_seq_len: 512\n" : "";
    for (const auto& k : cpu.kv_dtypes) CHECK(loads(model + "dtype: " + d + "\nkv: {dtype: " + k + "}\n"));
  }
  CHECK(!loads("dtype: native\n"));  // model.source synthetic has no stored encoding
  CHECK(!loads("dtype: q4_0\n"));
  CHECK(!loads("kv: {dtype: int4}\n"));
  CHECK(cpu.kv_dtypes.size() == 6);  // auto and each KvDtype
  for (KvDtype d : kKvDtypes) CHECK(std::count(cpu.kv_dtypes.begin(), cpu.kv_dtypes.end(), kv_dtype_name(d)) == 1);
}

TEST_CASE("quality: the same backends and prompt give the same KL, top-1 and perplexity, every dtype", "[precision][quality]") {
  // The quality columns are a property of (model, dtype, prompt): a second pass over the same
  // backends, after other forward passes on them, must reproduce them bit for bit.
  const ModelShape shape = *find_preset("tiny");
  const Weights w = synthetic_weights(shape, 5);
  CpuBackend reference(w, "fp32");
  std::vector<int> prompt(40);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>((i * 37 + 11) % static_cast<std::size_t>(shape.vocab_size));
  for (const char* dtype : {"fp32", "bf16", "fp16", "q8_0"}) {
    INFO(dtype);
    CpuBackend point(w, dtype);
    const QualityResult a = measure_quality(point, point.kv_storage(), reference, prompt, 24, false);
    // Other work in between: decode-sized and prefill-sized passes on both backends.
    for (Backend* be : {static_cast<Backend*>(&point), static_cast<Backend*>(&reference)}) {
      ContiguousKvCache kv(shape, 64u << 20, shape.max_seq_len, ContiguousKvCache::Reserve::MaxSeqLen, be->kv_storage());
      NaiveAttention att;
      REQUIRE(kv.admit(0, 30, 0));
      REQUIRE(kv.ensure(0, 30));
      const std::vector<int> head(prompt.begin(), prompt.begin() + 29);
      ForwardBatch fb;
      fb.chunks.push_back({0, 0, head, true});
      be->forward(fb, kv, att);
    }
    const QualityResult b = measure_quality(point, point.kv_storage(), reference, prompt, 24, false);
    CHECK(a.kl == b.kl);
    CHECK(a.top1 == b.top1);
    CHECK(a.positions == b.positions);
  }
}
