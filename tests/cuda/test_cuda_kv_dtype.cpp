// kv.dtype on the CUDA backend, independent of the weights' dtype: the KV writes give the bytes of
// the CPU's conversions (cpu::kv_encode), the decode kernels read fp8 / the other 16-bit type as
// exactly as their own, and whole forward passes agree with the CPU backend at the same dtype and
// kv.dtype for every attention kernel and both KV layouts.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/cuda_backend.hpp"
#include "base/paths.hpp"
#include "cpu/half.hpp"
#include "cpu/kv_format.hpp"
#include "cpu/quant.hpp"
#include "cuda/kernels.cuh"
#include "device.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "model/weights.hpp"
#include "sched/continuous_scheduler.hpp"
#include "speculative/no_drafter.hpp"
#include "../support.hpp"
#include "backend_support.hpp"

using namespace ablate;

namespace {

using test::attention_named;
using test::cache_for;
using test::ragged_steps_logits;

using test::Dev;
using test::ok;

KvDtype kv_dtype_of(cuda::KvElem e) {
  switch (e) {
    case cuda::KvElem::f32: return KvDtype::fp32;
    case cuda::KvElem::bf16: return KvDtype::bf16;
    case cuda::KvElem::f16: return KvDtype::fp16;
    case cuda::KvElem::fp8_e4m3: return KvDtype::fp8_e4m3;
  }
  return KvDtype::fp32;
}

// Values that exercise every rounding path: normal(0, s) at scales from fp8's subnormals to past
// its saturation (448) and fp16's (65504), and exact ties of each format.
std::vector<float> awkward_values(std::mt19937& rng, std::size_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float scales[] = {1e-3f, 2e-2f, 1.0f, 30.0f, 400.0f, 1e5f};
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = nd(rng) * scales[i % 6];
  const float ties[] = {448.0f, 464.0f, 480.0f, -1000.0f, 0x1p-10f, 3 * 0x1p-10f, 5 * 0x1p-10f, 0x1p-6f * 1.0625f,
                        1.0625f, 1.1875f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 65520.0f, 0.0f, -0.0f};
  for (std::size_t i = 0; i < std::size(ties) && i < n; ++i) v[i] = ties[i];
  return v;
}

}  // namespace

