// One decode step of a llama2-7b-shaped model in bf16 on the GPU, at batch 1, against the HBM
// roofline: a decode step must read every weight once, so step time >= weight bytes / bandwidth.
// The bandwidth is measured in the same program (a large device-to-device copy, bytes read plus
// bytes written per second, since a copy both reads and writes HBM), beside the device's peak.
// The step: per layer rmsnorm, fused QKV GEMM, RoPE, KV write, naive attention over `context`
// cached tokens, output GEMM, residual, rmsnorm, fused gate/up GEMM, SwiGLU, down GEMM, residual;
// then the final norm and the LM head. GEMMs are cuBLAS bf16 x bf16 -> fp32 (fp32 accumulate);
// activations and KV are fp32. With graphs=1 the whole step is one CUDA graph launch (the
// `cuda_graphs` ablation in miniature: the same kernels without ~500 launch gaps). gemv=0 runs
// the matmuls through cuBLAS (cublasGemmEx, x converted to bf16 first); gemv=1..11 through that
// version of the project's gemv_bf16 kernel (fp32 x read directly; the residual adds fused into
// the output and down projections). attn=0 is naive attention (cuBLAS + softmax), attn=1
// attention_decode_f32. BM_GemvBf16 times each GEMV version alone on each matrix shape of the
// step, bytes of w per second beside the copy bandwidth (the llm.c way: versions side by side),
// and the output projection's also with its weights prefetched into L2 first (l2:1).
// This step is the kernels in their plain form; the CUDA backend's own batch-1 step fuses more
// (RMSNorm inside the GEMVs, RoPE and the K/V store as the QKV GEMV's epilogue, SwiGLU as the
// gate/up GEMV's, a 16-bit x into the output projection: 5 kernels a layer):
// configs/gpu/decode.yaml measures that one.
//   build/gpu/experiments/bench_cuda_decode --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
// Without a CUDA device it reports "not benchmarked" and runs nothing.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "model/shape.hpp"
#ifdef ABLATE_HAVE_CUDA
#include "cuda/bf16.cuh"
#include "cuda/kernels.cuh"
#endif

using namespace ablate;

#ifdef ABLATE_HAVE_CUDA
namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

std::vector<void*> g_allocations;  // freed by free_all()

template <class T>
T* dev(std::size_t n) {
  void* p = nullptr;
  ok(cudaMalloc(&p, n * sizeof(T)), "cudaMalloc");
  g_allocations.push_back(p);
  return static_cast<T*>(p);
}

void free_all() {
  for (void* p : g_allocations) cudaFree(p);
  g_allocations.clear();
}

