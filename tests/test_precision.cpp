// Precision formats below 16 bits: Q8_0 weights (blocks, GEMV/GEMM vs the scalar reference, the
// CPU backend at dtype q8_0) and the KV-cache element types.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "cpu/kernels.hpp"
#include "cpu/quant.hpp"
#include "cpu/reference.hpp"
#include "kv/contiguous_kv.hpp"
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
  double worst = 0.0;
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double mag = 0.0;
      for (int i = 0; i < in; ++i)
        mag += std::abs(double(x[std::size_t(r) * in + i]) * cpu::q8_0_value(&w[std::size_t(o) * nb], i));
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

TEST_CASE("matmul with Q8_0 weights matches the scalar reference on the same blocks", "[precision][q8_0][matmul]") {
  std::mt19937 rng(22);
  const std::pair<int, int> shapes[] = {{32, 1}, {7, 13}, {33, 65}, {576, 193}, {100, 1001}, {576, 1537}, {1536, 64}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17, 70})  // GEMV, the few-rows tiles and tails, then the widened-panel GEMM
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      auto x = random_vec(std::size_t(rows) * in, rng), w = random_vec(std::size_t(out) * in, rng);
      const auto q = cpu::quantize_q8_0(w.data(), out, in);
      std::vector<float> y(std::size_t(rows) * out), yr(y.size());
      cpu::matmul(y.data(), x.data(), q.data(), rows, in, out);
      ref::matmul(yr.data(), x.data(), q.data(), rows, in, out);
      // Both sides multiply the same dequantized weights (d * q is exact in fp32): only fp32
      // summation order differs, so the fp32 matmul's bound applies.
      CHECK(worst_term_relative_q8(y, yr, x, q, rows, in, out) < 1e-5);
    }
}

TEST_CASE("dtype q8_0 on the CPU: the fp32 forward pass of the dequantized matrices, a quarter of the bytes",
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
  double worst = 0, drift = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(double(a[i]) - b[i]));
    drift = std::max(drift, std::abs(double(a[i]) - c[i]));
  }
  CHECK(worst < 1e-3);  // fp32 summation order only
  CHECK(drift > 1e-4);  // the quantization did change the logits
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
}