TEST_CASE("cuda kv_write and rope_store_qkv give cpu::kv_encode's bytes for every KV element type",
          "[.][cuda][kv_dtype]") {
  std::mt19937 rng(20);
  const int rows = 5, n = 384;  // kv_write is element-wise: any row length
  const std::vector<float> src = awkward_values(rng, std::size_t(rows) * n);
  Dev<float> d_src(src);
  std::vector<std::int64_t> off(rows);
  for (int r = 0; r < rows; ++r) off[std::size_t(r)] = std::int64_t(rows - 1 - r) * n;  // reversed slots
  Dev<std::int64_t> d_off(off);
  for (auto elem : {cuda::KvElem::f32, cuda::KvElem::bf16, cuda::KvElem::f16, cuda::KvElem::fp8_e4m3}) {
    INFO(cuda::kv_elem_name(elem));
    const std::size_t eb = cuda::kv_elem_bytes(elem);
    CHECK(eb == kv_dtype_bytes(kv_dtype_of(elem)));
    Dev<unsigned char> pool(std::size_t(rows) * n * eb);
    cuda::kv_write(pool.ptr, d_off.ptr, d_src.ptr, n, rows, n, elem, nullptr);
    ok(cudaGetLastError());
    const std::vector<unsigned char> got = pool.host();
    std::vector<unsigned char> want(got.size());
    for (int r = 0; r < rows; ++r)
      cpu::kv_encode(kv_dtype_of(elem), src.data() + std::size_t(r) * n, 1, n, want.data() + std::size_t(off[std::size_t(r)]) * eb,
                     nullptr);
    int differ = 0;
    for (std::size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i];
    CHECK(differ == 0);
    // And back: kv_gather_f32 (naive attention) gives cpu::kv_decode_one's values, kv_gather_16
    // (the flash prefill's copy) those rounded to the 16-bit type (exact from fp8 or the same type).
    Dev<std::int32_t> page0(std::vector<std::int32_t>{0});  // one page of `rows` tokens
    Dev<float> back(std::size_t(rows) * n);
    cuda::kv_gather_f32(back.ptr, pool.ptr, page0.ptr, rows, rows, n, elem, nullptr);
    ok(cudaGetLastError());
    const std::vector<float> widened = back.host();
    int wrong = 0;
    for (std::size_t i = 0; i < widened.size(); ++i) {
      const float v = cpu::kv_decode_one(kv_dtype_of(elem), want.data(), i, nullptr, 0);
      wrong += !(widened[i] == v || (std::isnan(v) && std::isnan(widened[i])));
    }
    CHECK(wrong == 0);
    for (cuda::DType t : {cuda::DType::bf16, cuda::DType::f16}) {
      INFO("kv_gather_16 into " << cuda::dtype_name(t));
      Dev<std::uint16_t> back16(std::size_t(rows) * n);
      cuda::kv_gather_16(back16.ptr, t, pool.ptr, page0.ptr, rows, rows, n, elem, nullptr);
      ok(cudaGetLastError());
      const std::vector<std::uint16_t> bits = back16.host();
      int wrong16 = 0;
      for (std::size_t i = 0; i < bits.size(); ++i) {
        const float v = cpu::kv_decode_one(kv_dtype_of(elem), want.data(), i, nullptr, 0);
        wrong16 += bits[i] != (t == cuda::DType::bf16 ? cpu::to_bf16(v).bits : cpu::to_half(v).bits);
      }
      CHECK(wrong16 == 0);
    }
  }
  // rope_store_qkv with K/V of another type than the query's: the bits of rope() + kv_write().
  const int n_heads = 4, n_kv_heads = 2, hd = 64, q_dim = n_heads * hd, kv_dim = n_kv_heads * hd;
  const int row_dim = q_dim + 2 * kv_dim;
  std::vector<float> qkv = test::random_vec(std::size_t(rows) * row_dim, rng, -300.0f, 300.0f);
  std::vector<int> pos(rows);
  std::iota(pos.begin(), pos.end(), 3);
  Dev<int> d_pos(pos);
  std::vector<std::int64_t> slots(rows);
  for (int r = 0; r < rows; ++r) slots[std::size_t(r)] = std::int64_t(r) * kv_dim;
  Dev<std::int64_t> d_slots(slots);
  for (cuda::DType t : {cuda::DType::bf16, cuda::DType::f16})
    for (auto elem : {cuda::KvElem::fp8_e4m3, cuda::KvElem::bf16, cuda::KvElem::f16}) {
      INFO(cuda::dtype_name(t) << " query, " << cuda::kv_elem_name(elem) << " K/V");
      const std::size_t eb = cuda::kv_elem_bytes(elem), pool_bytes = std::size_t(rows) * kv_dim * eb;
      Dev<float> a(qkv), b(qkv);
      Dev<unsigned char> k1(pool_bytes), v1(pool_bytes), k2(pool_bytes), v2(pool_bytes);
      Dev<std::uint16_t> q2(std::size_t(rows) * row_dim);
      cuda::rope(a.ptr, rows, row_dim, n_heads + n_kv_heads, hd, d_pos.ptr, 10000.0f, nullptr);
      cuda::kv_write(k1.ptr, d_slots.ptr, a.ptr + q_dim, row_dim, rows, kv_dim, elem, nullptr);
      cuda::kv_write(v1.ptr, d_slots.ptr, a.ptr + q_dim + kv_dim, row_dim, rows, kv_dim, elem, nullptr);
      cuda::rope_store_qkv(b.ptr, rows, rows, n_heads, n_kv_heads, hd, d_pos.ptr, 10000.0f, k2.ptr, v2.ptr, d_slots.ptr,
                           q2.ptr, t, nullptr, {}, nullptr, elem);
      ok(cudaGetLastError());
      CHECK(k1.host() == k2.host());
      CHECK(v1.host() == v2.host());
    }
}

