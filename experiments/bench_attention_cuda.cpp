// The CUDA attention kernels, timed with CUDA events (UseManualTime), fp16 or bf16:
//   BM_CudaFlashPrefill  attention_flash on a full causal prefill of ctx tokens (version 1: WMMA,
//                        shared memory; 2: mma.sync, registers; 3: 2 + cp.async; 4 and 5: 3 in
//                        FlashAttention-2's MMA issue order, 64 and 128 query rows a block; 5 is
//                        the default)
//   BM_CudaFlashDecode   attention_flash_decode: paged decode, batch sequences of ctx tokens
//   BM_CudaFlashSplit    attention_flash_split (split-KV + reduction), same problems
//   (decode and split: version 2, one launch per batch; version 3, its page table staged in
//   shared memory; version 4, version 3 in 512-thread blocks; version 1, one launch per sequence)
// Decode counters: bytes/s = K+V bytes read (each sequence's, dtype-sized) per second and
// bw_frac = that / the device's peak (2 x memory clock x bus width, printed in the context).
// Prefill: FLOP/s = useful causal FLOPs (4 * head_dim per visible (query, key, head)).
// Shapes: 0 = smollm2-135m (9 heads, 3 KV, hd 64), 1 = llama2-7b (32, 32, 128); page 0 =
// contiguous (one page), else pages of that many tokens in shuffled order. Without a device
// (or without nvcc at build time) it prints why and exits 0 having run nothing.
//   build/gpu/experiments/bench_attention_cuda --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
// experiments/sdpa_compare.py prints PyTorch SDPA (flash backend) timings on the same shapes.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <string>

#ifdef ABLATE_HAVE_CUDA
#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "cuda/kernels.cuh"

using namespace ablate;

