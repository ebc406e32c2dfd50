#include "experiment/runner.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "backend/backend.hpp"
#include "backend/cuda_backend.hpp"
#include "config/registry.hpp"
#include "experiment/ci_target.hpp"
#include "experiment/factories.hpp"
#include "experiment/run_order.hpp"
#include "engine/engine.hpp"
#include "kv/kv_cache.hpp"
#include "model/prompts.hpp"
#include "model/tokenizer.hpp"
#include "report/csv.hpp"
#include "report/progress.hpp"
#include "report/provenance.hpp"
#include "report/results_writer.hpp"
#include "report/table.hpp"
#include "sched/scheduler.hpp"
#include "speculative/drafter.hpp"
#include "workload/workload.hpp"

namespace ablate {

namespace {

// The token that ends a request early when sampling.stop_at_eos is set; synthetic weights have
// no meaningful EOS, so their runs always generate exactly output_len.
int eos_token_of(const ExperimentConfig& cfg) {
  if (!cfg.sampling.stop_at_eos || cfg.model.source == "synthetic") return -1;
  if (cfg.model.source == "llama2c") return Llama2cTokenizer::kStop;
  return load_tokenizer(cfg.model)->eos_id();
}

// workload.prompts: request i's prompt becomes the file's prompt i mod N, tokenized (with BOS when
// the tokenizer adds one) and cut at the end so that prompt + output fit max_seq_len (prompt >= 1
// token, then the output is cut); arrivals and output lengths stay the workload's.
void apply_prompt_file(const ExperimentConfig& cfg, int max_seq_len, std::vector<Request>& requests) {
  if (cfg.workload.prompts.empty()) return;
  const auto ids = tokenize_prompts(read_prompts(cfg.workload.prompts), *load_tokenizer(cfg.model));
  for (auto& r : requests) {
    const auto& p = ids[static_cast<std::size_t>(r.id) % ids.size()];
    std::size_t len = p.size();
    if (max_seq_len > 0) {
      len = std::min(len, static_cast<std::size_t>(std::max(1, max_seq_len - r.output_len)));
      r.output_len = std::max(1, std::min(r.output_len, max_seq_len - static_cast<int>(len)));
    }
    r.prompt.assign(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(len));
  }
}

// One engine run of a sweep point: fresh cache, scheduler, attention and drafter every time, so
// repeats are independent; the backend (weights) is shared by the point's runs.
RunRecords run_once(const ExperimentConfig& cfg, Backend& backend, const std::vector<Request>& requests, int eos,
                    Progress* progress) {
  auto kv = make_kv_cache(cfg, backend);
  auto scheduler = make_scheduler(cfg);
  auto attention = make_attention(cfg);
  auto drafter = make_drafter(cfg, backend);
  EngineOptions eo;
  eo.seed = static_cast<std::uint64_t>(cfg.seed);
  eo.temperature = cfg.sampling.temperature;
  eo.top_p = cfg.sampling.top_p;
  eo.eos_token = eos;
  eo.profile_start_step = cfg.profile.start_step;
  eo.profile_end_step = cfg.profile.end_step;
  if (progress)
    eo.on_step = [progress](int done, int total, double elapsed, long long tokens) {
      progress->update(done, total, elapsed, elapsed > 0 ? static_cast<double>(tokens) / elapsed : 0.0);
    };
  backend.reset_workspace_peak();  // the backend outlives the run (a sweep reuses it)
  RunRecords r = run_engine({backend, *kv, *scheduler, *attention, *drafter}, requests, eo);
  r.facts.workspace_peak_bytes = backend.workspace_peak_bytes();
  r.facts.peak_host_bytes = peak_rss_bytes();
  r.facts.peak_device_bytes = backend.peak_device_bytes();
  return r;
}

// One sweep point made ready to run on its group's backend: its workload and stop token.
struct PreparedPoint {
  const SweepPoint* point = nullptr;
  std::vector<Request> requests;
  int eos = -1;
  int threads = 1;
  std::optional<Provenance> provenance;  // when it differs from the run's (threads, backend)
  int runs_done = 0;                     // warm-ups and timed runs so far
};

// The model and backend config that builds a backend: points that share it share the weights.
std::string backend_key(const ExperimentConfig& cfg) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}|{}", cfg.backend, cfg.dtype, cfg.model.source, cfg.model.preset, cfg.model.path,
                     cfg.model.gguf, cfg.model.seed, cfg.model.tokenizer);
}

