// The CUDA backend against the CPU backend: its data-movement kernels against their CPU twins,
// the same greedy tokens for stories260K (fp32), and logits within bf16 tolerance on a synthetic
// SmolLM2-shaped model for every CUDA attention kernel and both KV layouts.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <tuple>
#include <vector>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/cuda_backend.hpp"
#include "base/paths.hpp"
#include "cuda/kernels.cuh"
#include "device.hpp"
#include "engine/engine.hpp"
#include "base/sampler.hpp"
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

// Greedy continuous-batching run (or sampling, with `options`); the outputs of every request.
std::vector<std::vector<int>> greedy_run(Backend& b, const std::string& layout, const std::string& attention,
                                         const std::vector<Request>& reqs, int max_len, EngineOptions options = {}) {
  auto kv = cache_for(b, layout, max_len);
  ContinuousScheduler sched(4, 64, ContinuousScheduler::Prefill::Chunked);
  auto att = attention_named(attention);
  NoDrafter drafter;
  return run_engine({b, *kv, sched, *att, drafter}, reqs, options).output_tokens;
}

// A backend's forward pass with the sampling on the host (Backend's default forward_sample).
struct HostSampling final : Backend {
  Backend& inner;
  explicit HostSampling(Backend& b) : inner(b) {}
  std::string name() const override { return inner.name(); }
  std::string device_name() const override { return inner.device_name(); }
  const ModelShape& shape() const override { return inner.shape(); }
  std::size_t weights_bytes() const override { return inner.weights_bytes(); }
  KvStorage kv_storage() const override { return inner.kv_storage(); }
  const std::vector<float>& forward(const ForwardBatch& b, KvCache& kv, Attention& a) override {
    return inner.forward(b, kv, a);
  }
};

}  // namespace

// The device sampler against the host Sampler on the same logits and uniforms: the same token,
// unless the uniform sits within 1e-9 of the boundary between the two tokens' cumulative masses
// (the device sums in parallel, in another order). Rows: random logits, many exact ties (top-p
// breaks them by id), one dominant token; vocabularies of 1000 and 32000 (llama2-7b's).
TEST_CASE("cuda sample_rows draws the host Sampler's token for the same uniform", "[cuda][sampling]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<double> unif(0.0, 1.0);
  for (int vocab : {1000, 32000}) {
    constexpr int kKinds = 3, kReps = 40;
    std::vector<float> kinds(std::size_t(kKinds) * vocab);
    for (int i = 0; i < vocab; ++i) {
      kinds[std::size_t(i)] = normal(rng);
      kinds[std::size_t(vocab) + i] = std::round(normal(rng) / 2.0f);  // integers: ties everywhere
      kinds[std::size_t(2) * vocab + i] = i == 17 ? 30.0f : normal(rng);
    }
    const int rows = kKinds * kReps;
    std::vector<float> logits(std::size_t(rows) * vocab);
    std::vector<double> u(static_cast<std::size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      std::copy_n(kinds.begin() + std::ptrdiff_t(r % kKinds) * vocab, vocab, logits.begin() + std::ptrdiff_t(r) * vocab);
      u[std::size_t(r)] = r < kKinds ? 0.0 : r < 2 * kKinds ? 1.0 - 0x1.0p-53 : unif(rng);
    }
    Dev<float> d_logits(logits);
    Dev<double> d_u(u);
    Dev<int> d_out(static_cast<std::size_t>(rows));
    for (auto [temperature, top_p] : {std::pair{1.0, 1.0}, {0.7, 0.9}, {1.3, 0.5}, {0.5, 0.05}}) {
      INFO("vocab " << vocab << " temperature " << temperature << " top_p " << top_p);
      const std::size_t wsb = cuda::sample_rows_workspace_bytes(rows, vocab, top_p);
      Dev<unsigned char> ws(wsb);
      cuda::sample_rows(d_logits.ptr, rows, vocab, temperature, top_p, d_u.ptr, d_out.ptr, ws.ptr, wsb, nullptr);
      const std::vector<int> got = d_out.host();
      const Sampler sampler(temperature, top_p);
      int mismatches = 0;
      for (int r = 0; r < rows; ++r) {
        const std::span<const float> row(logits.data() + std::size_t(r) * vocab, std::size_t(vocab));
        const int want = sampler.sample_uniform(row, u[std::size_t(r)]);
        if (got[std::size_t(r)] == want) continue;
        ++mismatches;
        std::vector<float> probs(static_cast<std::size_t>(vocab));
        sampler.probabilities(row, probs);
        double total = 0, boundary = 0;
        for (float p : probs) total += p;
        const int a = std::min(want, got[std::size_t(r)]);
        for (int i = 0; i <= a; ++i) boundary += probs[std::size_t(i)];
        INFO("row " << r << " u " << u[std::size_t(r)] << ": device " << got[std::size_t(r)] << ", host " << want);
        CHECK(std::abs(u[std::size_t(r)] * total - boundary) <= 1e-9 * total);
      }
      CHECK(mismatches <= 2);
    }
  }
  CHECK_THROWS_WITH(cuda::sample_rows(nullptr, 1, 10, 0.0, 1.0, nullptr, nullptr, nullptr, 0, nullptr),
                    Catch::Contains("temperature > 0"));
}