// The decode kernels widen K/V to fp32 as they load them, so K/V values that fp8 e4m3, bf16 and
// fp16 all hold exactly (fp8 values: 4 significant bits, |x| <= 448, multiples of 2^-9) give the
// same output bits from pools of any of the three types: every K/V type is tied to the query
// type's own, which test_cuda_kernels checks against the CPU reference.
TEST_CASE("cuda decode kernels read fp8_e4m3 and the other 16-bit K/V as exactly as their own", "[.][cuda][kv_dtype]") {
  std::mt19937 rng(21);
  const int n_heads = 8, n_kv_heads = 2, page_size = 16;
  for (int hd : {64, 128}) {
    const int ts = n_kv_heads * hd;
    // Two sequences: 300 tokens with 1 query, 77 with 3 (verification), pages shuffled.
    const int lens[] = {300, 77}, nqs[] = {1, 3};
    std::vector<int> first_page;
    int n_pages = 0;
    for (int len : lens) first_page.push_back(n_pages), n_pages += (len + page_size - 1) / page_size;
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n_pages));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    const std::size_t pool_n = std::size_t(n_pages) * page_size * ts;
    // K/V values from fp8: random, encoded, decoded.
    std::vector<float> kv_vals(2 * pool_n);
    {
      const std::vector<float> raw = test::random_vec(kv_vals.size(), rng, -6.0f, 6.0f);
      for (std::size_t i = 0; i < raw.size(); ++i) kv_vals[i] = cpu::to_float(cpu::to_fp8_e4m3(raw[i]));
    }
    const auto encode = [&](cuda::KvElem e, std::size_t at) {
      std::vector<unsigned char> bytes(pool_n * cuda::kv_elem_bytes(e));
      cpu::kv_encode(kv_dtype_of(e), kv_vals.data() + at, 1, int(pool_n), bytes.data(), nullptr);
      return bytes;
    };
    const int rows = nqs[0] + nqs[1];
    const int q_stride = n_heads * hd;
    const std::vector<float> qf = test::random_vec(std::size_t(rows) * q_stride, rng, -2.0f, 2.0f);
    Dev<std::int32_t> d_pages(perm);
    for (cuda::DType t : {cuda::DType::bf16, cuda::DType::f16}) {
      std::vector<std::uint16_t> q16(qf.size());
      for (std::size_t i = 0; i < qf.size(); ++i)
        q16[i] = t == cuda::DType::bf16 ? cpu::to_bf16(qf[i]).bits : cpu::to_half(qf[i]).bits;
      Dev<std::uint16_t> d_q(q16);
      // outputs[kernel] per K/V type; kernels: decode v1..v4, split (3 splits) v1..v4, planned v2..v4 unsplit and split.
      std::vector<std::vector<std::vector<std::uint16_t>>> outputs;
      for (auto elem : {cuda::kv_elem_of(t), cuda::KvElem::fp8_e4m3, t == cuda::DType::bf16 ? cuda::KvElem::f16 : cuda::KvElem::bf16}) {
        Dev<unsigned char> d_k(encode(elem, 0)), d_v(encode(elem, pool_n));
        std::vector<AttentionProblem> problems;
        for (int s = 0, row = 0; s < 2; row += nqs[s], ++s) {
          AttentionProblem p;
          p.n_q = nqs[s];
          p.q_pos0 = lens[s] - nqs[s];
          p.n_heads = n_heads;
          p.n_kv_heads = n_kv_heads;
          p.head_dim = hd;
          p.scale = 1.0f / std::sqrt(float(hd));
          p.q_stride = q_stride;
          p.out_stride = q_stride;
          p.kv.k_pool = reinterpret_cast<const float*>(d_k.ptr);
          p.kv.v_pool = reinterpret_cast<const float*>(d_v.ptr);
          p.kv.indices = d_pages.ptr + first_page[std::size_t(s)];
          p.kv.num_pages = (lens[s] + page_size - 1) / page_size;
          p.kv.page_size = page_size;
          p.kv.length = lens[s];
          p.kv.token_stride = ts;
          p.q = reinterpret_cast<const float*>(d_q.ptr + std::size_t(row) * q_stride);
          problems.push_back(p);
        }
        std::vector<std::vector<std::uint16_t>> outs;
        const auto run = [&](auto&& launch) {
          Dev<std::uint16_t> d_out(std::size_t(rows) * q_stride);
          std::vector<AttentionProblem> ps = problems;
          for (int s = 0, row = 0; s < 2; row += nqs[s], ++s)
            ps[std::size_t(s)].out = reinterpret_cast<float*>(d_out.ptr + std::size_t(row) * q_stride);
          launch(ps);
          ok(cudaGetLastError());
          outs.push_back(d_out.host());
        };
        const std::size_t wsb = cuda::attention_flash_split_workspace_bytes(problems, 3);
        Dev<float> ws(std::max<std::size_t>(wsb / sizeof(float), 1) * 4);
        for (int v = 1; v <= cuda::kDecodeVersions; ++v) {
          run([&](auto& ps) { cuda::attention_flash_decode(ps, t, nullptr, v, elem); });
          run([&](auto& ps) { cuda::attention_flash_split(ps, t, ws.ptr, ws.n * sizeof(float), nullptr, 3, v, elem); });
        }
        for (int v = 2; v <= cuda::kDecodeVersions; ++v)
          for (bool split : {false, true})
            run([&](auto& ps) {
              std::vector<int> counts(ps.size(), 1);
              if (split) counts = {3, 2};
              const cuda::DecodePlan plan = cuda::make_decode_plan(ps, counts, t, elem);
              CHECK(plan.kv == elem);
              Dev<unsigned char> dplan(plan.bytes);
              cuda::attention_decode_planned(plan, dplan.ptr, split ? 3 : 1, split, 0, ws.ptr, nullptr, v);
              ok(cudaDeviceSynchronize());
            });
        outputs.push_back(std::move(outs));
      }
      for (std::size_t e = 1; e < outputs.size(); ++e)
        for (std::size_t k = 0; k < outputs[0].size(); ++k) {
          INFO("head_dim " << hd << ", " << cuda::dtype_name(t) << " query, K/V type #" << e << ", kernel run #" << k);
          CHECK(outputs[e][k] == outputs[0][k]);
        }
      // And the outputs are not all zero (the kernels ran).
      CHECK(std::any_of(outputs[0][0].begin(), outputs[0][0].end(), [](std::uint16_t b) { return (b & 0x7fff) != 0; }));
    }
  }
  // fp32 pools cannot feed the 16-bit decode kernels.
  std::vector<AttentionProblem> none;
  CHECK_THROWS_WITH(cuda::make_decode_plan(none, {}, cuda::DType::bf16, cuda::KvElem::f32), Catch::Contains("fp32"));
}

