#pragma once
// The roofline's denominator for the CPU benchmarks (bench_forward, bench_kernels): the read
// bandwidth of this host, measured in the same run rather than assumed.
#include <benchmark/benchmark.h>
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

namespace ablate::bench {

// The best of 5 passes summing a 1 GiB buffer with every OpenMP thread: what a decode step's
// weight stream can get at most. Measured again beside every benchmark run (0.2 s): this host's
// bandwidth drifts by a fifth over minutes, so one figure at the start made later rooflines wrong.
inline double measure_read_bandwidth() {
  const std::size_t n = std::size_t{1} << 28;  // floats
  static std::vector<float> buf;
  if (buf.empty()) {
    buf.resize(n);
#pragma omp parallel for
    for (std::ptrdiff_t i = 0; i < static_cast<std::ptrdiff_t>(n); ++i) buf[static_cast<std::size_t>(i)] = 1.0f;
  }
  double best = 0, sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    // Each thread sums its slice with Eigen (vector lanes, several accumulators): a plain loop's
    // serial chain of adds is bound by the add latency and measured 9.7 GB/s here, a third of
    // what the decode itself streams.
    float sum = 0;
#pragma omp parallel reduction(+ : sum)
    {
      const auto t = static_cast<std::size_t>(omp_get_thread_num()), nt = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t lo = n * t / nt, hi = n * (t + 1) / nt;
      sum += Eigen::Map<const Eigen::VectorXf>(buf.data() + lo, static_cast<Eigen::Index>(hi - lo)).sum();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * sizeof(float)) / s);
    sink += sum;
  }
  benchmark::DoNotOptimize(sink);
  return best;
}

}  // namespace ablate::bench