// Through the engine: the CUDA backend sampling on the device gives the tokens that sampling its
// own logits on the host gives (same seed, temperature, top-p), eager and in graphs.
TEST_CASE("cuda backend: sampling on the device gives the host sampler's tokens", "[cuda][backend][sampling]") {
  const ModelShape shape = *find_preset("smollm2-135m");
  const Weights w = synthetic_weights(shape, 5);
  const auto reqs = test::random_requests(13, 6, shape.vocab_size, 20, 40);
  CudaBackend gpu(w, {"bf16"});
  HostSampling host(gpu);
  EngineOptions hot;
  hot.temperature = 0.9;
  hot.top_p = 0.8;
  hot.seed = 3;
  for (bool graphs : {false, true}) {
    INFO("cuda_graphs " << graphs);
    gpu.set_cuda_graphs(graphs);
    const auto want = greedy_run(host, "paged", "flash", reqs, 128, hot);
    const auto got = greedy_run(gpu, "paged", "flash", reqs, 128, hot);
    REQUIRE(got.size() == want.size());
    int differ = 0;
    for (std::size_t i = 0; i < want.size(); ++i) differ += got[i] != want[i];
    CHECK(differ == 0);
    CHECK(got != greedy_run(gpu, "paged", "flash", reqs, 128));  // it did sample
  }
}

TEST_CASE("cuda embed, kv_write and kv_gather_f32 match the CPU's copies and KvSeqView reads", "[cuda][backend]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  const int dim = 40, vocab = 30, rows = 7;
  std::vector<float> table(std::size_t(vocab) * dim);
  for (float& x : table) x = u(rng);
  std::vector<int> tokens{3, 0, 29, 3, 17, 8, 1};
  Dev<float> d_table(table), d_x(std::size_t(rows) * dim);
  Dev<int> d_tokens(tokens);
  cuda::embed(d_x.ptr, d_table.ptr, d_tokens.ptr, rows, dim, nullptr);
  const auto x = d_x.host();
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < dim; ++j) CHECK(x[std::size_t(r) * dim + j] == table[std::size_t(tokens[r]) * dim + j]);

  // K rows written through a paged cache's slot offsets, read back through its view.
  const ModelShape shape = *find_preset("tiny");
  const int kv_dim = shape.kv_dim(), len = 37, stride = kv_dim + 5;
  for (auto elem : {cuda::KvElem::f32, cuda::KvElem::bf16, cuda::KvElem::f16}) {
    DYNAMIC_SECTION("elements " << cuda::kv_elem_name(elem)) {
      PagedKvCache kv(shape, 64 * 4 * std::size_t(shape.kv_floats_per_token()) * 4, 4, 128,
                      PagedKvCache::Admission::OnDemand, {cuda::kv_elem_bytes(elem), false});
      REQUIRE(kv.admit(1, 3, 3));
      REQUIRE(kv.admit(2, 5, 50));
      REQUIRE(kv.ensure(1, 6));
      REQUIRE(kv.ensure(2, len));  // interleaved with sequence 1's blocks
      std::vector<float> src(std::size_t(len) * stride);
      for (float& v : src) v = u(rng);
      const int layer = shape.n_layers - 1;
      std::vector<std::int64_t> offsets(len);
      for (int t = 0; t < len; ++t) offsets[t] = static_cast<std::int64_t>(kv.slot_offset(layer, 2, t));
      Dev<char> pool(kv.pool_elements() * cuda::kv_elem_bytes(elem));
      Dev<float> d_src(src), d_out(std::size_t(len) * kv_dim);
      Dev<std::int64_t> d_off(offsets);
      cuda::kv_write(pool.ptr, d_off.ptr, d_src.ptr, stride, len, kv_dim, elem, nullptr);
      const KvSeqView v = kv.view(layer, 2, len);
      Dev<std::int32_t> d_pages(std::vector<std::int32_t>(v.indices, v.indices + v.num_pages));
      const char* base = pool.ptr + kv.view_offset(layer, 2) * cuda::kv_elem_bytes(elem);
      cuda::kv_gather_f32(d_out.ptr, base, d_pages.ptr, v.page_size, len, kv_dim, elem, nullptr);
      const auto out = d_out.host();
      const float tol = elem == cuda::KvElem::f32 ? 0.0f : elem == cuda::KvElem::bf16 ? 1.0f / 128 : 1.0f / 1024;
      for (int t = 0; t < len; ++t)
        for (int j = 0; j < kv_dim; ++j) {
          const float want = src[std::size_t(t) * stride + j], got = out[std::size_t(t) * kv_dim + j];
          CHECK(std::abs(got - want) <= tol * std::abs(want) + 1e-7f);
        }
    }
  }
}