// The sweep's points grouped by backend, groups in order of their first point: the runner loads
// each group's weights once and interleaves rounds within the group.
std::vector<std::vector<int>> backend_groups(const LoadedExperiment& exp) {
  std::vector<std::vector<int>> groups;
  std::vector<std::string> keys;
  for (const SweepPoint& p : exp.points) {
    const std::string k = backend_key(p.config);
    const auto it = std::find(keys.begin(), keys.end(), k);
    if (it == keys.end()) {
      keys.push_back(k);
      groups.push_back({p.index});
    } else {
      groups[static_cast<std::size_t>(it - keys.begin())].push_back(p.index);
    }
  }
  return groups;
}

}  // namespace

std::filesystem::path run_experiment(const LoadedExperiment& exp, const RunOptions& opts, std::ostream& table) {
  if (exp.points.empty()) throw std::invalid_argument(fmt::format("{}: no sweep points to run", exp.file));
  const ExperimentConfig& first = exp.points.front().config;
  if (exp.target_ci > 0) check_stats_available();

  std::string all_yaml;
  for (const auto& p : exp.points)
    all_yaml += exp.points.size() == 1 ? p.resolved_yaml
                                       : fmt::format("# point {}\n---\n{}\n", p.index, p.resolved_yaml);

  const int cores = omp_get_num_procs();
  std::unique_ptr<Backend> backend;
  std::string loaded_key;
  const auto backend_for = [&](const ExperimentConfig& cfg) -> Backend& {
    if (!backend || backend_key(cfg) != loaded_key) {
      backend.reset();  // free the old weights before loading new ones
      backend = make_backend(cfg);
      loaded_key = backend_key(cfg);
    }
    return *backend;
  };

  Backend& b0 = backend_for(first);
  const int threads0 = first.threads > 0 ? first.threads : cores;
  ResultsWriter writer({opts.results_root, first.experiment, opts.run_id, opts.force, all_yaml},
                       collect_provenance(threads0, b0.name(), b0.device_name()));

  const bool interleaved = exp.order == "interleaved";
  const auto seed = static_cast<std::uint64_t>(first.seed);
  int total_runs = static_cast<int>(exp.points.size()) * (exp.warmup + exp.repeat), run_index = 0;
  std::vector<PreparedPoint> prepared(exp.points.size());

  // One engine run of a point: its warm-ups first if it has not had them.
  const auto run_unit = [&](Backend& be, PreparedPoint& pp, int repeat) {
    const SweepPoint& point = *pp.point;
    const ExperimentConfig& cfg = point.config;
    omp_set_num_threads(pp.threads);
    auto* cuda_backend = dynamic_cast<CudaBackend*>(&be);
    if (cuda_backend) {  // per run: points of one backend differ in these without a reload
      cuda_backend->set_cuda_graphs(cfg.cuda_graphs);
      cuda_backend->set_cuda_pdl(cfg.cuda_pdl);
      cuda_backend->set_cuda_l2_prefetch(cfg.cuda_l2_prefetch);
      cuda_backend->set_flash_decode_version(cfg.cuda_flash_decode_version);
    }
    for (; pp.runs_done < exp.warmup + repeat + 1; ++pp.runs_done) {
      const bool timed = pp.runs_done >= exp.warmup;
      std::string label = fmt::format("run {}/{} point {}", run_index + 1, total_runs, point.index);
      for (const auto& [k, v] : point.swept) label += fmt::format(" {}={}", k, v);
      label += timed ? fmt::format(" repeat {}", repeat) : " warm-up";
      Progress progress(opts.quiet, label);
      const CudaGraphStats graphs0 = cuda_backend ? cuda_backend->graph_stats() : CudaGraphStats{};
      RunRecords rec = run_once(cfg, be, pp.requests, pp.eos, &progress);
      progress.finish();
      if (cuda_backend && cfg.cuda_graphs) {  // how much of the run the graphs covered
        const CudaGraphStats g = cuda_backend->graph_stats();
        std::fprintf(stderr, "%s: cuda_graphs: %lld of %lld forward passes replayed a graph (%lld captured)\n",
                     label.c_str(), g.replays - graphs0.replays, g.steps - graphs0.steps, g.captures - graphs0.captures);
      }
      if (timed)
        writer.add_run({point.index, repeat, run_index, repeat}, point.columns, rec, summarize(rec, cfg.slo), pp.provenance);
      ++run_index;
    }
  };

  // target_ci: every point of `group` within the target, by the statistics module.
  std::map<int, PointInterval> intervals;
  const auto target_met = [&](const std::vector<int>& group) {
    intervals = point_intervals(writer.rows(), exp.target_metric, writer.scratch_dir());
    return std::all_of(group.begin(), group.end(), [&](int p) {
      const auto it = intervals.find(p);
      return it != intervals.end() && it->second.half_width && *it->second.half_width <= exp.target_ci;
    });
  };

  std::string targets;  // provenance.yaml lines: each point's interval when target_ci is set
  for (const std::vector<int>& group : backend_groups(exp)) {
    Backend& be = backend_for(exp.points[static_cast<std::size_t>(group.front())].config);
    for (int p : group) {
      const SweepPoint& point = exp.points[static_cast<std::size_t>(p)];
      const ExperimentConfig& cfg = point.config;
      PreparedPoint& pp = prepared[static_cast<std::size_t>(p)];
      pp.point = &point;
      pp.threads = cfg.threads > 0 ? cfg.threads : cores;
      const int max_seq = effective_max_seq_len(cfg, be.shape());
      pp.requests = make_workload(cfg.workload, static_cast<std::uint64_t>(cfg.seed), be.shape().vocab_size, max_seq);
      apply_prompt_file(cfg, max_seq, pp.requests);
      pp.eos = eos_token_of(cfg);
      if (pp.threads != threads0 || be.name() != b0.name()) pp.provenance = collect_provenance(pp.threads, be.name(), be.device_name());
    }
    if (!interleaved) {
      for (int p : group) {
        int n = exp.repeat;
        for (int r = 0; r < n; ++r) {
          run_unit(be, prepared[static_cast<std::size_t>(p)], r);
          if (r + 1 == n && exp.target_ci > 0 && n < exp.max_repeat && !target_met({p})) ++n, ++total_runs;
        }
      }
    } else {
      int rounds = exp.repeat;
      for (int r = 0; r < rounds; ++r) {
        for (int p : round_order(group, seed, r)) run_unit(be, prepared[static_cast<std::size_t>(p)], r);
        if (r + 1 == rounds && exp.target_ci > 0 && rounds < exp.max_repeat && !target_met(group)) {
          ++rounds;
          total_runs += static_cast<int>(group.size());
        }
      }
    }
    if (exp.target_ci > 0) {
      target_met(group);
      for (int p : group) {
        const PointInterval& pi = intervals[p];
        const bool met = pi.half_width && *pi.half_width <= exp.target_ci;
        targets += fmt::format("  - {{point: {}, n: {}, centre: {}, half_width: {}, met: {}}}\n", p, pi.n,
                               format_number(pi.centre), pi.half_width ? format_number(*pi.half_width) : "null",
                               met ? "true" : "false");
        std::fprintf(stderr, "target_ci %s <= %g: point %d %s after %d repeats (half-width %s)\n",
                     exp.target_metric.c_str(), exp.target_ci, p, met ? "reached" : "NOT reached", pi.n,
                     pi.half_width ? fmt::format("{:.4f}", *pi.half_width).c_str() : "none");
      }
    }
  }

  std::string extra = fmt::format("order: {}\n", exp.order);
  if (exp.target_ci > 0)
    extra += fmt::format("target_ci: {}\ntarget_metric: {}\nmax_repeat: {}\ntarget_ci_points:\n{}", format_number(exp.target_ci),
                         exp.target_metric, exp.max_repeat, targets);
  const auto dir = writer.commit(extra);
  std::vector<SummaryRow> rows = writer.rows();  // the table by point, whatever order they ran in
  std::stable_sort(rows.begin(), rows.end(),
                   [](const SummaryRow& a, const SummaryRow& b) { return std::pair(a.point, a.repeat) < std::pair(b.point, b.repeat); });
  print_summary_table(table, rows, exp.swept_keys);
  return dir;
}

}  // namespace ablate
