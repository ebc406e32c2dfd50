// Attention on the CPU, every implementation (naive, flash, flash_split) through the Attention
// interface: context length, batch, prefill vs decode, contiguous vs paged (16-token pages in
// shuffled order), smollm2-135m heads (9 q / 3 kv, head_dim 64) and llama2-7b heads (32 / 32, 128).
// Counters: bytes/s (K+V+Q+out bytes read/written once), FLOP/s (useful causal FLOPs, 4*hd per
// (query head, visible key)), workspace_bytes (Attention::workspace_bytes of one problem: per
// (problem, KV head) task for naive, per thread for flash, tiles x threads + partials for
// flash_split), threads.
//   build/<preset>/experiments/bench_attention --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//   ... --benchmark_filter='/shape:0/ctx:4096/batch:1/prefill:1/page:0'   # the 2x target
// Default (about a minute a repetition): ctx 128, 1024, 4096, 16384 for decode, prefill up to 4096
// (smollm2) / 1024 (llama2-7b); ABLATE_BENCH_ATTN_FULL=1: every power of two 128..16384, prefill too.
// The CUDA kernels are timed by bench_attention_cuda.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"

using namespace ablate;

namespace {

struct Heads {
  const char* name;
  int n_heads, n_kv_heads, head_dim;
};
constexpr Heads kShapes[] = {{"smollm2-135m", 9, 3, 64}, {"llama2-7b", 32, 32, 128}};

// `batch` sequences of one layer, each with its own K/V pool (contiguous: one page; else shuffled
// pages), queries for the last n_q positions.
struct Setup {
  std::vector<float> q, out;
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<int32_t>> indices;
  std::vector<AttentionProblem> problems;
  Setup(const Heads& h, int ctx, int batch, int n_q, int page_size) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    const int qw = h.n_heads * h.head_dim, ts = h.n_kv_heads * h.head_dim;
    const int ps = page_size > 0 ? page_size : ctx, pages = (ctx + ps - 1) / ps;
    q.resize(std::size_t(batch) * n_q * qw);
    out.resize(q.size());
    for (float& f : q) f = d(rng);
    k.resize(batch);
    v.resize(batch);
    indices.resize(batch);
    for (int b = 0; b < batch; ++b) {
      k[b].resize(std::size_t(pages) * ps * ts);
      v[b].resize(k[b].size());
      for (auto* vec : {&k[b], &v[b]})
        for (float& f : *vec) f = d(rng);
      indices[b].resize(pages);
      std::iota(indices[b].begin(), indices[b].end(), 0);
      std::shuffle(indices[b].begin(), indices[b].end(), rng);
      AttentionProblem p;
      p.q = q.data() + std::size_t(b) * n_q * qw;
      p.out = out.data() + std::size_t(b) * n_q * qw;
      p.q_stride = p.out_stride = qw;
      p.n_q = n_q;
      p.q_pos0 = ctx - n_q;
      p.kv = {k[b].data(), v[b].data(), indices[b].data(), pages, ps, ctx, ts};
      p.n_heads = h.n_heads;
      p.n_kv_heads = h.n_kv_heads;
      p.head_dim = h.head_dim;
      p.scale = 1.0f / std::sqrt(float(h.head_dim));
      problems.push_back(p);
    }
  }
};

template <class Impl>
void BM_Attention(benchmark::State& state) {
  const Heads& h = kShapes[state.range(0)];
  const int ctx = int(state.range(1)), batch = int(state.range(2)), n_q = state.range(3) ? ctx : 1;
  const int page_size = int(state.range(4));
  Setup s(h, ctx, batch, n_q, page_size);
  Impl impl;
  for (auto _ : state) {
    impl.forward(s.problems);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  const AttentionProblem& p = s.problems[0];
  const double visible = double(n_q) * p.q_pos0 + 0.5 * double(n_q) * (n_q + 1);  // sum over queries
  const double kv_bytes = 2.0 * ctx * p.kv.token_stride * sizeof(float);
  const double qo_bytes = 2.0 * n_q * h.n_heads * h.head_dim * sizeof(float);
  state.SetBytesProcessed(static_cast<int64_t>(batch * (kv_bytes + qo_bytes) * double(state.iterations())));
  state.counters["FLOP/s"] = benchmark::Counter(batch * 4.0 * h.head_dim * h.n_heads * visible,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = double(impl.workspace_bytes(p));
  state.counters["threads"] = omp_get_max_threads();
  state.SetLabel(h.name);
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"shape", "ctx", "batch", "prefill", "page"});
  const bool full = std::getenv("ABLATE_BENCH_ATTN_FULL") != nullptr;
  const std::vector<int> ctxs = full ? std::vector<int>{128, 256, 512, 1024, 2048, 4096, 8192, 16384}
                                     : std::vector<int>{128, 1024, 4096, 16384};
  constexpr double kMaxKvBytes = 1.1 * (1 << 30);  // per benchmark, all sequences' K and V
  for (int shape : {0, 1})
    for (int prefill : {1, 0})
      for (int batch : {1, 8})
        for (int page : {0, 16})
          for (int ctx : ctxs) {
            const Heads& h = kShapes[shape];
            if (prefill && batch > 1) continue;
            // naive prefill at 16k (smollm2) or 4k (llama2-7b) takes seconds per iteration
            if (prefill && !full && ctx > (shape == 0 ? 4096 : 1024)) continue;
            if (2.0 * batch * ctx * h.n_kv_heads * h.head_dim * sizeof(float) > kMaxKvBytes) continue;
            b->Args({shape, ctx, batch, prefill, page});
          }
  b->MinTime(0.2);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Attention, NaiveAttention)->Name("BM_AttentionNaive")->Apply(args)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Attention, FlashAttention)->Name("BM_AttentionFlash")->Apply(args)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Attention, FlashSplitAttention)->Name("BM_AttentionFlashSplit")->Apply(args)->UseRealTime()->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("shapes", "shape 0 = smollm2-135m (9 heads, 3 kv, hd 64); 1 = llama2-7b (32, 32, 128)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
