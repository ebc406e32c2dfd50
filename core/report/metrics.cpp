#include "report/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

namespace ablate {

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = std::clamp(q, 0.0, 100.0) / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(rank));
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

double metric(const Metrics& m, std::string_view name, double fallback) {
  for (const auto& [k, v] : m)
    if (k == name) return v;
  return fallback;
}

namespace {

double ratio(double num, double den) { return den > 0 ? num / den : 0.0; }

// <name>_mean_ms ... <name>_p99_ms of values given in seconds.
void add_stats(Metrics& m, const std::string& name, std::vector<double> s) {
  for (auto& x : s) x *= 1000.0;
  const double n = static_cast<double>(s.size());
  const double mean = ratio(std::accumulate(s.begin(), s.end(), 0.0), n);
  double ss = 0;
  for (double x : s) ss += (x - mean) * (x - mean);
  m.emplace_back(name + "_mean_ms", mean);
  m.emplace_back(name + "_median_ms", percentile(s, 50));
  m.emplace_back(name + "_std_ms", std::sqrt(ratio(ss, n)));
  m.emplace_back(name + "_p90_ms", percentile(s, 90));
  m.emplace_back(name + "_p95_ms", percentile(s, 95));
  m.emplace_back(name + "_p99_ms", percentile(s, 99));
}

}  // namespace

Metrics summarize(const RunRecords& r, const SloConfig& slo) {
  std::vector<double> ttft, tpot, itl, e2el, queue;
  double first_arrival = 0, last_token = 0, prompt_tokens = 0, output_tokens = 0, preemptions = 0, hit_tokens = 0;
  int good = 0;
  for (std::size_t i = 0; i < r.requests.size(); ++i) {
    const RequestRecord& q = r.requests[i];
    first_arrival = i == 0 ? q.arrival_s : std::min(first_arrival, q.arrival_s);
    last_token = i == 0 ? q.last_token_s : std::max(last_token, q.last_token_s);
    prompt_tokens += q.prompt_len;
    output_tokens += q.output_len;
    preemptions += q.preemptions;
    hit_tokens += q.cached_prompt_tokens;
    ttft.push_back(q.ttft());
    e2el.push_back(q.e2el());
    queue.push_back(q.queue_time());
    if (q.has_tpot()) tpot.push_back(q.tpot());
    itl.insert(itl.end(), q.itl_s.begin(), q.itl_s.end());
    const bool ok = (slo.ttft_ms <= 0 || q.ttft() * 1000.0 <= slo.ttft_ms) &&
                    (slo.tpot_ms <= 0 || q.tpot() * 1000.0 <= slo.tpot_ms) &&  // tpot() is 0 without one
                    (slo.e2el_ms <= 0 || q.e2el() * 1000.0 <= slo.e2el_ms);
    good += ok;
  }
  const double duration = std::max(0.0, last_token - first_arrival);
  const double completed = static_cast<double>(r.requests.size());

  Metrics m;
  m.emplace_back("completed", completed);
  m.emplace_back("duration_s", duration);
  m.emplace_back("request_throughput", ratio(completed, duration));
  m.emplace_back("output_throughput", ratio(output_tokens, duration));
  m.emplace_back("total_token_throughput", ratio(prompt_tokens + output_tokens, duration));
  m.emplace_back("goodput", ratio(good, duration));
  add_stats(m, "ttft", std::move(ttft));
  add_stats(m, "tpot", std::move(tpot));
  add_stats(m, "itl", std::move(itl));
  add_stats(m, "e2el", std::move(e2el));
  m.emplace_back("queue_time_mean_ms", ratio(std::accumulate(queue.begin(), queue.end(), 0.0), completed) * 1000.0);
  m.emplace_back("queue_time_p99_ms", percentile(queue, 99) * 1000.0);
  m.emplace_back("preemptions", preemptions);

  double batch = 0, padding = 0, reserved_peak = 0, used_peak = 0, reserved_time = 0, used_time = 0, blocks_peak = 0;
  double shared_peak = 0, prefill_computed = 0;
  for (const StepRecord& s : r.steps) {
    batch += s.batch_size;
    padding += s.padding_rows;
    reserved_peak = std::max(reserved_peak, static_cast<double>(s.kv_reserved_bytes));
    used_peak = std::max(used_peak, static_cast<double>(s.kv_used_bytes));
    reserved_time += static_cast<double>(s.kv_reserved_bytes) * s.wall_s;
    used_time += static_cast<double>(s.kv_used_bytes) * s.wall_s;
    blocks_peak = std::max(blocks_peak, static_cast<double>(s.kv_blocks_allocated));
    shared_peak = std::max(shared_peak, static_cast<double>(s.kv_blocks_shared));
    prefill_computed += s.prefill_tokens;
  }
  const RunFacts& f = r.facts;
  m.emplace_back("steps", static_cast<double>(r.steps.size()));
  m.emplace_back("mean_batch_size", ratio(batch, static_cast<double>(r.steps.size())));
  m.emplace_back("padding_rows", padding);
  m.emplace_back("weights_bytes", static_cast<double>(f.weights_bytes));
  m.emplace_back("bits_per_weight", f.bits_per_weight);
  m.emplace_back("kv_capacity_bytes", static_cast<double>(f.kv_capacity_bytes));
  m.emplace_back("kv_reserved_peak_bytes", reserved_peak);
  m.emplace_back("kv_used_peak_bytes", used_peak);
  m.emplace_back("kv_waste", reserved_time > 0 ? 1.0 - used_time / reserved_time : 0.0);
  m.emplace_back("peak_concurrency", f.peak_concurrency);
  m.emplace_back("peak_batch_size", f.peak_batch_size);
  m.emplace_back("kv_blocks_peak", blocks_peak);
  m.emplace_back("prefix_hit_tokens", hit_tokens);
  m.emplace_back("prefix_hit_rate", ratio(hit_tokens, prompt_tokens));
  m.emplace_back("kv_blocks_shared_peak", shared_peak);
  m.emplace_back("prefill_tokens_computed", prefill_computed);
  m.emplace_back("peak_host_bytes", static_cast<double>(f.peak_host_bytes));
  m.emplace_back("peak_device_bytes", static_cast<double>(f.peak_device_bytes));
  m.emplace_back("workspace_peak_bytes", static_cast<double>(f.workspace_peak_bytes));

  const double drafts = static_cast<double>(f.num_drafts), accepted = static_cast<double>(f.accepted_tokens);
  m.emplace_back("num_drafts", drafts);
  m.emplace_back("draft_tokens", static_cast<double>(f.draft_tokens));
  m.emplace_back("accepted_tokens", accepted);
  m.emplace_back("acceptance_rate", ratio(accepted, static_cast<double>(f.draft_tokens)));
  m.emplace_back("acceptance_length", drafts > 0 ? 1.0 + accepted / drafts : 0.0);
  for (std::size_t i = 0; i < f.accepted_at_pos.size(); ++i)
    m.emplace_back("acceptance_rate_pos_" + std::to_string(i), ratio(static_cast<double>(f.accepted_at_pos[i]), drafts));
  m.emplace_back("draft_s", f.draft_s);
  m.emplace_back("verify_s", f.verify_s);
  m.emplace_back("simulated_acceptance", f.lossless ? 0.0 : 1.0);  // 1: not lossless, outputs not the target's
  return m;
}

}  // namespace ablate