// Forward passes of the CUDA backend against the CPU backend at the same dtype and kv.dtype (the
// CPU stores K/V through cpu::kv_encode and widens them as it reads: the same formats, tested byte
// for byte above). Both have the same rounded weights and the same KV format; what is left is the
// CUDA path's 16-bit activations into its GEMMs (the CPU widens the weights and keeps fp32
// activations) and summation order. For 16-bit K/V the bound is the 16-bit weights test's
// (test_cuda_backend: 0.03 of the largest logit). fp8 K/V amplify such differences: a K/V value
// that the two sides compute a hair apart near an fp8 rounding boundary lands a whole e4m3 step
// (1/8) apart, and that moves every later layer's K/V; on the CPU, bf16 against fp32 weights (a
// perturbation of the same size as the CUDA path's) moved this model's fp8-KV logits by 0.79 of
// what fp8 itself moves them (worst |logit difference| 0.27 against 0.35; 0.06 of the largest
// logit). So with fp8 K/V the bound adds 1.5 x fp8's own effect on the CPU (worst |CPU fp8 K/V -
// CPU K/V in the weights' type|): it catches a wrong page, a missing write or a wrong format
// (tested exactly above), not the chaos of rounding.
TEST_CASE("cuda backend: kv.dtype independent of dtype, logits within tolerance of the CPU's at the same dtype and kv.dtype",
          "[.][cuda][backend][kv_dtype]") {
  const ModelShape shape = *find_preset("smollm2-135m");
  const Weights w = synthetic_weights(shape, 3);
  std::mt19937 rng(8);
  auto ids = [&](int n) {
    std::vector<int> t(static_cast<std::size_t>(n));
    for (int& x : t) x = static_cast<int>(rng() % static_cast<unsigned>(shape.vocab_size));
    return t;
  };
  const auto p0 = ids(42), p1 = ids(23);
  auto steps_logits = [&](Backend& b, const std::string& layout, const std::string& attention) {
    return ragged_steps_logits(b, layout, attention, p0, p1);
  };
  const auto mean_abs = [](const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += std::abs(double(a[i]) - b[i]);
    return s / double(a.size());
  };
  struct Arm {
    const char* dtype;
    const char* kv_dtype;
  };
  const Arm arms[] = {{"bf16", "fp8_e4m3"}, {"bf16", "fp16"}, {"fp16", "fp8_e4m3"}, {"fp16", "bf16"},
                      {"bf16", "fp32"},     {"fp32", "fp8_e4m3"}, {"fp32", "bf16"}};
  for (const Arm& arm : arms) {
    const std::string dtype = arm.dtype, kv_dtype = arm.kv_dtype;
    CpuBackend cpu(synthetic_weights(shape, 3), dtype, kv_dtype);
    const auto want = steps_logits(cpu, "contiguous", "naive");
    float scale = 0;
    for (float v : want) scale = std::max(scale, std::abs(v));
    // fp8's own effect on the CPU: against K/V in the weights' type.
    double fp8_effect = 0;
    if (kv_dtype == "fp8_e4m3") {
      CpuBackend same(synthetic_weights(shape, 3), dtype, dtype);
      const auto other = steps_logits(same, "contiguous", "naive");
      for (std::size_t i = 0; i < want.size(); ++i) fp8_effect = std::max(fp8_effect, double(std::abs(other[i] - want[i])));
      CHECK(fp8_effect > 0);
    }
    CudaBackend gpu(w, {dtype, false, false, false, kv_dtype});
    CHECK(gpu.kv_storage().element_bytes == kv_dtype_bytes(parse_kv_dtype(kv_dtype)));
    CHECK_FALSE(gpu.kv_storage().host_pools);
    for (const std::string attention : {"naive", "flash", "flash_split"}) {
      if (attention != "naive" && (dtype == "fp32" || kv_dtype == "fp32")) {
        // The 16-bit flash kernels: refused with fp32 weights or fp32 K/V (load.cpp says so first).
        auto kv = cache_for(gpu, "paged", 64);
        REQUIRE(kv->admit(0, 4, 1));
        REQUIRE(kv->ensure(0, 4));
        ForwardBatch b;
        b.chunks.push_back({0, 0, std::span<const int>(p0).first(4), false});
        auto att = attention_named(attention);
        CHECK_THROWS_AS(gpu.forward(b, *kv, *att), std::invalid_argument);
        continue;
      }
      for (const std::string layout : {"contiguous", "paged"}) {
        INFO("dtype " << dtype << ", kv.dtype " << kv_dtype << ", " << attention << " on " << layout);
        const auto got = steps_logits(gpu, layout, attention);
        REQUIRE(got.size() == want.size());
        double worst = 0;
        for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
        INFO("worst |gpu - cpu| = " << worst << " of logits up to " << scale << "; fp8's own effect " << fp8_effect
                                          << ", mean |gpu - cpu| " << mean_abs(got, want));
        CHECK(worst <= 0.03 * scale + 1.5 * fp8_effect);
      }
    }
  }
}

