// Kernel benchmarks against the physical limit. matmul at rows=1 only streams its weights, so
// weight bytes / time (in the stored dtype: fp32, bf16, fp16, Q8_0 with its scales, Q4_1 with its
// scales and offsets) is compared
// with the host's read bandwidth, measured just before each benchmark (read_GBps, roofline_frac).
// Weights rotate through as many copies as smollm2-135m has weights (ABLATE_BENCH_ARENA_MB of fp32,
// default 540), so each matrix is re-read after as many bytes as in a real decode step in its dtype
// and caches help no more than they would there; BM_StreamRead reads the fp32 arena itself.
//   build/default/experiments/bench_kernels --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/kernels.hpp"
#include "base/sampler.hpp"
#include "read_bandwidth.hpp"
#ifdef ABLATE_HAVE_CUDA
#include "cuda/kernels.cuh"
#endif

using namespace ablate;

namespace {


// smollm2-135m
constexpr int kDim = 576, kKvDim = 192, kHidden = 1536, kVocab = 49152;
constexpr int kHeads = 9, kKvHeads = 3, kHeadDim = 64;

struct Arena {
  float* data = nullptr;
  std::size_t floats = 0;
  Arena() {
    const char* mb = std::getenv("ABLATE_BENCH_ARENA_MB");
    floats = (mb ? std::strtoull(mb, nullptr, 10) : 540) << 18;  // MiB -> floats
    data = static_cast<float*>(std::aligned_alloc(4096, floats * sizeof(float)));
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < floats; ++i) data[i] = 1e-3f * float(i % 1000);
  }
  ~Arena() { std::free(data); }
  // The k-th of as many n-float slices as fit, cycling.
  const float* slice(std::size_t n, std::size_t k) const { return data + (k % std::max<std::size_t>(1, floats / n)) * n; }
};

const Arena& arena() {
  static Arena a;
  return a;
}

