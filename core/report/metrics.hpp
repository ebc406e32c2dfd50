#pragma once
// Per-run metrics from a run's records, named and defined as in shared/reference/metrics.md
// (vLLM's serving benchmark): times in ms with an `_ms` suffix, throughputs per second.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/experiment_config.hpp"
#include "base/records.hpp"

namespace ablate {

using Metrics = std::vector<std::pair<std::string, double>>;   // ordered name -> value
using Columns = std::vector<std::pair<std::string, std::string>>;  // ordered name -> text

// In this order: completed, duration_s, request_throughput, output_throughput,
// total_token_throughput, goodput; for ttft, tpot, itl, e2el: <m>_mean_ms, _median_ms, _std_ms,
// _p90_ms, _p95_ms, _p99_ms; queue_time_mean_ms, queue_time_p99_ms, preemptions, steps,
// mean_batch_size, padding_rows, weights_bytes, bits_per_weight, kv_capacity_bytes, kv_reserved_peak_bytes,
// kv_used_peak_bytes, kv_waste, peak_concurrency, kv_blocks_peak, prefix_hit_tokens, prefix_hit_rate,
// kv_blocks_shared_peak, prefill_tokens_computed, peak_host_bytes, peak_device_bytes,
// workspace_peak_bytes, num_drafts,
// draft_tokens, accepted_tokens, acceptance_rate, acceptance_length, draft_s, verify_s.
//  - Every record counts as a completed request. duration = first arrival to last token.
//  - tpot over requests with output_len > 1; itl pools the gaps of all requests; std is the
//    population std (numpy's default); percentiles interpolate linearly (numpy's default).
//  - goodput: requests within every nonzero SLO (a request without tpot meets the tpot SLO, as
//    in vLLM) / duration.
//  - kv_waste = 1 - sum(used * wall) / sum(reserved * wall) over steps.
//  - An empty population, a zero duration or a zero denominator gives 0, never NaN.
Metrics summarize(const RunRecords& r, const SloConfig& slo);

// The q-th percentile (0..100) of values, linearly interpolated between closest ranks
// (numpy.percentile's default); 0 for no values.
double percentile(std::vector<double> values, double q);

// The value of `name` in m; `fallback` when absent.
double metric(const Metrics& m, std::string_view name, double fallback = 0.0);

// One timed run as results report it: a sweep point, a repeat, its config columns, its metrics.
struct SummaryRow {
  int point = 0;
  int repeat = 0;     // the point's timed run number
  int run_index = 0;  // the run's place in the experiment's execution order (warm-ups included)
  int round = 0;      // the interleaving round: round r runs repeat r of every point
  Columns config;
  Metrics metrics;
};

}  // namespace ablate