// Greedy decoding with fp32 weights (SGEMM: the CPU's arithmetic up to summation order) and 16-bit
// K/V: both sides round the same fp32 K/V (up to an fp32 ulp) by the same rule; the rare value
// that rounds to the neighbouring bf16 / fp16 moves the logits by far less than this real model's
// margins, so the tokens are the CPU's, as for fp32 K/V (test_cuda_backend). Not fp8_e4m3: its
// 1/8 steps amplify summation-order differences up to its own effect on the logits (see above),
// which may flip a close greedy choice; its format is tested exactly above.
TEST_CASE("cuda backend: stories260K greedy tokens equal the CPU's with fp32 weights and bf16 / fp16 K/V",
          "[.][cuda][backend][kv_dtype]") {
  const auto path = std::filesystem::path(expand_path("${shared}/models/stories260K.bin"));
  if (!std::filesystem::exists(path)) {
    WARN("SKIPPED: no " << path.string());
    return;
  }
  const Weights w = load_llama2c(path.string());
  const auto reqs = test::random_requests(11, 6, w.shape.vocab_size, 40, 60);
  for (const std::string kv_dtype : {"bf16", "fp16"}) {
    CpuBackend cpu(load_llama2c(path.string()), "fp32", kv_dtype);
    CudaBackend gpu(w, {"fp32", false, false, false, kv_dtype});
    for (const std::string layout : {"contiguous", "paged"}) {
      INFO("kv.dtype " << kv_dtype << ", layout " << layout);
      const auto run = [&](Backend& b) {
        auto kv = cache_for(b, layout, 128);
        ContinuousScheduler sched(4, 64, ContinuousScheduler::Prefill::Chunked);
        NaiveAttention att;
        NoDrafter drafter;
        return run_engine({b, *kv, sched, att, drafter}, reqs, {}).output_tokens;
      };
      const auto want = run(cpu), got = run(gpu);
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
    }
  }
}

