// What prefix caching costs the KV bookkeeping of a decode step when nothing is shared (prefix 0):
// every step, each of `batch` sequences grows by one token (ensure) and commits it (commit: with
// kv.prefix_cache on, a block that fills is hashed and registered). Compare prefix_cache 0 / 1
// with a decode step's wall time (steps.csv of configs/ablations/prefix.yaml: the same shape).
//   build/prefix/experiments/bench_prefix_cache --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <numeric>
#include <vector>

#include "kv/paged_kv.hpp"
#include "model/shape.hpp"

using namespace ablate;

static void BM_DecodeStepKvBookkeeping(benchmark::State& state) {
  const bool prefix = state.range(0) != 0;
  const int batch = static_cast<int>(state.range(1));
  const ModelShape shape = *find_preset("smollm2-135m");
  const int block = 16, max_len = 1024;
  const std::size_t bytes = static_cast<std::size_t>(batch) * max_len * shape.kv_floats_per_token() * sizeof(float);
  PagedKvCache kv(shape, bytes, block, max_len, PagedKvCache::Admission::OnDemand, {}, prefix);
  std::vector<std::vector<int>> tokens(static_cast<std::size_t>(batch));
  for (int s = 0; s < batch; ++s) {
    tokens[static_cast<std::size_t>(s)].resize(max_len);
    std::iota(tokens[static_cast<std::size_t>(s)].begin(), tokens[static_cast<std::size_t>(s)].end(), s * max_len);
  }
  auto start = [&] {
    for (int s = 0; s < batch; ++s) {
      kv.release(s);
      kv.admit(s, 1, max_len - 1);
      kv.attach_prefix(s, std::span<const int>(tokens[static_cast<std::size_t>(s)]).first(1));
    }
  };
  start();
  int len = 0;
  for (auto _ : state) {
    if (++len == max_len) {
      state.PauseTiming();
      start();
      len = 1;
      state.ResumeTiming();
    }
    for (int s = 0; s < batch; ++s) {
      kv.ensure(s, len);
      kv.commit(s, std::span<const int>(tokens[static_cast<std::size_t>(s)]).first(static_cast<std::size_t>(len)));
    }
    benchmark::DoNotOptimize(kv.usage());
  }
}
BENCHMARK(BM_DecodeStepKvBookkeeping)->ArgNames({"prefix_cache", "batch"})->ArgsProduct({{0, 1}, {8, 64}});

BENCHMARK_MAIN();
