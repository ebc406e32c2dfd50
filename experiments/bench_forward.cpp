// One forward step of the whole model on the CPU backend: decode at batch 1 and 16 on the
// smollm2-135m shape (synthetic fp32 weights), against the bandwidth roofline: a decode step
// must read every weight once, so tokens/s <= bandwidth / weights_bytes * batch.
//   build/default/bench_forward --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <omp.h>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "kv/contiguous_kv.hpp"

using namespace ablate;

namespace {

constexpr double kReadBandwidth2Threads = 48e9;  // measured on the project's 2-core CPU machines

CpuBackend& smollm2() {
  static CpuBackend backend(synthetic_weights(*find_preset("smollm2-135m"), 0));
  return backend;
}

void BM_DecodeStep(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int context = static_cast<int>(state.range(1));
  CpuBackend& be = smollm2();
  const ModelShape& s = be.shape();
  ContiguousKvCache kv(s, static_cast<std::size_t>(batch) * (context + 8) * s.kv_floats_per_token() * 4, context + 8,
                       ContiguousKvCache::Reserve::MaxSeqLen);
  NaiveAttention att;
  std::vector<std::vector<int>> tokens(static_cast<std::size_t>(batch), std::vector<int>{42});
  ForwardBatch fb;
  for (int b = 0; b < batch; ++b) {
    kv.admit(b, context, 1);
    kv.set_length(b, context);  // the cache holds `context` (unset) tokens before this step
    fb.chunks.push_back({b, context, tokens[static_cast<std::size_t>(b)], false});
  }
  for (auto _ : state) benchmark::DoNotOptimize(be.forward(fb, kv, att).data());
  const double bytes = static_cast<double>(be.weights_bytes());
  state.counters["tokens_per_s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes_per_s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["roofline_tokens_per_s"] = kReadBandwidth2Threads / bytes * batch;
  state.counters["threads"] = omp_get_max_threads();
}

}  // namespace

BENCHMARK(BM_DecodeStep)->ArgNames({"batch", "context"})->Args({1, 64})->Args({16, 64})->Args({1, 512})
    ->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(1.0);  // warm: first-touch page faults of the KV pool stay out

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("roofline", "48 GB/s read bandwidth (2 threads); tokens/s <= 48e9 / weights_bytes * batch");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
