// bf16 conversion and the bf16 GEMM of the CUDA decode path against fp32 CPU references.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "cpu/kernels.hpp"
#include "cuda/bf16.cuh"
#include "cuda/kernels.cuh"
#include "model/gguf.hpp"

using namespace ablate;

namespace {

// Round to nearest, ties to even, of a finite float: the reference for to_bf16.
cuda::bf16_bits float_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<cuda::bf16_bits>(u >> 16);
}

template <class T>
T* upload(const std::vector<T>& h) {
  void* p = nullptr;
  REQUIRE(cudaMalloc(&p, h.size() * sizeof(T)) == cudaSuccess);
  REQUIRE(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> download(const T* d, std::size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

}  // namespace

TEST_CASE("cuda to_bf16 rounds to nearest even, and matmul_bf16 matches the fp32 CPU matmul", "[cuda][bf16]") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int rows = 3, in = 577, out = 1031;  // odd sizes: tails of every loop
  std::vector<float> x(std::size_t(rows) * in), w(std::size_t(out) * in);
  for (auto& v : x) v = u(rng);
  for (auto& v : w) v = u(rng) / std::sqrt(float(in));
  x[0] = 1.0f + 0x1.0p-8f;      // halfway between 1 and 1 + 2^-7: ties go to even (1)
  x[1] = 1.0f + 3 * 0x1.0p-8f;  // halfway between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6)

  float *dx = upload(x), *dw = upload(w), *dy = nullptr;
  cuda::bf16_bits *dx16 = nullptr, *dw16 = nullptr;
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dx16), x.size() * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dw16), w.size() * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dy), std::size_t(rows) * out * 4) == cudaSuccess);
  cuda::to_bf16(dx16, dx, x.size(), nullptr);
  cuda::to_bf16(dw16, dw, w.size(), nullptr);
  const auto x16 = download(dx16, x.size());
  std::size_t mismatches = 0, too_far = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    mismatches += x16[i] != float_to_bf16(x[i]);
    // bf16 keeps 8 significant bits: relative rounding error at most 2^-8.
    too_far += std::fabs(bf16_to_float(x16[i]) - x[i]) > std::fabs(x[i]) * 0x1.0p-8f;
  }
  CHECK(mismatches == 0);
  CHECK(too_far == 0);
  CHECK(x16[0] == 0x3F80);
  CHECK(x16[1] == 0x3F82);

  cublasHandle_t h;
  REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
  cuda::matmul_bf16(dy, dx16, dw16, rows, in, out, h, nullptr);
  const auto y = download(dy, std::size_t(rows) * out);
  // Reference: the CPU matmul on the same bf16-rounded inputs, so only accumulation order differs.
  std::vector<float> xr(x.size()), wr(w.size()), ref(y.size());
  const auto w16 = download(dw16, w.size());
  for (std::size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_float(x16[i]);
  for (std::size_t i = 0; i < w.size(); ++i) wr[i] = bf16_to_float(w16[i]);
  cpu::matmul(ref.data(), xr.data(), wr.data(), rows, in, out);
  double max_err = 0;
  for (std::size_t i = 0; i < y.size(); ++i) max_err = std::max(max_err, double(std::fabs(y[i] - ref[i])));
  INFO("matmul_bf16 max abs error vs CPU fp32 on bf16 inputs: " << max_err);
  CHECK(max_err < 1e-4);
  cublasDestroy(h);
  for (void* p : {static_cast<void*>(dx), static_cast<void*>(dw), static_cast<void*>(dy), static_cast<void*>(dx16),
                  static_cast<void*>(dw16)})
    cudaFree(p);
}