// read_bandwidth: bench::measure_read_bandwidth() just before the timed loop, with its threads.
void set_rate_counters(benchmark::State& state, double bytes, double flops, double read_bandwidth) {
  state.SetBytesProcessed(static_cast<int64_t>(bytes * double(state.iterations())));
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["read_GBps"] = read_bandwidth / 1e9;
  state.counters["roofline_frac"] = benchmark::Counter(bytes / read_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

void BM_StreamRead(benchmark::State& state) {
  const Arena& a = arena();
  const std::size_t n = std::size_t(state.range(0)) << 18;
  std::size_t k = 0;
  const double bw = bench::measure_read_bandwidth();
  for (auto _ : state) {
    const float* p = a.slice(n, k++);
    float total = 0.0f;
#pragma omp parallel reduction(+ : total)
    {
      // Eigen's sum keeps several SIMD accumulators, so adds never limit the read rate.
      const std::size_t nt = omp_get_num_threads(), t = omp_get_thread_num(), chunk = (n + nt - 1) / nt;
      const std::size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
      total += Eigen::Map<const Eigen::ArrayXf>(p + b, Eigen::Index(e - b)).sum();
    }
    benchmark::DoNotOptimize(total);
  }
  set_rate_counters(state, double(n) * sizeof(float), double(n), bw);
}

// One matrix of the arena's values in `dtype`, copied as many times as the arena holds matrices of
// its size: the k-th call reads copy k (cycling), as bench_forward's decode reads its layers.
struct MatmulCopies {
  std::size_t count = 0, wn = 0;
  std::vector<cpu::Bf16> bf16;
  std::vector<cpu::Half> f16;
  std::vector<cpu::PackedQ8_0> q8;
  std::vector<cpu::PackedQ4_1> q4;
  std::vector<cpu::PackedQ4_0> q40;  // the Q4_1 blocks without their offsets: Q4_0's bytes (the timing needs no Q4_0 rounding)
  std::vector<cpu::PackedQ4_K> q4k;  // the Q4_1 nibbles as Q4_K sub-blocks, random 6-bit scales (timing only)
  std::vector<cpu::PackedQ6_K> q6k;  // Q6_K blocks of patterned bytes (timing only)
  std::vector<cpu::PackedQ5_K> q5k;  // Q5_K blocks likewise
  std::vector<cpu::PackedIQ4_XS> iq4xs;  // IQ4_XS blocks likewise
  std::vector<cpu::PackedIQ4_NL> iq4nl;  // the Q4_1 nibbles as IQ4_NL blocks (timing only)
  std::vector<cpu::PackedQ3_K> q3k;  // Q3_K, Q2_K blocks of patterned bytes
  std::vector<cpu::PackedQ2_K> q2k;
  std::vector<cpu::LatticeMatrix> lattice;  // IQ3_S, IQ2_XXS, IQ1_S blocks of patterned bytes
  // out x in / 256 K-quant blocks of patterned bytes with small fp16 scales (timing only).
  template <class Block>
  static std::vector<Block> patterned(int out, int in) {
    std::vector<Block> blocks(std::size_t(out) * (in / 256));
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      auto* raw = reinterpret_cast<std::uint8_t*>(&blocks[b]);
      for (std::size_t i = 0; i < sizeof blocks[b]; ++i) raw[i] = std::uint8_t(131 * (b + i) + 7);
      blocks[b].d = cpu::to_half(0.001f);
      if constexpr (requires { blocks[b].dmin; }) blocks[b].dmin = cpu::to_half(0.001f);
    }
    return blocks;
  }
  MatmulCopies(int dtype, int in, int out) : wn(std::size_t(in) * out) {
    count = std::max<std::size_t>(1, arena().floats / wn);
    const float* w = arena().slice(wn, 0);
    // One copy converted, then repeated.
    const auto repeat = [&](auto& dst, auto convert) {
      dst.resize(count * wn);
      for (std::size_t i = 0; i < wn; ++i) dst[i] = convert(w[i]);
      for (std::size_t c = 1; c < count; ++c) std::copy_n(dst.begin(), wn, dst.begin() + std::ptrdiff_t(c * wn));
    };
    if (dtype == 1) {
      repeat(bf16, cpu::to_bf16);
    } else if (dtype == 2) {
      repeat(f16, cpu::to_half);
    } else if (dtype == 3) {
      q8.assign(count, cpu::pack_q8_0(cpu::quantize_q8_0(w, out, in), out, in));
    } else if (dtype == 4) {
      q4.assign(count, cpu::pack_nibbles(cpu::quantize_q4_1(w, out, in), out, in));
    } else if (dtype == 5) {
      std::vector<cpu::BlockQ4_0> blocks;
      for (const cpu::BlockQ4_1& b : cpu::quantize_q4_1(w, out, in)) {
        cpu::BlockQ4_0 z{b.d, {}};
        std::memcpy(z.qs, b.qs, sizeof z.qs);
        blocks.push_back(z);
      }
      q40.assign(count, cpu::pack_nibbles(blocks, out, in));
    } else if (dtype == 6) {
      const auto q41 = cpu::quantize_q4_1(w, out, in);
      std::vector<cpu::BlockQ4_K> blocks(q41.size() / 8);
      for (std::size_t b = 0; b < blocks.size(); ++b) {
        blocks[b].d = q41[8 * b].d, blocks[b].dmin = q41[8 * b].d;
        for (int i = 0; i < 12; ++i) blocks[b].scales[i] = std::uint8_t(37 * i + 11);
        for (int i = 0; i < 128; ++i) blocks[b].qs[i] = q41[8 * b + i / 16].qs[i % 16];
      }
      q4k.assign(count, cpu::pack_q4_k(blocks, out, in));
    } else if (dtype == 7) {
      q6k.assign(count, cpu::pack_q6_k(patterned<cpu::BlockQ6_K>(out, in), out, in));
    } else if (dtype == 8) {
      q5k.assign(count, cpu::pack_q5_k(patterned<cpu::BlockQ5_K>(out, in), out, in));
    } else if (dtype == 9) {
      iq4xs.assign(count, cpu::pack_iq4_xs(patterned<cpu::BlockIQ4_XS>(out, in), out, in));
    } else if (dtype == 10) {
      std::vector<cpu::BlockIQ4_NL> blocks;
      for (const cpu::BlockQ4_1& b : cpu::quantize_q4_1(w, out, in)) {
        cpu::BlockIQ4_NL z{b.d, {}};
        std::memcpy(z.qs, b.qs, sizeof z.qs);
        blocks.push_back(z);
      }
      iq4nl.assign(count, cpu::pack_nibbles(blocks, out, in));
    } else if (dtype == 11) {
      q3k.assign(count, cpu::pack_q3_k(patterned<cpu::BlockQ3_K>(out, in), out, in));
    } else if (dtype == 12) {
      q2k.assign(count, cpu::pack_q2_k(patterned<cpu::BlockQ2_K>(out, in), out, in));
    } else if (dtype >= 13) {
      const auto bytes_of = [](const auto& blocks) {
        const auto* p = reinterpret_cast<const std::uint8_t*>(blocks.data());
        return std::vector<std::uint8_t>(p, p + blocks.size() * sizeof(blocks[0]));
      };
      lattice.assign(count, dtype == 13   ? cpu::make_lattice_matrix(cpu::LatticeType::IQ3_S, bytes_of(patterned<cpu::BlockIQ3_S>(out, in)), out, in)
                            : dtype == 14 ? cpu::make_lattice_matrix(cpu::LatticeType::IQ2_XXS, bytes_of(patterned<cpu::BlockIQ2_XXS>(out, in)), out, in)
                                          : cpu::make_lattice_matrix(cpu::LatticeType::IQ1_S, bytes_of(patterned<cpu::BlockIQ1_S>(out, in)), out, in));
    }
  }
};

void BM_Matmul(benchmark::State& state) {
  const int rows = int(state.range(0)), in = int(state.range(1)), out = int(state.range(2)), dtype = int(state.range(3));
  const std::size_t wn = std::size_t(in) * out;
  std::vector<float> x(std::size_t(rows) * in, 0.5f), y(std::size_t(rows) * out);
  const MatmulCopies copies(dtype, in, out);
  std::size_t k = 0;
  const double bw = bench::measure_read_bandwidth();
  for (auto _ : state) {
    const std::size_t c = k++ % copies.count;
    switch (dtype) {
      case 0: cpu::matmul(y.data(), x.data(), arena().slice(wn, c), rows, in, out); break;
      case 1: cpu::matmul(y.data(), x.data(), copies.bf16.data() + c * wn, rows, in, out); break;
      case 2: cpu::matmul(y.data(), x.data(), copies.f16.data() + c * wn, rows, in, out); break;
      case 3: cpu::matmul(y.data(), x.data(), copies.q8[c], rows, in, out); break;
      case 4: cpu::matmul(y.data(), x.data(), copies.q4[c], rows, in, out); break;
      case 5: cpu::matmul(y.data(), x.data(), copies.q40[c], rows, in, out); break;
      case 6: cpu::matmul(y.data(), x.data(), copies.q4k[c], rows, in, out); break;
      case 7: cpu::matmul(y.data(), x.data(), copies.q6k[c], rows, in, out); break;
      case 8: cpu::matmul(y.data(), x.data(), copies.q5k[c], rows, in, out); break;
      case 9: cpu::matmul(y.data(), x.data(), copies.iq4xs[c], rows, in, out); break;
      case 10: cpu::matmul(y.data(), x.data(), copies.iq4nl[c], rows, in, out); break;
      case 11: cpu::matmul(y.data(), x.data(), copies.q3k[c], rows, in, out); break;
      case 12: cpu::matmul(y.data(), x.data(), copies.q2k[c], rows, in, out); break;
      default: cpu::matmul(y.data(), x.data(), copies.lattice[c], rows, in, out); break;
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = dtype == 0   ? 4.0 * wn
                       : dtype == 3 ? double(copies.q8[0].bytes())
                       : dtype == 4 ? double(copies.q4[0].bytes())
                       : dtype == 5 ? double(copies.q40[0].bytes())
                       : dtype == 6 ? double(copies.q4k[0].bytes())
                       : dtype == 7 ? double(copies.q6k[0].bytes())
                       : dtype == 8 ? double(copies.q5k[0].bytes())
                       : dtype == 9 ? double(copies.iq4xs[0].bytes())
                       : dtype == 10 ? double(copies.iq4nl[0].bytes())
                       : dtype == 11 ? double(copies.q3k[0].bytes())
                       : dtype == 12 ? double(copies.q2k[0].bytes())
                       : dtype >= 13 ? double(copies.lattice[0].bytes_size())
                                    : 2.0 * wn;
  set_rate_counters(state, bytes, 2.0 * rows * wn, bw);
}

// One matrix in each weight format, the same one every iteration (1-8 MB: it stays in L2/L3): what
// the kernel can read when memory is not the limit, in bytes of the stored format (bytes_per_second).
// Beside BM_Matmul's streaming figure, it tells a compute-bound kernel from a memory-bound one.
void BM_MatmulCached(benchmark::State& state) {
  const int rows = int(state.range(0)), in = int(state.range(1)), out = int(state.range(2)), dtype = int(state.range(3));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(std::size_t(rows) * in), w(std::size_t(in) * out), y(std::size_t(rows) * out);
  for (float& v : x) v = u(rng);
  for (float& v : w) v = u(rng);
  std::vector<cpu::Bf16> wb(w.size());
  std::vector<cpu::Half> wh(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) wb[i] = cpu::to_bf16(w[i]), wh[i] = cpu::to_half(w[i]);
  const auto wq = cpu::pack_q8_0(cpu::quantize_q8_0(w.data(), out, in), out, in);
  const double bytes[] = {4.0 * w.size(), 2.0 * w.size(), 2.0 * w.size(), double(wq.bytes())};
  for (auto _ : state) {
    switch (dtype) {
      case 0: cpu::matmul(y.data(), x.data(), w.data(), rows, in, out); break;
      case 1: cpu::matmul(y.data(), x.data(), wb.data(), rows, in, out); break;
      case 2: cpu::matmul(y.data(), x.data(), wh.data(), rows, in, out); break;
      default: cpu::matmul(y.data(), x.data(), wq, rows, in, out); break;
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes[dtype] * double(state.iterations())));
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * rows * w.size(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = omp_get_max_threads();
}

void matmul_cached_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "in", "out", "dtype"});  // dtype 0 fp32, 1 bf16, 2 fp16, 3 q8_0
  for (int rows : {1, 16})
    for (int dtype = 0; dtype < 4; ++dtype) b->Args({rows, kDim, 2 * kHidden, dtype})->Args({rows, kHidden, kDim, dtype});
}

void BM_Rmsnorm(benchmark::State& state) {
  const int rows = int(state.range(0));
  std::vector<float> x(std::size_t(rows) * kDim, 0.25f), out(x.size()), w(kDim, 1.0f);
  const double bw = bench::measure_read_bandwidth();
  for (auto _ : state) {
    cpu::rmsnorm(out.data(), x.data(), w.data(), rows, kDim, 1e-5f);
    benchmark::DoNotOptimize(out.data());
  }
  set_rate_counters(state, (2.0 * rows * kDim + kDim) * sizeof(float), 4.0 * rows * kDim, bw);
}

// One sequence of one layer with smollm2's heads; K/V contiguous (page_size 0) or in shuffled
// pages of page_size tokens.
struct AttnSetup {
  std::vector<float> q, out, k, v;
  std::vector<int32_t> indices;
  AttentionProblem p;
  AttnSetup(int ctx, int n_q, int page_size) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    const int qw = kHeads * kHeadDim;
    const int ps = page_size > 0 ? page_size : ctx, pages = (ctx + ps - 1) / ps;
    q.resize(std::size_t(n_q) * qw);
    out.resize(q.size());
    k.resize(std::size_t(pages) * ps * kKvDim);
    v.resize(k.size());
    for (auto* vec : {&q, &k, &v})
      for (float& f : *vec) f = d(rng);
    indices.resize(pages);
    std::iota(indices.begin(), indices.end(), 0);
    std::shuffle(indices.begin(), indices.end(), rng);
    p.q = q.data();
    p.out = out.data();
    p.q_stride = p.out_stride = qw;
    p.n_q = n_q;
    p.q_pos0 = ctx - n_q;
    p.kv = {k.data(), v.data(), indices.data(), pages, ps, ctx, kKvDim};
    p.n_heads = kHeads;
    p.n_kv_heads = kKvHeads;
    p.head_dim = kHeadDim;
    p.scale = 1.0f / std::sqrt(float(kHeadDim));
  }
};