namespace {

struct Heads {
  int n_heads, n_kv_heads, head_dim;
};
constexpr Heads kShapes[] = {{9, 3, 64}, {32, 32, 128}};
const char* kShapeNames[] = {"smollm2-135m", "llama2-7b"};

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

double g_peak_bytes_per_s = 0.0;

// batch problems of ctx tokens each, n_q queries at the end; K/V pools per sequence, dtype
// elements filled on the device; a device page table per sequence.
struct Setup {
  std::vector<void*> allocs;
  std::vector<AttentionProblem> problems;
  cuda::DType dtype;
  void* alloc(std::size_t bytes) {
    void* p = nullptr;
    ok(cudaMalloc(&p, std::max<std::size_t>(bytes, 16)), "cudaMalloc");
    allocs.push_back(p);
    return p;
  }
  void* fill(std::size_t n, std::mt19937& rng) {  // n dtype elements, uniform [-1, 1)
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> h(std::min<std::size_t>(n, std::size_t{1} << 20));
    for (float& f : h) f = d(rng);
    float* tmp = static_cast<float*>(alloc(n * sizeof(float)));
    for (std::size_t off = 0; off < n; off += h.size())
      ok(cudaMemcpy(tmp + off, h.data(), std::min(h.size(), n - off) * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    void* dst = alloc(n * 2);
    cuda::cast_from_float(dst, tmp, n, dtype, nullptr);
    ok(cudaDeviceSynchronize(), "cast");
    cudaFree(tmp);
    allocs.erase(std::find(allocs.begin(), allocs.end(), static_cast<void*>(tmp)));
    return dst;
  }
  Setup(const Heads& h, int ctx, int batch, int n_q, int page_size, cuda::DType t) : dtype(t) {
    std::mt19937 rng(1);
    const int qw = h.n_heads * h.head_dim, ts = h.n_kv_heads * h.head_dim;
    const int ps = page_size > 0 ? page_size : ctx, pages = (ctx + ps - 1) / ps;
    void* q = fill(std::size_t(batch) * n_q * qw, rng);
    void* out = alloc(std::size_t(batch) * n_q * qw * 2);
    for (int b = 0; b < batch; ++b) {
      void* k = fill(std::size_t(pages) * ps * ts, rng);
      void* v = fill(std::size_t(pages) * ps * ts, rng);
      std::vector<int32_t> idx(pages);
      std::iota(idx.begin(), idx.end(), 0);
      std::shuffle(idx.begin(), idx.end(), rng);
      auto* didx = static_cast<int32_t*>(alloc(idx.size() * sizeof(int32_t)));
      ok(cudaMemcpy(didx, idx.data(), idx.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "cudaMemcpy");
      AttentionProblem p;
      p.q = reinterpret_cast<const float*>(static_cast<char*>(q) + std::size_t(b) * n_q * qw * 2);
      p.out = reinterpret_cast<float*>(static_cast<char*>(out) + std::size_t(b) * n_q * qw * 2);
      p.q_stride = p.out_stride = qw;
      p.n_q = n_q;
      p.q_pos0 = ctx - n_q;
      p.kv = {static_cast<const float*>(k), static_cast<const float*>(v), didx, pages, ps, ctx, ts};
      p.n_heads = h.n_heads;
      p.n_kv_heads = h.n_kv_heads;
      p.head_dim = h.head_dim;
      p.scale = 1.0f / std::sqrt(float(h.head_dim));
      problems.push_back(p);
    }
  }
  ~Setup() {
    for (void* p : allocs) cudaFree(p);
  }
};

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Events() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

template <class F>
void time_gpu(benchmark::State& state, F&& f) {
  Events ev;
  f();  // warm-up: module loading, smem attributes
  ok(cudaDeviceSynchronize(), "warm-up");
  for (auto _ : state) {
    cudaEventRecord(ev.a, nullptr);
    f();
    cudaEventRecord(ev.b, nullptr);
    cudaEventSynchronize(ev.b);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, ev.a, ev.b);
    state.SetIterationTime(ms / 1e3);
  }
  ok(cudaGetLastError(), "benchmark");
}

cuda::DType dtype_arg(benchmark::State& state, int i) { return state.range(i) ? cuda::DType::bf16 : cuda::DType::f16; }

void BM_CudaFlashPrefill(benchmark::State& state) {
  const Heads& h = kShapes[state.range(0)];
  const int ctx = int(state.range(1));
  Setup s(h, ctx, 1, ctx, int(state.range(2)), dtype_arg(state, 3));
  const int version = int(state.range(4));
  time_gpu(state, [&] { cuda::attention_flash(s.problems, s.dtype, nullptr, version); });
  const double flops = 4.0 * h.head_dim * h.n_heads * 0.5 * double(ctx) * (ctx + 1);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = 0;
  state.SetLabel(kShapeNames[state.range(0)]);
}

void decode_counters(benchmark::State& state, const Heads& h, int ctx, int batch, std::size_t ws) {
  const double bytes = 2.0 * batch * ctx * h.n_kv_heads * h.head_dim * 2;  // K + V, 2-byte elements
  state.SetBytesProcessed(static_cast<int64_t>(bytes * double(state.iterations())));
  state.counters["bw_frac"] = benchmark::Counter(bytes / g_peak_bytes_per_s, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = double(ws);
  state.SetLabel(kShapeNames[state.range(0)]);
}

void BM_CudaFlashDecode(benchmark::State& state) {
  const Heads& h = kShapes[state.range(0)];
  const int ctx = int(state.range(1)), batch = int(state.range(2));
  Setup s(h, ctx, batch, 1, int(state.range(3)), dtype_arg(state, 4));
  const int version = int(state.range(5));
  time_gpu(state, [&] { cuda::attention_flash_decode(s.problems, s.dtype, nullptr, version); });
  decode_counters(state, h, ctx, batch, 0);
}

void BM_CudaFlashSplit(benchmark::State& state) {
  const Heads& h = kShapes[state.range(0)];
  const int ctx = int(state.range(1)), batch = int(state.range(2));
  Setup s(h, ctx, batch, 1, int(state.range(3)), dtype_arg(state, 4));
  const std::size_t wsb = cuda::attention_flash_split_workspace_bytes(s.problems);
  float* ws = static_cast<float*>(s.alloc(wsb));
  const int version = int(state.range(5));
  time_gpu(state, [&] { cuda::attention_flash_split(s.problems, s.dtype, ws, wsb, nullptr, 0, version); });
  decode_counters(state, h, ctx, batch, wsb);
  state.counters["splits"] = cuda::attention_flash_split_count(s.problems, 0);
}

void register_all() {
  for (int shape : {0, 1})
    for (int ctx = 512; ctx <= 16384; ctx *= 2) {
      benchmark::RegisterBenchmark("BM_CudaFlashPrefill", BM_CudaFlashPrefill)
          ->ArgNames({"shape", "ctx", "page", "bf16", "version"})
          ->Args({shape, ctx, 0, 1, 2})
          ->Args({shape, ctx, 0, 1, 1})
          ->Args({shape, ctx, 0, 1, 3})
          ->Args({shape, ctx, 0, 1, 4})
          ->Args({shape, ctx, 0, 1, 5})
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
    }
  for (auto* fn : {&BM_CudaFlashDecode, &BM_CudaFlashSplit}) {
    auto* b = benchmark::RegisterBenchmark(fn == &BM_CudaFlashDecode ? "BM_CudaFlashDecode" : "BM_CudaFlashSplit", *fn);
    b->ArgNames({"shape", "ctx", "batch", "page", "bf16", "version"})->UseManualTime()->Unit(benchmark::kMicrosecond);
    // version 2 (the default: one launch per batch, 4 keys in flight per thread), version 3
    // (page table staged in shared memory, 8 keys a thread) and version 4 (version 3 in 512-thread
    // blocks) everywhere; version 1 (a launch per
    // sequence) beside them at 8k. One sequence of 128 and 384 tokens: the batch-1 decode step's
    // attention, a chain of load latencies rather than a bandwidth.
    for (int shape : {0, 1})
      for (int batch : {1, 16, 32})
        for (int ctx : {128, 384, 1024, 4096, 8192, 16384}) {
          if (batch > 1 && (ctx <= 1024 || ctx == 16384)) continue;  // batches at 4k and 8k: filling KV takes time
          for (int version : {2, 3, 4}) b->Args({shape, ctx, batch, 16, 1, version});
          if (ctx == 8192 && batch != 32) b->Args({shape, ctx, batch, 16, 1, 1});
        }
  }
}

}  // namespace
#endif

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#ifdef ABLATE_HAVE_CUDA
  std::string why;
  if (!cuda::cuda_device_available(&why)) {
    std::printf("bench_attention_cuda: SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 0;
  }
  int dev = 0, clock_khz = 0, bus_bits = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev);
  g_peak_bytes_per_s = 2.0 * clock_khz * 1e3 * bus_bits / 8.0;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, dev);
  benchmark::AddCustomContext("cuda_device", prop.name);
  benchmark::AddCustomContext("peak_GB/s", std::to_string(g_peak_bytes_per_s / 1e9) + " (2 x " +
                                               std::to_string(clock_khz / 1000) + " MHz x " + std::to_string(bus_bits) +
                                               " bit / 8)");
  register_all();
  benchmark::RunSpecifiedBenchmarks();
#else
  std::printf("bench_attention_cuda: SKIPPED: built without CUDA (no nvcc at configure time)\n");
#endif
  benchmark::Shutdown();
  return 0;
}