// set_kv_dtype: one loaded model serves the points of a kv.dtype sweep; each point's cache is
// charged at its own element size and its run at that precision.
TEST_CASE("cuda backend: set_kv_dtype switches the pools' type between runs", "[.][cuda][backend][kv_dtype]") {
  const ModelShape shape = *find_preset("smollm2-135m");
  const Weights w = synthetic_weights(shape, 4);
  const auto reqs = test::random_requests(3, 3, shape.vocab_size, 30, 12);
  CudaBackend gpu(w, {"bf16"});
  CHECK(gpu.kv_storage().element_bytes == 2);
  const auto run = [&] {
    auto kv = cache_for(gpu, "paged", 128);
    ContinuousScheduler sched(4, 64, ContinuousScheduler::Prefill::Chunked);
    FlashAttention att;
    NoDrafter drafter;
    return run_engine({gpu, *kv, sched, att, drafter}, reqs, {}).output_tokens;
  };
  const auto bf16 = run();
  gpu.set_kv_dtype("fp8_e4m3");
  CHECK(gpu.kv_storage().element_bytes == 1);
  const auto fp8 = run();
  CudaBackend fresh(w, {"bf16", false, false, false, "fp8_e4m3"});
  gpu.set_kv_dtype("auto");
  CHECK(gpu.kv_storage().element_bytes == 2);
  CHECK(run() == bf16);
  // The switched backend's fp8 run is a fresh fp8 backend's.
  auto kv = cache_for(fresh, "paged", 128);
  ContinuousScheduler sched(4, 64, ContinuousScheduler::Prefill::Chunked);
  FlashAttention att;
  NoDrafter drafter;
  CHECK(run_engine({fresh, *kv, sched, att, drafter}, reqs, {}).output_tokens == fp8);
  CHECK_THROWS_WITH(gpu.set_kv_dtype("int8"), Catch::Contains("allowed: auto, fp32, bf16, fp16, fp8_e4m3"));
}