// The fused kernel against the four it replaces (rope, kv_write of K and V, the 16-bit cast of
// the queries), each of which has its own CPU comparison: equal bit for bit. Rows past
// store_rows (padding rows) are rotated but not stored. With Q/K/V biases and a frequency table
// (Qwen2, scaled RoPE): against add_bias_rows before the four.
TEST_CASE("cuda rope_store_qkv equals rope, two kv_writes and cast_from_float, bit for bit", "[cuda][backend]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  for (bool bias_and_table : {false, true})
  for (cuda::DType type : {cuda::DType::bf16, cuda::DType::f16})
    for (auto [n_heads, n_kv_heads, hd] : {std::tuple{8, 2, 64}, std::tuple{4, 4, 128}, std::tuple{9, 3, 64}}) {
      INFO(cuda::dtype_name(type) << " heads " << n_heads << "/" << n_kv_heads << " head_dim " << hd << " bias and table "
                                  << bias_and_table);
      const int rows = 7, store_rows = 5, q_dim = n_heads * hd, kv_dim = n_kv_heads * hd, row_dim = q_dim + 2 * kv_dim;
      std::vector<float> qkv(std::size_t(rows) * row_dim), bias(static_cast<std::size_t>(row_dim)),
          table(static_cast<std::size_t>(hd / 2));
      for (float& v : qkv) v = u(rng);
      for (float& v : bias) v = u(rng);
      for (std::size_t i = 0; i < table.size(); ++i)
        table[i] = std::pow(10000.0f, -2.0f * float(i) / float(hd)) / (1 + float(i % 3));  // some pairs scaled
      Dev<float> d_bias(bias), d_table(table);
      const float* bias_ptr = bias_and_table ? d_bias.ptr : nullptr;
      const cuda::RopeFreq freq = bias_and_table ? cuda::RopeFreq{10000.0f, d_table.ptr} : cuda::RopeFreq{10000.0f};
      std::vector<int> pos{0, 1, 17, 300, 4095, 5, 9};
      std::vector<std::int64_t> offsets(store_rows);
      std::vector<int> slot{3, 0, 6, 2, 5};  // scattered slots of a 7-token pool
      for (int r = 0; r < store_rows; ++r) offsets[r] = std::int64_t(slot[r]) * kv_dim;
      const std::size_t pool_elems = std::size_t(7) * kv_dim, q16_elems = std::size_t(rows) * row_dim;
      Dev<float> a(qkv), b(qkv);
      Dev<int> d_pos(pos);
      Dev<std::int64_t> d_off(offsets);
      Dev<std::uint16_t> k1(pool_elems), v1(pool_elems), q1(q16_elems), k2(pool_elems), v2(pool_elems), q2(q16_elems);
      const cuda::KvElem elem = type == cuda::DType::bf16 ? cuda::KvElem::bf16 : cuda::KvElem::f16;
      if (bias_ptr) cuda::add_bias_rows(a.ptr, bias_ptr, rows, row_dim, nullptr);
      cuda::rope(a.ptr, rows, row_dim, n_heads + n_kv_heads, hd, d_pos.ptr, freq, nullptr);
      cuda::kv_write(k1.ptr, d_off.ptr, a.ptr + q_dim, row_dim, store_rows, kv_dim, elem, nullptr);
      cuda::kv_write(v1.ptr, d_off.ptr, a.ptr + q_dim + kv_dim, row_dim, store_rows, kv_dim, elem, nullptr);
      cuda::cast_from_float(q1.ptr, a.ptr, std::size_t(store_rows) * row_dim, type, nullptr);
      cuda::rope_store_qkv(b.ptr, rows, store_rows, n_heads, n_kv_heads, hd, d_pos.ptr, freq, k2.ptr, v2.ptr,
                           d_off.ptr, q2.ptr, type, nullptr, {}, bias_ptr);
      CHECK(a.host() == b.host());
      CHECK(k1.host() == k2.host());
      CHECK(v1.host() == v2.host());
      const auto qa = q1.host(), qb = q2.host();
      int q_mismatch = 0;
      for (int r = 0; r < store_rows; ++r)
        for (int j = 0; j < q_dim; ++j) q_mismatch += qa[std::size_t(r) * row_dim + j] != qb[std::size_t(r) * row_dim + j];
      CHECK(q_mismatch == 0);
      // With an L2 prefetch riding along (Hopper; a no-op below): a hint, so the same bits again.
      // The range: more pieces than the grid has threads, and a length that is not a multiple of 16.
      Dev<float> c(qkv);
      Dev<std::uint16_t> k3(pool_elems), v3(pool_elems), q3(q16_elems), ahead(std::size_t(1) << 25);
      cuda::rope_store_qkv(c.ptr, rows, store_rows, n_heads, n_kv_heads, hd, d_pos.ptr, freq, k3.ptr, v3.ptr,
                           d_off.ptr, q3.ptr, type, nullptr, cuda::L2Prefetch{ahead.ptr, (std::size_t(1) << 26) - 6},
                           bias_ptr);
      CHECK(b.host() == c.host());
      CHECK(k2.host() == k3.host());
      CHECK(v2.host() == v3.host());
      CHECK(q2.host() == q3.host());
      CHECK_THROWS_WITH(cuda::rope_store_qkv(c.ptr, rows, store_rows, n_heads, n_kv_heads, hd, d_pos.ptr, 10000.0f,
                                             k3.ptr, v3.ptr, d_off.ptr, q3.ptr, type, nullptr,
                                             cuda::L2Prefetch{ahead.ptr + 1, 64}),
                        Catch::Contains("16-byte aligned"));
    }
}

