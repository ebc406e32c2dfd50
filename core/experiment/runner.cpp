#include "experiment/runner.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <tuple>
#include <memory>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "backend/backend.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/cuda_backend.hpp"
#include "config/registry.hpp"
#include "experiment/ci_target.hpp"
#include "experiment/factories.hpp"
#include "experiment/quality.hpp"
#include "experiment/run_order.hpp"
#include "experiment/stop.hpp"
#include "engine/engine.hpp"
#include "kv/kv_cache.hpp"
#include "base/paths.hpp"
#include "model/hf_checkpoint.hpp"
#include "model/prompts.hpp"
#include "model/weights.hpp"
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
  if (cfg.model.source == "hf") return read_hf_config(expand_path(cfg.model.path)).eos_token_id;  // config.json's, tokenizer.json or not
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
  eo.check_stop = throw_if_stopped;  // SIGINT/SIGTERM: the unit in flight is abandoned
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
  int warmups_done = 0;                  // in this process: a resumed point warms up again
  std::optional<QualityResult> quality;  // quality: true
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

// summary.csv's columns, fixed before the first unit so that every unit's row can be appended:
// the config keys, and the metrics with one acceptance_rate_pos_<i> per draft position of the
// largest speculative.k swept.
std::pair<std::vector<std::string>, std::vector<std::string>> summary_columns(const LoadedExperiment& exp) {
  std::vector<std::string> config, metrics;
  for (const auto& [k, v] : exp.points.front().columns) config.push_back(k);
  int max_k = 0;
  for (const auto& p : exp.points)
    if (p.config.speculative.draft != "none") max_k = std::max(max_k, p.config.speculative.k);
  RunRecords shape;
  shape.facts.accepted_at_pos.resize(static_cast<std::size_t>(max_k));
  for (const auto& [k, v] : summarize(shape, exp.points.front().config.slo)) metrics.push_back(k);
  if (std::any_of(exp.points.begin(), exp.points.end(), [](const SweepPoint& p) { return p.config.quality; }))
    for (const char* q : {"quality_kl", "quality_top1", "perplexity"}) metrics.push_back(q);
  return {config, metrics};
}

std::string provenance_value(const std::filesystem::path& folder, const std::string& key) {
  for (const auto& [k, v] : read_provenance_file(folder / "provenance.yaml"))
    if (k == key) return v;
  return "";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (std::size_t e; (e = text.find('\n', b)) != std::string::npos; b = e + 1) out.push_back(text.substr(b, e - b));
  if (b < text.size()) out.push_back(text.substr(b));
  return out;
}

