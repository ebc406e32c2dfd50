// One forward step of the whole model on the CPU backend, smollm2-135m shape (synthetic weights),
// for each weight dtype (fp32, bf16, fp16, q8_0; native: the real SmolLM2-135M-Instruct Q4_1
// GGUF's own blocks, Q4_1 layers and a Q8_0 LM head, when models/ has it): decode at batch 1 and
// 16, and a 512-token prefill,
// against the bandwidth roofline measured in the same run: a decode step must read every matrix
// once, so tokens/s <= read bandwidth / bytes a step reads * batch (roofline_frac = the fraction
// of that reached; q8_0's bytes include its fp16 block scales).
// kv.dtype: decode at a long context with each KV element type.
//   OMP_NUM_THREADS=2 build/default/experiments/bench_forward --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <map>
#include <memory>
#include <vector>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "model/weights.hpp"
#include "kv/contiguous_kv.hpp"
#include "read_bandwidth.hpp"

using namespace ablate;
using bench::measure_read_bandwidth;

namespace {

const char* kDtypes[] = {"fp32", "bf16", "fp16", "q8_0", "native"};
const char* kKvDtypes[] = {"fp32", "bf16", "fp16", "fp8_e4m3", "int8"};
CpuBackend& smollm2(int dtype, int kv_dtype) {
  static std::map<std::pair<int, int>, std::unique_ptr<CpuBackend>> backends;
  auto& b = backends[{dtype, kv_dtype}];
  if (!b) {
    ModelConfig real;  // native needs a file's own encoding: the real model (same shape, same speed)
    real.source = "gguf";
    real.gguf = (project_root() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").string();
    const bool native = std::string(kDtypes[dtype]) == "native";
    b = std::make_unique<CpuBackend>(native ? load_weights(real, true) : synthetic_weights(*find_preset("smollm2-135m"), 0),
                                     kDtypes[dtype], kKvDtypes[kv_dtype]);
  }
  return *b;
}

void BM_Forward(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  const int dtype = static_cast<int>(state.range(2)), prefill = static_cast<int>(state.range(3));
  const int kv_dtype = static_cast<int>(state.range(4));
  if (std::string(kDtypes[dtype]) == "native" && !std::filesystem::exists(project_root() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")) {
    state.SkipWithError("native needs models/SmolLM2-135M-Instruct.Q4_1.gguf (experiments/fetch_smollm2.sh)");
    return;
  }
  CpuBackend& be = smollm2(dtype, kv_dtype);
  const ModelShape& s = be.shape();
  const int tokens_per_seq = prefill > 0 ? prefill : 1;
  const int max_len = context + tokens_per_seq + 8;
  ContiguousKvCache kv(s, static_cast<std::size_t>(batch) * max_len * kv_bytes_per_token(s, be.kv_storage()), max_len,
                       ContiguousKvCache::Reserve::MaxSeqLen, be.kv_storage());
  NaiveAttention att;
  std::vector<std::vector<int>> tokens(static_cast<std::size_t>(batch), std::vector<int>(static_cast<std::size_t>(tokens_per_seq), 42));
  ForwardBatch fb;
  // The cache holds `context` tokens before this step, set to values of a plausible size: memory
  // left as allocated may hold denormals or NaNs, whose arithmetic is many times slower.
  std::vector<float> kv_row(static_cast<std::size_t>(s.kv_dim()));
  unsigned state_bits = 12345;
  for (int b = 0; b < batch; ++b) {
    kv.admit(b, context + tokens_per_seq, 1);
    kv.ensure(b, context + tokens_per_seq);
    for (int l = 0; l < s.n_layers; ++l)
      for (int p = 0; p < context; ++p) {
        for (float& x : kv_row) x = static_cast<float>((state_bits = state_bits * 1664525u + 1013904223u) >> 8) / 8388608.0f - 1.0f;
        kv.store(l, b, p, kv_row.data(), kv_row.data(), s.kv_dim());
      }
    kv.set_length(b, context);
    fb.chunks.push_back({b, context, tokens[static_cast<std::size_t>(b)], false});
  }
  const double read_bandwidth = measure_read_bandwidth();  // just before the timed steps, with their threads
  for (auto _ : state) benchmark::DoNotOptimize(be.forward(fb, kv, att).data());
  const double bytes = static_cast<double>(be.matrix_bytes());
  state.counters["tokens_per_s"] = benchmark::Counter(batch * tokens_per_seq, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["matrix_bytes"] = bytes;
  if (prefill == 0) {
    state.counters["roofline_tokens_per_s"] = read_bandwidth / bytes * batch;
    state.counters["roofline_frac"] = benchmark::Counter(bytes / read_bandwidth, benchmark::Counter::kIsIterationInvariantRate);
  }
  state.counters["threads"] = omp_get_max_threads();
  state.counters["read_GBps"] = read_bandwidth / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const double read_bandwidth = measure_read_bandwidth();
  std::printf("read bandwidth: %.1f GB/s with %d threads at the start (best of 5 passes over 1 GiB; each run "
              "measures its own, read_GBps)\n", read_bandwidth / 1e9, omp_get_max_threads());
  std::fflush(stdout);
  benchmark::AddCustomContext("read_GBps", std::to_string(read_bandwidth / 1e9));
  auto* b = benchmark::RegisterBenchmark("BM_Forward/smollm2-135m", BM_Forward);
  b->ArgNames({"batch", "context", "dtype", "prefill", "kv"})->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(1.0);
  for (int d = 0; d < 5; ++d) {  // dtype 0 fp32, 1 bf16, 2 fp16, 3 q8_0, 4 native; fp32 KV
    b->Args({1, 64, d, 0, 0})->Args({16, 64, d, 0, 0})->Args({1, 512, d, 0, 0});
    b->Args({1, 0, d, 512, 0});  // a 512-token prompt
  }
  // kv.dtype 1 bf16, 2 fp16, 3 fp8_e4m3, 4 int8 where attention's reads count: 16 sequences of
  // 1024 tokens (bf16 matrices). The KV cache read is not in matrix_bytes (roofline_frac ignores it).
  for (int kv = 0; kv < 5; ++kv) b->Args({16, 1024, 1, 0, kv});
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