void attention_counters(benchmark::State& state, const AttentionProblem& p, std::size_t workspace, double bw) {
  const double kv_bytes = 2.0 * p.kv_len() * kKvDim * sizeof(float);
  set_rate_counters(state, kv_bytes, 4.0 * p.n_q * p.n_heads * p.kv_len() * p.head_dim, bw);
  state.counters["workspace_bytes"] = double(workspace);
}

void BM_AttentionNaive(benchmark::State& state) {
  const int ctx = int(state.range(0)), n_q = state.range(1) ? ctx : 1;
  AttnSetup s(ctx, n_q, int(state.range(2)));
  const double bw = bench::measure_read_bandwidth();
  for (auto _ : state) {
    cpu::attention_naive({&s.p, 1});
    benchmark::DoNotOptimize(s.out.data());
  }
  attention_counters(state, s.p, cpu::attention_naive_workspace_bytes(s.p), bw);
}

void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "in", "out", "dtype"});  // dtype 0 fp32, 1 bf16, 2 fp16, 3 q8_0, 4 Q4_1, 5 Q4_0, 6 Q4_K, 7 Q6_K, 8 Q5_K, 9 IQ4_XS, 10 IQ4_NL, 11 Q3_K, 12 Q2_K, 13 IQ3_S, 14 IQ2_XXS, 15 IQ1_S (native)
  const std::pair<int, int> shapes[] = {{kDim, kDim}, {kDim, kKvDim}, {kDim, kHidden}, {kHidden, kDim}, {kDim, kVocab}};
  for (int rows : {1, 5, 16})
    for (int dtype = 0; dtype < 16; ++dtype)
      if (rows != 5 || dtype == 0)
        for (auto [in, out] : shapes)
          if (dtype < 6 || dtype == 10 || in % 256 == 0) b->Args({rows, in, out, dtype});  // K-quant rows are 256 values
}