// A resume continues the same experiment from the same build, or says what differs.
void check_resumable(const std::filesystem::path& folder, const std::string& config_yaml, const Provenance& now, bool force) {
  std::vector<std::string> diffs;
  if (provenance_value(folder, "config_hash") != config_hash(config_yaml)) {
    std::ifstream f(folder / "config.yaml", std::ios::binary);
    const std::string old((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto a = lines_of(old), b = lines_of(config_yaml);
    std::string d;
    int shown = 0;
    for (const auto& l : a)
      if (std::find(b.begin(), b.end(), l) == b.end() && shown++ < 8) d += "\n    - " + l;
    for (const auto& l : b)
      if (std::find(a.begin(), a.end(), l) == a.end() && shown++ < 16) d += "\n    + " + l;
    diffs.push_back("the resolved config differs (- the run's, + this one's):" + d);
  }
  const std::string built = provenance_value(folder, "build_commit");
  if (built != now.build_commit) diffs.push_back(fmt::format("the build differs: the run's {}, this one's {}", built, now.build_commit));
  if (diffs.empty()) return;
  std::string msg = fmt::format("{}: cannot resume:", folder.string());
  for (const auto& d : diffs) msg += "\n  " + d;
  if (force) {
    std::fprintf(stderr, "%s\n  (--force: resuming anyway)\n", msg.c_str());
    return;
  }
  throw std::runtime_error(msg + "\n  (--force resumes anyway; the rows then mix both)");
}

}  // namespace

std::filesystem::path run_experiment(const LoadedExperiment& exp, const RunOptions& opts, std::ostream& table) {
  namespace fs = std::filesystem;
  if (exp.points.empty()) throw std::invalid_argument(fmt::format("{}: no sweep points to run", exp.file));
  const ExperimentConfig& first = exp.points.front().config;
  const bool sharded = opts.shard_count > 0;
  if (sharded && exp.target_ci > 0)
    throw std::invalid_argument("--shard: target_ci decides rounds from every point's results, which needs them in one process");
  if (sharded && opts.run_id.empty())
    throw std::invalid_argument("--shard needs --run-id: every shard writes into the same run folder");
  if (exp.target_ci > 0) check_stats_available();

  std::string all_yaml;
  for (const auto& p : exp.points)
    all_yaml += exp.points.size() == 1 ? p.resolved_yaml
                                       : fmt::format("# point {}\n---\n{}\n", p.index, p.resolved_yaml);

  ResultsOptions ro{opts.results_root, first.experiment, opts.run_id, opts.force, all_yaml, {}, {}, opts.resume, 0};
  std::tie(ro.config_columns, ro.metric_columns) = summary_columns(exp);
  ro.total_units = static_cast<int>(exp.points.size()) * exp.repeat;
  if (sharded) {  // <run id>/shards/<I>/, resumed by itself when unfinished
    ro.results_root = opts.results_root / first.experiment / opts.run_id;
    ro.experiment = "shards";
    ro.run_id = std::to_string(opts.shard_index);
    const fs::path done = ro.results_root / "shards" / ro.run_id, partial = done.string() + ".partial";
    if (fs::exists(done / "provenance.yaml") && provenance_value(done, "status") == "complete" && !opts.force) {
      std::fprintf(stderr, "shard %d/%d of %s is complete; nothing to run\n", opts.shard_index, opts.shard_count,
                   opts.run_id.c_str());
      return done;
    }
    if (fs::exists(partial) && !opts.force) ro.resume = partial;
  }
  if (!ro.resume.empty() && fs::exists(ro.resume / "provenance.yaml") && provenance_value(ro.resume, "status") == "complete") {
    std::fprintf(stderr, "%s is a complete run; nothing to resume\n", ro.resume.string().c_str());
    return ro.resume;
  }

  const int cores = omp_get_num_procs();
  const bool interleaved = exp.order == "interleaved";
  // Each model/backend config is loaded once. Interleaved, every backend of the sweep stays
  // loaded, so that rounds interleave all points (a dtype sweep's arms included); sequential
  // keeps one at a time, for sweeps over models too large to hold together.
  std::map<std::string, std::unique_ptr<Backend>> loaded;
  const auto backend_for = [&](const ExperimentConfig& cfg) -> Backend& {
    const std::string key = backend_key(cfg);
    if (!interleaved && !loaded.count(key)) loaded.clear();  // free the old weights before loading new ones
    auto& b = loaded[key];
    if (!b) b = make_backend(cfg);
    return *b;
  };
  Backend& b0 = backend_for(first);
  const int threads0 = first.threads > 0 ? first.threads : cores;
  const Provenance prov0 = collect_provenance(threads0, b0.name(), b0.device_name());
  if (!ro.resume.empty()) check_resumable(ro.resume, all_yaml, prov0, opts.force);
  ResultsWriter writer(ro, prov0);
  if (!ro.resume.empty()) {
    std::fprintf(stderr, "resuming %s: %d of %d units done\n", writer.partial_dir().string().c_str(),
                 writer.resume_report().units_done, ro.total_units);
    for (const auto& r : writer.resume_report().repairs) std::fprintf(stderr, "  repaired %s\n", r.c_str());
  }

  const auto seed = static_cast<std::uint64_t>(first.seed);
  int total_units = ro.total_units;
  int unit_seq = 0;  // the unit's place in the planned order: run_index, and the shard it belongs to
  const std::string shard_text = sharded ? fmt::format("shard {}/{} ", opts.shard_index, opts.shard_count) : "";
  std::vector<PreparedPoint> prepared(exp.points.size());

  // A unit (a point's timed run), after the point's warm-ups in this process; skipped when done
  // already (a resume) or another shard's.
  const auto run_unit = [&](Backend& be, PreparedPoint& pp, int repeat) {
    const int seq = unit_seq++;
    const SweepPoint& point = *pp.point;
    if (writer.done(point.index, repeat) || (sharded && seq % opts.shard_count != opts.shard_index)) return;
    const ExperimentConfig& cfg = point.config;
    omp_set_num_threads(pp.threads);
    auto* cuda_backend = dynamic_cast<CudaBackend*>(&be);
    if (cuda_backend) {  // per run: points of one backend differ in these without a reload
      cuda_backend->set_cuda_graphs(cfg.cuda_graphs);
      cuda_backend->set_cuda_pdl(cfg.cuda_pdl);
      cuda_backend->set_cuda_l2_prefetch(cfg.cuda_l2_prefetch);
      cuda_backend->set_flash_decode_version(cfg.cuda_flash_decode_version);
      cuda_backend->set_kv_dtype(cfg.kv.dtype);
    }
    for (bool timed = false; !timed;) {
      timed = pp.warmups_done >= exp.warmup;
      std::string label = fmt::format("{}unit {}/{} point {}", shard_text, seq + 1, total_units, point.index);
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
      if (timed) {
        Metrics m = summarize(rec, cfg.slo);
        if (pp.quality) {
          m.emplace_back("quality_kl", pp.quality->kl);
          m.emplace_back("quality_top1", pp.quality->top1);
          if (pp.quality->perplexity) m.emplace_back("perplexity", *pp.quality->perplexity);
        }
        writer.add_run({point.index, repeat, seq, repeat}, point.columns, rec, m, pp.provenance);
      }
      else ++pp.warmups_done;
    }
  };

  // target_ci: every point of `group` within the target, by the statistics module.
  std::map<int, PointInterval> intervals;
  const auto target_met = [&](const std::vector<int>& group) {
    intervals = point_intervals(writer.rows(), exp.target_metric, writer.partial_dir());
    return std::all_of(group.begin(), group.end(), [&](int p) {
      const auto it = intervals.find(p);
      return it != intervals.end() && it->second.half_width && *it->second.half_width <= exp.target_ci;
    });
  };

  std::string targets;  // provenance.yaml lines: each point's interval when target_ci is set
  std::map<std::string, std::unique_ptr<Backend>> quality_reference;  // quality: an fp32 CPU backend a model
  std::vector<std::vector<int>> groups = backend_groups(exp);
  if (interleaved) {  // one group: every point in every round
    std::vector<int> all;
    for (const auto& g : groups) all.insert(all.end(), g.begin(), g.end());
    std::sort(all.begin(), all.end());
    groups = {all};
  }
  const auto point_backend = [&](int p) -> Backend& { return backend_for(exp.points[static_cast<std::size_t>(p)].config); };
  try {
    for (const std::vector<int>& group : groups) {
      for (int p : group) {
        throw_if_stopped();  // preparing (loading weights, measuring quality) can take a while
        const SweepPoint& point = exp.points[static_cast<std::size_t>(p)];
        const ExperimentConfig& cfg = point.config;
        Backend& be = point_backend(p);
        PreparedPoint& pp = prepared[static_cast<std::size_t>(p)];
        pp.point = &point;
        pp.threads = cfg.threads > 0 ? cfg.threads : cores;
        const int max_seq = effective_max_seq_len(cfg, be.shape());
        pp.requests = make_workload(cfg.workload, static_cast<std::uint64_t>(cfg.seed), be.shape().vocab_size, max_seq);
        apply_prompt_file(cfg, max_seq, pp.requests);
        pp.eos = eos_token_of(cfg);
        if (pp.threads != threads0 || be.name() != b0.name()) pp.provenance = collect_provenance(pp.threads, be.name(), be.device_name());
        if (cfg.quality && !pp.requests.empty()) {  // once a point: it does not depend on timing
          const std::string model = fmt::format("{}|{}|{}|{}|{}", cfg.model.source, cfg.model.preset, cfg.model.path,
                                                cfg.model.gguf, cfg.model.seed);
          auto& ref = quality_reference[model];
          if (!ref) ref = std::make_unique<CpuBackend>(load_weights(cfg.model), "fp32");
          const Request& r0 = pp.requests.front();
          const int continuation = std::min(64, std::max(0, max_seq - static_cast<int>(r0.prompt.size())));
          pp.quality = measure_quality(be, kv_storage_for(cfg, be), *ref, r0.prompt, continuation,
                                       cfg.model.source != "synthetic" && !cfg.workload.prompts.empty());
        }
      }
      quality_reference.clear();
      if (!interleaved) {
        for (int p : group) {
          int n = exp.repeat;
          for (int r = 0; r < n; ++r) {
            run_unit(point_backend(p), prepared[static_cast<std::size_t>(p)], r);
            if (r + 1 == n && exp.target_ci > 0 && n < exp.max_repeat && !target_met({p})) ++n, ++total_units;
          }
        }
      } else {
        int rounds = exp.repeat;
        for (int r = 0; r < rounds; ++r) {
          for (int p : round_order(group, seed, r)) run_unit(point_backend(p), prepared[static_cast<std::size_t>(p)], r);
          if (r + 1 == rounds && exp.target_ci > 0 && rounds < exp.max_repeat && !target_met(group)) {
            ++rounds;
            total_units += static_cast<int>(group.size());
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
  } catch (const RunInterrupted& e) {
    const int mine = sharded ? (total_units - opts.shard_index + opts.shard_count - 1) / opts.shard_count : total_units;
    writer.mark_interrupted(mine, e.what());
    std::fprintf(stderr,
                 "ablate: %s: stopped; %d of %d units complete in %s (status: interrupted)\n"
                 "resume with: %s%s%s\n",
                 e.what(), static_cast<int>(writer.rows().size()), mine, writer.partial_dir().string().c_str(),
                 opts.resume_command.c_str(), sharded ? "" : " --resume ", sharded ? "" : writer.partial_dir().string().c_str());
    throw;
  }

  std::string extra = fmt::format("order: {}\n", exp.order);
  if (sharded) extra += fmt::format("shard: {}\nshards: {}\n", opts.shard_index, opts.shard_count);
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