TEST_CASE("cuda gemv_bf16 and gemv_f16 match the CPU matmul on 16-bit weights, with and without accumulation "
          "the fused RMSNorm and a 16-bit x",
          "[cuda][bf16]") {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // Vector and scalar paths; odd row counts (version 3's last warp has one row); 11008 (the
  // llama2-7b hidden size) is not a multiple of versions 2-3's 32 x 4 vectors a step.
  for (cuda::DType type : {cuda::DType::bf16, cuda::DType::f16})
  for (auto [in, out] : {std::pair{1024, 1031}, std::pair{577, 130}, std::pair{4096, 96}, std::pair{11008, 67}}) {
    INFO(cuda::dtype_name(type) << " in=" << in << " out=" << out);
    std::vector<float> x(in), w(std::size_t(out) * in), y0(out), g(in);
    for (auto& v : x) v = u(rng);
    for (auto& v : g) v = 1.0f + 0.5f * u(rng);
    for (auto& v : w) v = u(rng) / std::sqrt(float(in));
    for (auto& v : y0) v = u(rng);
    float *dx = upload(x), *dw = upload(w), *dy = upload(y0), *dg = upload(g);
    cuda::bf16_bits* dw16 = nullptr;
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dw16), w.size() * 2) == cudaSuccess);
    if (type == cuda::DType::bf16) cuda::to_bf16(dw16, dw, w.size(), nullptr);
    else cuda::cast_from_float(dw16, dw, w.size(), type, nullptr);
    std::vector<float> wr(w.size()), ref(out);
    if (type == cuda::DType::bf16) {
      const auto w16 = download(dw16, w.size());
      for (std::size_t i = 0; i < w.size(); ++i) wr[i] = bf16_to_float(w16[i]);
    } else {  // the weights as the device holds them, back through the fp16 cast
      cuda::cast_to_float(dw, dw16, w.size(), type, nullptr);
      wr = download(dw, w.size());
    }
    cpu::matmul(ref.data(), x.data(), wr.data(), 1, in, out);
    // The fused norm's reference: the CPU rmsnorm, then the same product.
    constexpr float eps = 1e-5f;
    std::vector<float> xn(in), ref_norm(out);
    cpu::rmsnorm(xn.data(), x.data(), g.data(), 1, in, eps);
    cpu::matmul(ref_norm.data(), xn.data(), wr.data(), 1, in, out);
    for (int version = 1; version <= cuda::kGemvVersionsAll; ++version)
      for (bool accumulate : {true, false})
        for (bool norm : {false, true}) {
          INFO("version " << version << " accumulate=" << accumulate << " norm=" << norm);
          REQUIRE(cudaMemcpy(dy, y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
          const float* nw = norm ? dg : nullptr;
          if (type == cuda::DType::bf16) cuda::gemv_bf16(dy, dx, dw16, in, out, accumulate, nullptr, version, nw, eps);
          else cuda::gemv_f16(dy, dx, dw16, in, out, accumulate, nullptr, version, nw, eps);
          const auto y = download(dy, std::size_t(out));
          // With an L2 prefetch of another range as the blocks finish (cuda_l2_prefetch): a hint,
          // the same bits. The range: more 16 KB pieces than blocks, a length not a multiple of 16.
          REQUIRE(cudaMemcpy(dy, y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
          const cuda::L2Prefetch next{dw, w.size() * sizeof(float) - 6};
          if (type == cuda::DType::bf16) cuda::gemv_bf16(dy, dx, dw16, in, out, accumulate, nullptr, version, nw, eps, next);
          else cuda::gemv_f16(dy, dx, dw16, in, out, accumulate, nullptr, version, nw, eps, next);
          CHECK(download(dy, std::size_t(out)) == y);
          const std::vector<float>& r = norm ? ref_norm : ref;
          double max_err = 0;
          for (int o = 0; o < out; ++o) {
            const double want = r[std::size_t(o)] + (accumulate ? y0[std::size_t(o)] : 0.0);
            max_err = std::max(max_err, std::fabs(y[std::size_t(o)] - want));
          }
          INFO("max abs error " << max_err);
          CHECK(max_err < 1e-4);
        }
    // x in the weights' 16-bit type (the attention output into the output projection): the
    // reference multiplies the rounded x.
    cuda::bf16_bits* dx16 = nullptr;
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dx16), x.size() * 2) == cudaSuccess);
    if (type == cuda::DType::bf16) cuda::to_bf16(dx16, dx, x.size(), nullptr);
    else cuda::cast_from_float(dx16, dx, x.size(), type, nullptr);
    float* dxr = nullptr;
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dxr), x.size() * 4) == cudaSuccess);
    cuda::cast_to_float(dxr, dx16, x.size(), type, nullptr);
    const std::vector<float> xr = download(dxr, x.size());
    std::vector<float> ref16(out);
    cpu::matmul(ref16.data(), xr.data(), wr.data(), 1, in, out);
    if (in % 8 == 0)
      for (int version = 1; version <= cuda::kGemvVersionsAll; ++version) {
        INFO("x16 version " << version);
        REQUIRE(cudaMemcpy(dy, y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
        if (type == cuda::DType::bf16) cuda::gemv_bf16_x16(dy, dx16, dw16, in, out, true, nullptr, version);
        else cuda::gemv_f16_x16(dy, dx16, dw16, in, out, true, nullptr, version);
        const auto y = download(dy, std::size_t(out));
        REQUIRE(cudaMemcpy(dy, y0.data(), y0.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
        const cuda::L2Prefetch next{dw, w.size() * sizeof(float)};
        if (type == cuda::DType::bf16) cuda::gemv_bf16_x16(dy, dx16, dw16, in, out, true, nullptr, version, next);
        else cuda::gemv_f16_x16(dy, dx16, dw16, in, out, true, nullptr, version, next);
        CHECK(download(dy, std::size_t(out)) == y);  // the prefetch changes no bit
        double max_err = 0;
        for (int o = 0; o < out; ++o)
          max_err = std::max(max_err, (double)std::fabs(y[std::size_t(o)] - (ref16[std::size_t(o)] + y0[std::size_t(o)])));
        INFO("max abs error " << max_err);
        CHECK(max_err < 1e-4);
      }
    CHECK_THROWS_WITH(cuda::gemv_bf16(dy, dx, dw16, in, out, false, nullptr, 2, nullptr, 0.0f,
                                      cuda::L2Prefetch{reinterpret_cast<const char*>(dw) + 4, 64}),
                      Catch::Contains("16-byte aligned"));
    for (void* p : {static_cast<void*>(dx), static_cast<void*>(dw), static_cast<void*>(dy), static_cast<void*>(dw16),
                    static_cast<void*>(dg), static_cast<void*>(dx16), static_cast<void*>(dxr)})
      cudaFree(p);
  }
}

TEST_CASE("cuda gemv_swiglu (gate/up GEMV with the SwiGLU epilogue) matches the CPU, with and without the fused "
          "RMSNorm",
          "[cuda][bf16]") {
  std::mt19937 rng(8);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  constexpr float eps = 1e-5f;
  for (cuda::DType type : {cuda::DType::bf16, cuda::DType::f16})
    for (auto [in, hidden] : {std::pair{1024, 1031}, std::pair{576, 1536}, std::pair{4096, 2000}}) {
      INFO(cuda::dtype_name(type) << " in=" << in << " hidden=" << hidden);
      std::vector<float> x(in), g(in), w(std::size_t(2) * hidden * in);
      for (auto& v : x) v = u(rng);
      for (auto& v : g) v = 1.0f + 0.5f * u(rng);
      for (auto& v : w) v = 2.0f * u(rng) / std::sqrt(float(in));
      float *dx = upload(x), *dg = upload(g), *dw = upload(w), *dh = nullptr, *dgu = nullptr, *dh2 = nullptr;
      cuda::bf16_bits* dw16 = nullptr;
      REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dw16), w.size() * 2) == cudaSuccess);
      REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dh), std::size_t(hidden) * 4) == cudaSuccess);
      REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dh2), std::size_t(hidden) * 4) == cudaSuccess);
      REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dgu), std::size_t(2) * hidden * 4) == cudaSuccess);
      if (type == cuda::DType::bf16) cuda::to_bf16(dw16, dw, w.size(), nullptr);
      else cuda::cast_from_float(dw16, dw, w.size(), type, nullptr);
      cuda::cast_to_float(dw, dw16, w.size(), type, nullptr);  // the weights as the device holds them
      const std::vector<float> wr = download(dw, w.size());
      for (bool norm : {false, true}) {
        INFO("norm=" << norm);
        std::vector<float> xn = x, gu(std::size_t(2) * hidden);
        if (norm) cpu::rmsnorm(xn.data(), x.data(), g.data(), 1, in, eps);
        cpu::matmul(gu.data(), xn.data(), wr.data(), 1, in, 2 * hidden);
        cpu::swiglu(gu.data(), gu.data() + hidden, std::size_t(hidden));  // gate[j] = silu(gate[j]) * up[j]
        const float* nw = norm ? dg : nullptr;
        if (type == cuda::DType::bf16) {
          cuda::gemv_swiglu_bf16(dh, dx, dw16, in, hidden, nullptr, nw, eps);
          cuda::gemv_bf16(dgu, dx, dw16, in, 2 * hidden, false, nullptr, 6, nw, eps);
        } else {
          cuda::gemv_swiglu_f16(dh, dx, dw16, in, hidden, nullptr, nw, eps);
          cuda::gemv_f16(dgu, dx, dw16, in, 2 * hidden, false, nullptr, 6, nw, eps);
        }
        cuda::swiglu_rows(dh2, dgu, 1, hidden, nullptr);  // the two launches it replaces
        const auto h = download(dh, std::size_t(hidden)), h2 = download(dh2, std::size_t(hidden));
        const cuda::L2Prefetch next{dw, w.size() * sizeof(float)};  // a hint: the same bits
        if (type == cuda::DType::bf16) cuda::gemv_swiglu_bf16(dh2, dx, dw16, in, hidden, nullptr, nw, eps, next);
        else cuda::gemv_swiglu_f16(dh2, dx, dw16, in, hidden, nullptr, nw, eps, next);
        CHECK(download(dh2, std::size_t(hidden)) == h);
        double err_cpu = 0, err_pair = 0;
        for (int j = 0; j < hidden; ++j) {
          err_cpu = std::max(err_cpu, double(std::fabs(h[std::size_t(j)] - gu[std::size_t(j)])));
          err_pair = std::max(err_pair, double(std::fabs(h[std::size_t(j)] - h2[std::size_t(j)])));
        }
        INFO("max abs error vs CPU " << err_cpu << ", vs gemv v6 + swiglu_rows " << err_pair);
        CHECK(err_cpu < 1e-4);
        CHECK(err_pair < 1e-6);
        // Versions 2-5 (each gate/up pair split over several warps): against the CPU alike.
        for (int version = 2; version <= cuda::kEpilogueVersions; ++version) {
          if (type == cuda::DType::bf16)
            cuda::gemv_swiglu_bf16(dh2, dx, dw16, in, hidden, nullptr, nw, eps, {}, version);
          else cuda::gemv_swiglu_f16(dh2, dx, dw16, in, hidden, nullptr, nw, eps, {}, version);
          const auto hv = download(dh2, std::size_t(hidden));
          double err_v = 0;
          for (int j = 0; j < hidden; ++j)
            err_v = std::max(err_v, double(std::fabs(hv[std::size_t(j)] - gu[std::size_t(j)])));
          INFO("version " << version << ": max abs error vs CPU " << err_v);
          CHECK(err_v < 1e-4);
        }
      }
      for (void* p : {static_cast<void*>(dx), static_cast<void*>(dg), static_cast<void*>(dw), static_cast<void*>(dh),
                      static_cast<void*>(dh2), static_cast<void*>(dgu), static_cast<void*>(dw16)})
        cudaFree(p);
    }
}