// Bytes read + written per second by one large device-to-device copy (median of 5).
double copy_bandwidth(cudaStream_t s) {
  const std::size_t bytes = std::size_t{2} << 30;
  char* a = dev<char>(bytes);
  char* b = dev<char>(bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<float> ms;
  for (int i = 0; i < 6; ++i) {
    cudaEventRecord(e0, s);
    ok(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s), "copy");
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float t = 0;
    cudaEventElapsedTime(&t, e0, e1);
    if (i > 0) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  free_all();
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / (ms[ms.size() / 2] / 1e3);
}

struct Decoder {
  ModelShape s = *find_preset("llama2-7b");
  int context = 0;
  int gemv = 0;  // 0: cuBLAS; 1..kGemvVersionsAll: gemv_bf16 version
  bool naive_attention = true;  // else cuda::attention_decode_f32
  cudaStream_t stream{};
  cublasHandle_t blas{};
  struct Layer {
    cuda::bf16_bits *wqkv, *wo, *w13, *w2;
    float *k, *v;  // KV cache, [context + 1][kv_dim]
  };
  std::vector<Layer> layers;
  cuda::bf16_bits *lm_head{}, *xb16{}, *h16{};
  float *x{}, *xb{}, *qkv{}, *att{}, *h13{}, *logits{}, *ones{}, *workspace{};
  int* position{};
  std::size_t weight_bytes = 0;
  cudaGraphExec_t graph{};

  ~Decoder() {
    if (graph) cudaGraphExecDestroy(graph);
    cublasDestroy(blas);
    cudaStreamDestroy(stream);
    free_all();
  }
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  explicit Decoder(int ctx) : context(ctx) {
    ok(cudaStreamCreate(&stream), "stream");
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
    const int d = s.dim, kvd = s.kv_dim(), h = s.hidden_dim;
    std::uint64_t seed = 1;
    auto weights = [&](std::size_t rows, std::size_t cols) {
      auto* p = dev<cuda::bf16_bits>(rows * cols);
      cuda::fill_uniform_bf16(p, rows * cols, seed++, 1.0f / std::sqrt(float(cols)), stream);
      weight_bytes += rows * cols * 2;
      return p;
    };
    for (int l = 0; l < s.n_layers; ++l) {
      Layer L{};
      L.wqkv = weights(d + 2 * kvd, d);
      L.wo = weights(d, d);
      L.w13 = weights(2 * h, d);
      L.w2 = weights(d, h);
      L.k = dev<float>(std::size_t(context + 1) * kvd);
      L.v = dev<float>(std::size_t(context + 1) * kvd);
      ok(cudaMemsetAsync(L.k, 0, std::size_t(context + 1) * kvd * 4, stream), "memset");
      ok(cudaMemsetAsync(L.v, 0, std::size_t(context + 1) * kvd * 4, stream), "memset");
      layers.push_back(L);
    }
    lm_head = weights(s.vocab_size, d);
    weight_bytes += std::size_t(2 * s.n_layers + 1) * d * 4;  // the norms' fp32 weights
    x = dev<float>(d), xb = dev<float>(d), att = dev<float>(d), qkv = dev<float>(d + 2 * kvd);
    h13 = dev<float>(2 * h), logits = dev<float>(s.vocab_size);
    xb16 = dev<cuda::bf16_bits>(h), h16 = dev<cuda::bf16_bits>(h);
    std::vector<float> one(std::max(d, h), 1.0f), x0(d, 0.01f);
    ones = dev<float>(one.size());
    ok(cudaMemcpy(ones, one.data(), one.size() * 4, cudaMemcpyHostToDevice), "copy");
    ok(cudaMemcpy(x, x0.data(), x0.size() * 4, cudaMemcpyHostToDevice), "copy");
    position = dev<int>(1);
    ok(cudaMemcpy(position, &context, sizeof(int), cudaMemcpyHostToDevice), "copy");
    workspace = dev<float>(cuda::attention_naive_workspace_bytes(problem(0)) / 4 + 1);
    ok(cudaStreamSynchronize(stream), "sync");
  }

  AttentionProblem problem(int l) const {
    AttentionProblem p;
    const int d = s.dim, kvd = s.kv_dim();
    p.q = qkv;
    p.out = att;
    p.q_stride = d + 2 * kvd;
    p.out_stride = d;
    p.n_q = 1;
    p.q_pos0 = context;
    p.kv.k_pool = l < int(layers.size()) ? layers[l].k : nullptr;
    p.kv.v_pool = l < int(layers.size()) ? layers[l].v : nullptr;
    p.kv.num_pages = 1;
    p.kv.page_size = context + 1;
    p.kv.length = context + 1;
    p.kv.token_stride = kvd;
    p.n_heads = s.n_heads;
    p.n_kv_heads = s.n_kv_heads;
    p.head_dim = s.head_dim();
    p.scale = 1.0f / std::sqrt(float(s.head_dim()));
    return p;
  }

  // The token at position `context`: every kernel of one decode step, enqueued on `stream`.
  void step() { gemv > 0 ? step_gemv() : step_cublas(); }

  // Layer l's attention on qkv: RoPE, this token's K/V into the cache, naive attention into att.
  void attend(int l) {
    const int d = s.dim, kvd = s.kv_dim(), qkvd = d + 2 * kvd;
    const Layer& L = layers[std::size_t(l)];
    cuda::rope(qkv, 1, qkvd, s.n_heads, s.head_dim(), position, s.rope_theta, stream);
    cuda::rope(qkv + d, 1, qkvd, s.n_kv_heads, s.head_dim(), position, s.rope_theta, stream);
    ok(cudaMemcpyAsync(L.k + std::size_t(context) * kvd, qkv + d, kvd * 4, cudaMemcpyDeviceToDevice, stream), "kv");
    ok(cudaMemcpyAsync(L.v + std::size_t(context) * kvd, qkv + d + kvd, kvd * 4, cudaMemcpyDeviceToDevice, stream), "kv");
    if (naive_attention)
      cuda::attention_naive(problem(l), workspace, blas, stream);
    else
      cuda::attention_decode_f32(problem(l), stream);
  }

  void step_gemv() {
    const int d = s.dim, kvd = s.kv_dim(), h = s.hidden_dim, qkvd = d + 2 * kvd;
    for (int l = 0; l < s.n_layers; ++l) {
      const Layer& L = layers[std::size_t(l)];
      cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
      cuda::gemv_bf16(qkv, xb, L.wqkv, d, qkvd, false, stream, gemv);
      attend(l);
      cuda::gemv_bf16(x, att, L.wo, d, d, true, stream, gemv);  // x += wo att
      cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
      cuda::gemv_bf16(h13, xb, L.w13, d, 2 * h, false, stream, gemv);
      cuda::swiglu(h13, h13 + h, std::size_t(h), stream);
      cuda::gemv_bf16(x, h13, L.w2, h, d, true, stream, gemv);  // x += w2 h
    }
    cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
    cuda::gemv_bf16(logits, xb, lm_head, d, s.vocab_size, false, stream, gemv);
  }

  void step_cublas() {
    const int d = s.dim, kvd = s.kv_dim(), h = s.hidden_dim, qkvd = d + 2 * kvd;
    for (int l = 0; l < s.n_layers; ++l) {
      const Layer& L = layers[std::size_t(l)];
      cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
      cuda::to_bf16(xb16, xb, std::size_t(d), stream);
      cuda::matmul_bf16(qkv, xb16, L.wqkv, 1, d, qkvd, blas, stream);
      attend(l);
      cuda::to_bf16(xb16, att, std::size_t(d), stream);
      cuda::matmul_bf16(xb, xb16, L.wo, 1, d, d, blas, stream);
      cuda::add(x, xb, std::size_t(d), stream);
      cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
      cuda::to_bf16(xb16, xb, std::size_t(d), stream);
      cuda::matmul_bf16(h13, xb16, L.w13, 1, d, 2 * h, blas, stream);
      cuda::swiglu(h13, h13 + h, std::size_t(h), stream);
      cuda::to_bf16(h16, h13, std::size_t(h), stream);
      cuda::matmul_bf16(xb, h16, L.w2, 1, h, d, blas, stream);
      cuda::add(x, xb, std::size_t(d), stream);
    }
    cuda::rmsnorm(xb, x, ones, 1, d, s.norm_eps, stream);
    cuda::to_bf16(xb16, xb, std::size_t(d), stream);
    cuda::matmul_bf16(logits, xb16, lm_head, 1, d, s.vocab_size, blas, stream);
  }

  void capture() {
    step();  // cuBLAS picks its kernels (and allocates) outside the capture
    ok(cudaStreamSynchronize(stream), "sync");
    cudaGraph_t g;
    ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    step();
    ok(cudaStreamEndCapture(stream, &g), "end capture");
    ok(cudaGraphInstantiate(&graph, g, 0), "instantiate");
    cudaGraphDestroy(g);
  }
};

double g_copy_bw = 0;

// Each iteration's time = CUDA events around one enqueue(), after one untimed warm-up;
// prepare() runs untimed before each.
template <class F, class P = void (*)()>
void time_on_stream(benchmark::State& state, cudaStream_t s, F&& enqueue, P&& prepare = [] {}) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  enqueue();
  ok(cudaStreamSynchronize(s), "warm-up");
  for (auto _ : state) {
    prepare();
    cudaEventRecord(e0, s);
    enqueue();
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
}

void BM_CudaDecodeStep(benchmark::State& state) {
  const int context = int(state.range(0));
  const bool graphs = state.range(1) != 0, naive = state.range(3) == 0;
  const int gemv = int(state.range(2));
  static std::unique_ptr<Decoder> dec;
  if (!dec || dec->context != context) {
    dec.reset();
    dec = std::make_unique<Decoder>(context);
  }
  Decoder& D = *dec;
  if ((D.gemv != gemv || D.naive_attention != naive) && D.graph) {
    cudaGraphExecDestroy(D.graph);
    D.graph = nullptr;
  }
  D.gemv = gemv;
  D.naive_attention = naive;
  if (graphs && !D.graph) D.capture();
  time_on_stream(state, D.stream, [&] { graphs ? ok(cudaGraphLaunch(D.graph, D.stream), "graph launch") : D.step(); });
  ok(cudaGetLastError(), "decode step");
  const double wb = double(D.weight_bytes);
  state.counters["weight_bytes"] = wb;
  state.counters["tokens_per_s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_GBps"] = benchmark::Counter(wb / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  // Fraction of the roofline: (the time a copy-speed read of the weights takes) / step time.
  state.counters["roofline_frac"] = benchmark::Counter(wb / g_copy_bw, benchmark::Counter::kIsIterationInvariantRate);
}

// One GEMV of a decode step's shape (in -> out, bf16 w), version range(2), alone, with w read
// from HBM as in a decode step: before each timed run (untimed) a 256 MB matrix is read through
// L2, which evicts w; without that, the output projection's 32 MB would stay in the H100's 50 MB
// L2 from one iteration to the next (a read, not a write, so no dirty lines are written back
// during the timed run). l2 = 1: w is prefetched into L2 instead (a matrix that fits, the output
// projection's), the bound on what cuda_l2_prefetch can gain for it.
void BM_GemvBf16(benchmark::State& state) {
  const int in = int(state.range(0)), out = int(state.range(1)), version = int(state.range(2));
  const bool l2 = state.range(3) != 0;
  cuda::bf16_bits* w = nullptr;  // its own allocations: free_all() would free the decode step's too
  float *x = nullptr, *y = nullptr;
  ok(cudaMalloc(reinterpret_cast<void**>(&w), std::size_t(in) * out * 2), "cudaMalloc");
  constexpr int kFlushIn = 4096, kFlushOut = 32768;  // 256 MB of bf16, read to evict w
  const std::size_t n_x = std::size_t(std::max(in, kFlushIn));  // x serves the eviction's GEMV too
  ok(cudaMalloc(reinterpret_cast<void**>(&x), n_x * 4), "cudaMalloc");
  ok(cudaMalloc(reinterpret_cast<void**>(&y), std::size_t(out) * 4), "cudaMalloc");
  cudaStream_t s;
  ok(cudaStreamCreate(&s), "stream");
  cuda::fill_uniform_bf16(w, std::size_t(in) * out, 7, 1.0f / std::sqrt(float(in)), s);
  ok(cudaMemsetAsync(x, 0, n_x * 4, s), "memset");
  cuda::bf16_bits* flush_w = nullptr;
  float* flush_y = nullptr;
  if (!l2) {
    ok(cudaMalloc(reinterpret_cast<void**>(&flush_w), std::size_t(kFlushIn) * kFlushOut * 2), "cudaMalloc");
    ok(cudaMalloc(reinterpret_cast<void**>(&flush_y), std::size_t(kFlushOut) * 4), "cudaMalloc");
    ok(cudaMemsetAsync(flush_w, 0, std::size_t(kFlushIn) * kFlushOut * 2, s), "memset");
  }
  const auto prepare = [&] {
    if (l2) {
      cuda::l2_prefetch({w, std::size_t(in) * out * 2}, s);
      ok(cudaStreamSynchronize(s), "l2 prefetch");
      std::this_thread::sleep_for(std::chrono::microseconds(100));  // the bulk prefetch outlives its kernel
    } else {
      cuda::gemv_bf16(flush_y, x, flush_w, kFlushIn, kFlushOut, false, s, 2);
      ok(cudaStreamSynchronize(s), "L2 eviction");
    }
  };
  time_on_stream(state, s, [&] { cuda::gemv_bf16(y, x, w, in, out, false, s, version); }, prepare);
  ok(cudaGetLastError(), "gemv");
  cudaStreamDestroy(s);
  for (void* p : {static_cast<void*>(w), static_cast<void*>(x), static_cast<void*>(y), static_cast<void*>(flush_w),
                  static_cast<void*>(flush_y)})
    cudaFree(p);
  const double bytes = 2.0 * in * out;
  state.SetBytesProcessed(static_cast<int64_t>(bytes * double(state.iterations())));
  state.counters["copy_frac"] = benchmark::Counter(bytes / g_copy_bw, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace
#endif

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#ifdef ABLATE_HAVE_CUDA
  std::string why;
  if (!cuda::cuda_device_available(&why)) {
    // Nothing to run: say so on stdout, as bench_attention_cuda does (Google Benchmark alone
    // prints only "Failed to match any benchmarks" and exits 0, which reads as done).
    std::printf("bench_cuda_decode: SKIPPED: no CUDA device (%s)\n", why.c_str());
    benchmark::Shutdown();
    return 0;
  } else {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    int mem_khz = 0, bus_bits = 0;
    cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, 0);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0);
    const double peak = 2.0 * mem_khz * 1e3 * bus_bits / 8;  // DDR: two transfers a clock
    cudaStream_t s;
    cudaStreamCreate(&s);
    g_copy_bw = copy_bandwidth(s);
    cudaStreamDestroy(s);
    benchmark::AddCustomContext("cuda", prop.name);
    benchmark::AddCustomContext("hbm_peak_GBps", std::to_string(peak / 1e9));
    benchmark::AddCustomContext("copy_GBps_read_plus_write", std::to_string(g_copy_bw / 1e9));
    // Also on stdout now: Google Benchmark prints its context only when a benchmark runs, and the
    // copy bandwidth is the roofline's denominator for configs/gpu/decode.yaml's TPOT too.
    std::printf("%s: copy bandwidth %.1f GB/s (bytes read plus written), HBM peak %.1f GB/s\n", prop.name,
                g_copy_bw / 1e9, peak / 1e9);
    std::fflush(stdout);
    auto* b = benchmark::RegisterBenchmark("BM_CudaDecodeStep/llama2-7b/bf16", BM_CudaDecodeStep);
    b->ArgNames({"context", "graphs", "gemv", "attn"})->UseManualTime()->Unit(benchmark::kMillisecond);
    for (int ctx : {128, 2048})
      for (int g : {0, 1})
        for (int gemv = 0; gemv <= cuda::kGemvVersionsAll; ++gemv) b->Args({ctx, g, gemv, 0});
    for (int ctx : {128, 2048}) b->Args({ctx, 1, 1, 1});  // attn=1: attention_decode_f32, one launch
    auto* gb = benchmark::RegisterBenchmark("BM_GemvBf16", BM_GemvBf16);
    gb->ArgNames({"in", "out", "version", "l2"})->UseManualTime()->Unit(benchmark::kMicrosecond);
    // llama2-7b: wqkv, wo, w13, w2, LM head; wo (32 MB) also from L2
    for (auto [in, out] : {std::pair{4096, 12288}, {4096, 4096}, {4096, 22016}, {11008, 4096}, {4096, 32000}})
      for (int v = 1; v <= cuda::kGemvVersionsAll; ++v) gb->Args({in, out, v, 0});
    if (cuda::l2_prefetch_supported())
      for (int v = 1; v <= cuda::kGemvVersionsAll; ++v) gb->Args({4096, 4096, v, 1});
  }
#else
  std::printf("bench_cuda_decode: SKIPPED: built without CUDA (no nvcc at configure time)\n");
  benchmark::Shutdown();
  return 0;
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