TEST_CASE("cuda backend: stories260K greedy tokens equal the CPU's (fp32, naive, both layouts)", "[cuda][backend]") {
  const auto path = std::filesystem::path(expand_path("${shared}/models/stories260K.bin"));
  if (!std::filesystem::exists(path)) {
    WARN("SKIPPED: no " << path.string());
    return;
  }
  const Weights w = load_llama2c(path.string());
  const auto reqs = test::random_requests(11, 6, w.shape.vocab_size, 40, 60);
  const int max_len = 128;
  CpuBackend cpu(load_llama2c(path.string()));
  CudaBackend gpu(w, {"fp32"});
  CHECK(gpu.weights_bytes() >= cpu.weights_bytes());
  for (const std::string layout : {"contiguous", "paged"}) {
    INFO("layout " << layout);
    const auto want = greedy_run(cpu, layout, "naive", reqs, max_len);
    const auto got = greedy_run(gpu, layout, "naive", reqs, max_len);
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
  }
  CHECK(gpu.peak_device_bytes() > gpu.weights_bytes());
}

TEST_CASE("cuda backend: logits within 16-bit tolerance of the CPU's (bf16, fp16), every attention kernel, both layouts",
          "[cuda][backend]") {
  const ModelShape shape = *find_preset("smollm2-135m");
  const Weights w = synthetic_weights(shape, 3);
  CpuBackend cpu(synthetic_weights(shape, 3));
  // A ragged batch: a 40-token prompt, then (next step) it decodes one token beside a 3-token
  // verification chunk of another sequence, then it decodes one more alone (batch 1: the fused
  // batch-1 kernels: RMSNorm in the GEMVs, the SwiGLU epilogue, the 16-bit attention output into
  // the output projection); logits of every step's rows.
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
  const auto want = steps_logits(cpu, "contiguous", "naive");
  float scale = 0;
  for (float v : want) scale = std::max(scale, std::abs(v));
  for (const std::string dtype : {"bf16", "fp16"}) {
    CudaBackend gpu(w, {dtype});  // one model, every kernel (as a sweep over attention runs)
    for (const std::string attention : {"naive", "flash", "flash_split"})
      for (const std::string layout : {"contiguous", "paged"}) {
        INFO(dtype << ", " << attention << " on " << layout);
        const auto got = steps_logits(gpu, layout, attention);
        REQUIRE(got.size() == want.size());
        double worst = 0;
        for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(got[i] - want[i])));
        INFO("worst |gpu - cpu| = " << worst << " of logits up to " << scale);
        CHECK(worst <= 0.03 * scale);  // 16-bit weights and KV: about 3 significant digits per product
      }
  }
  // fp32 on the GPU, naive: the CPU's arithmetic up to summation order.
  CudaBackend gpu32(w, {"fp32"});
  const auto got = steps_logits(gpu32, "paged", "naive");
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-3 * scale));
}