// The fused QKV projection (RoPE and the K/V store as the GEMV's epilogue) against the two
// launches it replaces, gemv version 3 into an fp32 row and rope_store_qkv (itself tested bit for
// bit against rope, kv_write and cast_from_float): the same bits in q16 and both pools. Also with
// Q/K/V biases and a RoPE frequency table (Qwen2, scaled RoPE), given to both.
TEST_CASE("cuda gemv_qkv_rope equals gemv version 3 then rope_store_qkv, bit for bit (versions 2-5: to 16-bit rounding)",
          "[cuda][bf16]") {
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  constexpr float eps = 1e-5f;
  for (cuda::DType type : {cuda::DType::bf16, cuda::DType::f16})
    for (auto [in, n_heads, n_kv_heads, hd] :
         {std::tuple{576, 9, 3, 64}, std::tuple{1024, 8, 2, 64}, std::tuple{512, 4, 4, 128}, std::tuple{4096, 32, 32, 128}})
      for (auto [norm, extras] : {std::pair{false, false}, std::pair{true, false}, std::pair{true, true}}) {
        INFO(cuda::dtype_name(type) << " in=" << in << " heads " << n_heads << "/" << n_kv_heads << " head_dim " << hd
                                    << " norm=" << norm << " bias and frequency table=" << extras);
        const int q_dim = n_heads * hd, kv_dim = n_kv_heads * hd, out = q_dim + 2 * kv_dim;
        std::vector<float> x(in), g(in), w(std::size_t(out) * in), bias(static_cast<std::size_t>(out)),
            table(static_cast<std::size_t>(hd / 2));
        for (auto& v : x) v = u(rng);
        for (auto& v : g) v = 1.0f + 0.5f * u(rng);
        for (auto& v : w) v = u(rng) / std::sqrt(float(in));
        for (auto& v : bias) v = u(rng);
        for (std::size_t i = 0; i < table.size(); ++i)
          table[i] = std::pow(10000.0f, -2.0f * float(i) / float(hd)) / (1 + float(i % 3));  // some pairs scaled
        float *dbias = upload(bias), *dtable = upload(table);
        const float* bias_ptr = extras ? dbias : nullptr;
        const cuda::RopeFreq freq = extras ? cuda::RopeFreq{10000.0f, dtable} : cuda::RopeFreq{10000.0f};
        const int position = 777;
        const std::int64_t slot = std::int64_t(5) * kv_dim;  // token slot 5 of an 8-token pool
        const std::size_t pool = std::size_t(8) * kv_dim;
        float *dx = upload(x), *dg = upload(g), *dw = upload(w), *dqkv = nullptr;
        int* dpos = upload(std::vector<int>{position});
        std::int64_t* doff = upload(std::vector<std::int64_t>{slot});
        cuda::bf16_bits* dw16 = nullptr;
        REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dw16), w.size() * 2) == cudaSuccess);
        REQUIRE(cudaMalloc(reinterpret_cast<void**>(&dqkv), std::size_t(out) * 4) == cudaSuccess);
        if (type == cuda::DType::bf16) cuda::to_bf16(dw16, dw, w.size(), nullptr);
        else cuda::cast_from_float(dw16, dw, w.size(), type, nullptr);
        std::vector<std::uint16_t> zeros_pool(pool, 0), zeros_q(std::size_t(out), 0);
        std::uint16_t *k1 = upload(zeros_pool), *v1 = upload(zeros_pool), *q1 = upload(zeros_q);
        std::uint16_t *k2 = upload(zeros_pool), *v2 = upload(zeros_pool), *q2 = upload(zeros_q);
        const float* nw = norm ? dg : nullptr;
        // The pair of launches it replaces.
        if (type == cuda::DType::bf16) cuda::gemv_bf16(dqkv, dx, dw16, in, out, false, nullptr, 3, nw, eps);
        else cuda::gemv_f16(dqkv, dx, dw16, in, out, false, nullptr, 3, nw, eps);
        cuda::rope_store_qkv(dqkv, 1, 1, n_heads, n_kv_heads, hd, dpos, freq, k1, v1, doff, q1, type, nullptr, {},
                             bias_ptr);
        // The fused one, with an L2 prefetch riding along (a hint).
        const cuda::L2Prefetch next{dw, w.size() * sizeof(float)};
        if (type == cuda::DType::bf16)
          cuda::gemv_qkv_rope_bf16(dx, dw16, in, n_heads, n_kv_heads, hd, dpos, freq, k2, v2, doff, q2, nullptr, nw,
                                   eps, next, 1, bias_ptr);
        else
          cuda::gemv_qkv_rope_f16(dx, dw16, in, n_heads, n_kv_heads, hd, dpos, freq, k2, v2, doff, q2, nullptr, nw,
                                  eps, next, 1, bias_ptr);
        REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
        const auto qa = download(q1, std::size_t(out)), qb = download(q2, std::size_t(out));
        int q_mismatch = 0;
        for (int j = 0; j < q_dim; ++j) q_mismatch += qa[std::size_t(j)] != qb[std::size_t(j)];
        CHECK(q_mismatch == 0);
        CHECK(download(k1, pool) == download(k2, pool));
        CHECK(download(v1, pool) == download(v2, pool));
        const auto kb = download(k2, pool);
        int stored = 0;  // the slot was written (the product is not all zeros)
        for (int j = 0; j < kv_dim; ++j) stored += kb[std::size_t(slot) + j] != 0;
        CHECK(stored > kv_dim / 2);
        // Versions 2-5 (each RoPE pair's rows split over several warps) sum in another order:
        // the same values up to the 16-bit rounding of their output (one unit in the last place).
        for (int version = 2; version <= cuda::kEpilogueVersions; ++version) {
          INFO("version " << version);
          std::uint16_t *k3 = upload(zeros_pool), *v3 = upload(zeros_pool), *q3 = upload(zeros_q);
          if (type == cuda::DType::bf16)
            cuda::gemv_qkv_rope_bf16(dx, dw16, in, n_heads, n_kv_heads, hd, dpos, freq, k3, v3, doff, q3, nullptr,
                                     nw, eps, {}, version, bias_ptr);
          else
            cuda::gemv_qkv_rope_f16(dx, dw16, in, n_heads, n_kv_heads, hd, dpos, freq, k3, v3, doff, q3, nullptr, nw,
                                    eps, {}, version, bias_ptr);
          REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
          const auto value = [&](std::uint16_t b) { return type == cuda::DType::bf16 ? bf16_to_float(b) : fp16_to_float(b); };
          const auto near = [&](const std::vector<std::uint16_t>& a, const std::vector<std::uint16_t>& b, std::size_t from,
                                std::size_t n) {
            int far = 0;
            for (std::size_t j = from; j < from + n; ++j)
              far += !(std::fabs(value(a[j]) - value(b[j])) <= 0.01f * std::fabs(value(a[j])) + 1e-4f);
            return far;
          };
          CHECK(near(qa, download(q3, std::size_t(out)), 0, std::size_t(q_dim)) == 0);
          CHECK(near(download(k1, pool), download(k3, pool), std::size_t(slot), std::size_t(kv_dim)) == 0);
          CHECK(near(download(v1, pool), download(v3, pool), std::size_t(slot), std::size_t(kv_dim)) == 0);
          for (void* p : {static_cast<void*>(k3), static_cast<void*>(v3), static_cast<void*>(q3)}) cudaFree(p);
        }
        for (void* p : {static_cast<void*>(dx), static_cast<void*>(dg), static_cast<void*>(dw), static_cast<void*>(dqkv),
                        static_cast<void*>(dpos), static_cast<void*>(doff), static_cast<void*>(dw16),
                        static_cast<void*>(k1), static_cast<void*>(v1), static_cast<void*>(q1), static_cast<void*>(k2),
                        static_cast<void*>(v2), static_cast<void*>(q2), static_cast<void*>(dbias),
                        static_cast<void*>(dtable)})
          cudaFree(p);
      }
}