void attention_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ctx", "prefill", "page_size"});
  for (int prefill : {0, 1})
    for (int page_size : {0, 16})
      for (int ctx = 128; ctx <= 4096; ctx *= 2) b->Args({ctx, prefill, page_size});
}

// Temperature / top-p sampling of one llama2-sized logit row on the host (the Sampler the
// engine uses without a device; top_p < 1 sorts the whole vocabulary): its cost per decoded token
// beside the GPU's, BM_CudaSampleRows. bytes = the logits read once.
void BM_Sample(benchmark::State& state) {
  const int vocab = int(state.range(0));
  const double top_p = double(state.range(1)) / 100.0;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<std::size_t>(vocab));
  for (float& l : logits) l = normal(rng);
  const Sampler sampler(0.8, top_p);
  double u = 0.0;
  for (auto _ : state) {
    u = u + 0.618033988749895 - std::floor(u + 0.618033988749895);
    benchmark::DoNotOptimize(sampler.sample_uniform(logits, u));
  }
  state.SetBytesProcessed(static_cast<int64_t>(double(vocab) * sizeof(float) * double(state.iterations())));
}

}  // namespace

BENCHMARK(BM_StreamRead)->ArgName("MiB")->Arg(64)->Arg(256)->UseRealTime();
BENCHMARK(BM_Sample)->ArgNames({"vocab", "top_p_pct"})->Args({32000, 100})->Args({32000, 90})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Matmul)->Apply(matmul_args)->UseRealTime();
BENCHMARK(BM_MatmulCached)->Apply(matmul_cached_args)->UseRealTime();
BENCHMARK(BM_Rmsnorm)->ArgName("rows")->Arg(1)->Arg(16)->UseRealTime();
BENCHMARK(BM_AttentionNaive)->Apply(attention_args)->UseRealTime()->Unit(benchmark::kMicrosecond);