// The greedy tokens of `reqs` on the paged cache launched kernel by kernel, then with
// cuda_graphs: graphs captured, most steps (4-row decode steps) replayed, the same tokens.
// Returns the eager tokens.
template <class Reqs>
auto check_graphs_match_eager(CudaBackend& gpu, const std::string& attention, const Reqs& reqs) {
  gpu.set_cuda_graphs(false);
  const auto want = greedy_run(gpu, "paged", attention, reqs, 128);
  gpu.set_cuda_graphs(true);
  const CudaGraphStats before = gpu.graph_stats();
  const auto got = greedy_run(gpu, "paged", attention, reqs, 128);
  const CudaGraphStats after = gpu.graph_stats();
  INFO("replays " << after.replays - before.replays << " of " << after.steps - before.steps << " steps, captures "
                  << after.captures - before.captures);
  CHECK(after.captures - before.captures > 0);
  CHECK(after.replays - before.replays > (after.steps - before.steps) / 4);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
  return want;
}

TEST_CASE("cuda backend: cuda_graphs gives the same greedy tokens as launching kernel by kernel", "[cuda][backend]") {
  // Continuous batching of 6 requests, at most 4 running: prefill steps run eagerly, decode steps
  // of 1..4 rows are captured once per shape and replayed, while lengths, block tables and split
  // counts change under the graphs.
  const ModelShape shape = *find_preset("smollm2-135m");
  const Weights w = synthetic_weights(shape, 5);
  const auto reqs = test::random_requests(12, 6, shape.vocab_size, 20, 80);
  CudaBackend gpu(w, {"bf16"});
  for (const std::string attention : {"flash", "flash_split"}) {
    INFO(attention);
    const auto want = check_graphs_match_eager(gpu, attention, reqs);
    // Programmatic dependent launch (Hopper), eager and captured: the same tokens again.
    if (cuda::programmatic_launch_supported()) {
      for (bool graphs : {false, true}) {
        INFO("cuda_pdl with cuda_graphs " << graphs);
        gpu.set_cuda_graphs(graphs);
        gpu.set_cuda_pdl(true);
        const auto pdl = greedy_run(gpu, "paged", attention, reqs, 128);
        gpu.set_cuda_pdl(false);
        REQUIRE(pdl.size() == want.size());
        for (std::size_t i = 0; i < want.size(); ++i) CHECK(pdl[i] == want[i]);
      }
      // cuda_l2_prefetch (a hint), with and without pdl and graphs: the same tokens.
      for (bool pdl : {false, true})
        for (bool graphs : {false, true}) {
          INFO("cuda_l2_prefetch with cuda_pdl " << pdl << ", cuda_graphs " << graphs);
          gpu.set_cuda_graphs(graphs);
          gpu.set_cuda_pdl(pdl);
          gpu.set_cuda_l2_prefetch(true);
          const auto l2 = greedy_run(gpu, "paged", attention, reqs, 128);
          gpu.set_cuda_l2_prefetch(false);
          gpu.set_cuda_pdl(false);
          REQUIRE(l2.size() == want.size());
          for (std::size_t i = 0; i < want.size(); ++i) CHECK(l2[i] == want[i]);
        }
    } else {
      WARN("cuda_pdl and cuda_l2_prefetch not tested: this device is below compute capability 9.0");
      CHECK_THROWS_WITH(gpu.set_cuda_l2_prefetch(true), Catch::Contains("needs compute capability 9.0"));
    }
    // cuda_flash_decode_version: each planned decode kernel gives the same tokens captured as
    // launched kernel by kernel. (Across versions the sums differ in order, which can flip a
    // near-tie in a greedy choice: on an H100 version 4 chose another token at one step of
    // one of these sequences. The kernels' agreement with the CPU is tested in test_cuda_kernels.)
    for (int version = 2; version <= cuda::kDecodeVersions; ++version) {
      INFO("cuda_flash_decode_version " << version);
      gpu.set_flash_decode_version(version);
      gpu.set_cuda_graphs(false);
      const auto eager = greedy_run(gpu, "paged", attention, reqs, 128);
      gpu.set_cuda_graphs(true);
      const auto captured = greedy_run(gpu, "paged", attention, reqs, 128);
      gpu.set_flash_decode_version(0);
      REQUIRE(eager.size() == want.size());
      REQUIRE(captured.size() == want.size());
      for (std::size_t i = 0; i < want.size(); ++i) CHECK(captured[i] == eager[i]);
    }
    CHECK_THROWS_WITH(gpu.set_flash_decode_version(1), Catch::Contains("allowed: 0 (the backend's choice), 2 .. "));
    gpu.set_cuda_graphs(true);
    // Device time of the last forward pass (CUDA events), as steps.csv's device_s gets it.
    REQUIRE(gpu.last_forward_device_s().has_value());
    CHECK(*gpu.last_forward_device_s() > 0.0);
    CHECK(*gpu.last_forward_device_s() < 1.0);
  }
}

namespace {

// A small model with the flash kernels' head_dim (64; GQA 2:1) and Qwen2's Q/K/V biases and/or
// Llama 3's scaled RoPE. Scaling with original_max_position 32: at theta 1e4 and head_dim 64 the
// pairs' wavelengths (6 to 4e4 positions) fall in all three bands (kept, blended, divided), and
// the steps' positions (up to 127) run past 32.
ModelShape feature_shape(bool qkv_bias, bool scaled) {
  ModelShape s;
  s.name = std::string(qkv_bias ? "bias" : "") + (scaled ? "scaled" : "");
  s.dim = 256;
  s.hidden_dim = 512;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.vocab_size = 1000;
  s.max_seq_len = 512;
  s.tied_embeddings = qkv_bias;  // Qwen2.5's small models tie, Llama 3's do not
  s.qkv_bias = qkv_bias;
  if (scaled) s.rope_scaling = {8.0f, 1.0f, 4.0f, 32, {}};
  return s;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::abs(a[i] - b[i])));
  return worst;
}

}  // namespace

// The CUDA backend with Q/K/V biases (added after the QKV projection: add_bias_rows on the naive
// path, in rope_store_qkv and the fused batch-1 QKV GEMV on the flash paths) and scaled RoPE (the
// CPU's frequency table on the device, read by every RoPE kernel) against the CPU backend: fp32
// logits to float rounding and the same greedy tokens; 16-bit logits within 16-bit tolerance, every
// attention kernel, both layouts; with the feature removed the CPU's logits move by far more than
// the fp32 tolerance (the comparison sees it).
TEST_CASE("cuda backend: Q/K/V biases (Qwen2) and scaled RoPE (Llama 3) give the CPU's logits, every attention kernel",
          "[.][cuda][backend][qwen2][llama3]") {
  for (auto [bias, scaled] : {std::pair{true, false}, std::pair{false, true}, std::pair{true, true}}) {
    const ModelShape shape = feature_shape(bias, scaled);
    INFO("qkv_bias " << bias << ", rope_scaling llama3 " << scaled);
    const Weights w = synthetic_weights(shape, 9);
    CpuBackend cpu(synthetic_weights(shape, 9));
    std::mt19937 rng(10);
    auto ids = [&](int n) {
      std::vector<int> t(static_cast<std::size_t>(n));
      for (int& x : t) x = static_cast<int>(rng() % static_cast<unsigned>(shape.vocab_size));
      return t;
    };
    const auto p0 = ids(42), p1 = ids(23);
    const auto want = ragged_steps_logits(cpu, "contiguous", "naive", p0, p1);
    float scale = 0;
    for (float v : want) scale = std::max(scale, std::abs(v));
    const double fp32_tol = 1e-4 * scale;

    Weights off = synthetic_weights(shape, 9);  // the same weights without the feature(s)
    off.shape.qkv_bias = false;
    for (LayerWeights& L : off.layers) L.bq.clear(), L.bk.clear(), L.bv.clear();
    off.shape.rope_scaling = RopeScaling{};
    CpuBackend cpu_off(std::move(off));
    const double feature = max_diff(ragged_steps_logits(cpu_off, "contiguous", "naive", p0, p1), want);
    INFO("without the feature the CPU's logits move by " << feature << " (logits up to " << scale << ")");
    CHECK(feature > 100 * fp32_tol);

    CudaBackend gpu32(w, {"fp32"});
    for (const std::string layout : {"contiguous", "paged"}) {
      INFO("fp32, naive on " << layout);
      const double worst = max_diff(ragged_steps_logits(gpu32, layout, "naive", p0, p1), want);
      INFO("worst |gpu - cpu| = " << worst);
      CHECK(worst <= fp32_tol);
    }
    const auto reqs = test::random_requests(15, 6, shape.vocab_size, 40, 60);
    for (const std::string layout : {"contiguous", "paged"}) {
      INFO("fp32 greedy tokens, naive on " << layout);
      const auto greedy_cpu = greedy_run(cpu, layout, "naive", reqs, 128);
      const auto greedy_gpu = greedy_run(gpu32, layout, "naive", reqs, 128);
      REQUIRE(greedy_gpu.size() == greedy_cpu.size());
      for (std::size_t i = 0; i < greedy_cpu.size(); ++i) CHECK(greedy_gpu[i] == greedy_cpu[i]);
    }

    for (const std::string dtype : {"bf16", "fp16"}) {
      CudaBackend gpu(w, {dtype});
      for (const std::string attention : {"naive", "flash", "flash_split"})
        for (const std::string layout : {"contiguous", "paged"}) {
          INFO(dtype << ", " << attention << " on " << layout);
          const double worst = max_diff(ragged_steps_logits(gpu, layout, attention, p0, p1), want);
          INFO("worst |gpu - cpu| = " << worst << " of logits up to " << scale);
          CHECK(worst <= 0.03 * scale);  // as the 16-bit test above
        }
    }
  }
}

// The features' device buffers (biases, frequency table) under CUDA graphs: decode steps
// captured and replayed give the tokens launched kernel by kernel gives.
TEST_CASE("cuda backend: cuda_graphs with Q/K/V biases and scaled RoPE gives the eager greedy tokens",
          "[.][cuda][backend][qwen2][llama3]") {
  const ModelShape shape = feature_shape(true, true);
  const Weights w = synthetic_weights(shape, 4);
  const auto reqs = test::random_requests(16, 6, shape.vocab_size, 20, 80);
  CudaBackend gpu(w, {"bf16"});
  for (const std::string attention : {"flash", "flash_split"}) {
    INFO(attention);
    check_graphs_match_eager(gpu, attention, reqs);
  }
}