#ifdef ABLATE_HAVE_CUDA
// GPU versions, registered only when a device is present; timed with CUDA events.
namespace {

float* dev_alloc(std::size_t floats) {
  void* p = nullptr;
  if (cudaMalloc(&p, floats * sizeof(float)) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  return static_cast<float*>(p);
}

float* to_dev(const std::vector<float>& h) {
  float* d = dev_alloc(h.size());
  cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  return d;
}

struct Gpu {
  cublasHandle_t handle = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  float* arena = nullptr;
  std::size_t arena_floats = std::size_t{1} << 28;  // 1 GiB: several times any GPU's L2
  Gpu() {
    cudaStreamCreate(&stream);
    cublasCreate(&handle);
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    arena = dev_alloc(arena_floats);
    cudaMemset(arena, 0, arena_floats * sizeof(float));
  }
};

Gpu& gpu() {
  static Gpu g;
  return g;
}

template <class F>
void time_gpu(benchmark::State& state, F&& f) {
  Gpu& g = gpu();
  f(0);  // warm-up (cuBLAS heuristics, lazy module loading)
  std::size_t k = 1;
  for (auto _ : state) {
    cudaEventRecord(g.start, g.stream);
    f(k++);
    cudaEventRecord(g.stop, g.stream);
    cudaEventSynchronize(g.stop);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, g.start, g.stop);
    state.SetIterationTime(ms / 1e3);
  }
}

void BM_CudaMatmul(benchmark::State& state) {
  const int rows = int(state.range(0)), in = int(state.range(1)), out = int(state.range(2));
  Gpu& g = gpu();
  const std::size_t wn = std::size_t(in) * out, slices = g.arena_floats / wn - 1;
  float* x = g.arena + slices * wn;  // x and y share the last slice (both far smaller than w)
  float* y = x + std::size_t(rows) * in;
  time_gpu(state, [&](std::size_t k) { cuda::matmul(y, x, g.arena + (k % slices) * wn, rows, in, out, g.handle, g.stream); });
  state.SetBytesProcessed(static_cast<int64_t>(double(wn) * sizeof(float) * double(state.iterations())));
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * rows * wn, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_CudaAttentionNaive(benchmark::State& state) {
  const int ctx = int(state.range(0)), n_q = state.range(1) ? ctx : 1;
  AttnSetup s(ctx, n_q, 0);
  AttentionProblem p = s.p;
  Gpu& g = gpu();
  const std::size_t wsb = cuda::attention_naive_workspace_bytes(p);
  float *q = to_dev(s.q), *out = to_dev(s.out), *k = to_dev(s.k), *v = to_dev(s.v), *ws = dev_alloc(wsb / sizeof(float));
  p.q = q;
  p.out = out;
  p.kv.k_pool = k;
  p.kv.v_pool = v;
  p.kv.indices = nullptr;  // contiguous: not read
  time_gpu(state, [&](std::size_t) { cuda::attention_naive(p, ws, g.handle, g.stream); });
  for (float* ptr : {q, out, k, v, ws}) cudaFree(ptr);
  state.SetBytesProcessed(static_cast<int64_t>(2.0 * ctx * kKvDim * sizeof(float) * double(state.iterations())));
  state.counters["FLOP/s"] =
      benchmark::Counter(4.0 * n_q * kHeads * ctx * kHeadDim, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = double(wsb);
}

// cuda::sample_rows on `rows` llama2-sized logit rows (BM_Sample's host twin).
void BM_CudaSampleRows(benchmark::State& state) {
  const int rows = int(state.range(0)), vocab = int(state.range(1));
  const double top_p = double(state.range(2)) / 100.0;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(std::size_t(rows) * vocab);
  for (float& l : logits) l = normal(rng);
  std::vector<double> u(static_cast<std::size_t>(rows), 0.37);
  float* d_logits = to_dev(logits);
  double* d_u = nullptr;
  int* d_out = nullptr;
  void* ws = nullptr;
  const std::size_t wsb = cuda::sample_rows_workspace_bytes(rows, vocab, top_p);
  if (cudaMalloc(reinterpret_cast<void**>(&d_u), u.size() * sizeof(double)) != cudaSuccess ||
      cudaMalloc(reinterpret_cast<void**>(&d_out), u.size() * sizeof(int)) != cudaSuccess || cudaMalloc(&ws, wsb) != cudaSuccess)
    throw std::runtime_error("cudaMalloc failed");
  cudaMemcpy(d_u, u.data(), u.size() * sizeof(double), cudaMemcpyHostToDevice);
  Gpu& g = gpu();
  time_gpu(state, [&](std::size_t) { cuda::sample_rows(d_logits, rows, vocab, 0.8, top_p, d_u, d_out, ws, wsb, g.stream); });
  cudaFree(d_logits);
  cudaFree(d_u);
  cudaFree(d_out);
  cudaFree(ws);
  state.SetBytesProcessed(static_cast<int64_t>(double(rows) * vocab * sizeof(float) * double(state.iterations())));
}

void register_cuda_benchmarks() {
  std::string why;
  if (!cuda::cuda_device_available(&why)) {
    benchmark::AddCustomContext("cuda", "not benchmarked: no CUDA device (" + why + ")");
    return;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  benchmark::AddCustomContext("cuda", prop.name);
  benchmark::RegisterBenchmark("BM_CudaMatmul", BM_CudaMatmul)->Apply(matmul_args)->UseManualTime();
  auto* b = benchmark::RegisterBenchmark("BM_CudaAttentionNaive", BM_CudaAttentionNaive);
  b->ArgNames({"ctx", "prefill"})->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (int prefill : {0, 1})
    for (int ctx = 128; ctx <= 4096; ctx *= 2) b->Args({ctx, prefill});
  auto* sb = benchmark::RegisterBenchmark("BM_CudaSampleRows", BM_CudaSampleRows);
  sb->ArgNames({"rows", "vocab", "top_p_pct"})->UseManualTime()->Unit(benchmark::kMicrosecond);
  for (int rows : {1, 32})
    for (int top_p : {100, 90}) sb->Args({rows, 32000, top_p});
}

}  // namespace
#endif

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("roofline",
                              "roofline_frac = bytes/s / read bandwidth measured before each benchmark (read_GBps), "
                              "bytes = weights in their dtype (matmul), x+out+weight (rmsnorm), K+V (attention)");
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
#ifdef ABLATE_HAVE_CUDA
  register_cuda_benchmarks();
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
