#include "experiment/runner.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "backend/backend.hpp"
#include "backend/cuda_backend.hpp"
#include "config/registry.hpp"
#include "experiment/factories.hpp"
#include "engine/engine.hpp"
#include "kv/kv_cache.hpp"
#include "model/prompts.hpp"
#include "model/tokenizer.hpp"
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

}  // namespace

std::filesystem::path run_experiment(const LoadedExperiment& exp, const RunOptions& opts, std::ostream& table) {
  if (exp.points.empty()) throw std::invalid_argument(fmt::format("{}: no sweep points to run", exp.file));
  const ExperimentConfig& first = exp.points.front().config;

  std::string all_yaml;
  for (const auto& p : exp.points)
    all_yaml += exp.points.size() == 1 ? p.resolved_yaml
                                       : fmt::format("# point {}\n---\n{}\n", p.index, p.resolved_yaml);

  const int cores = omp_get_num_procs();
  std::unique_ptr<Backend> backend;
  std::string backend_key;  // the model and backend config that built `backend`
  const auto backend_for = [&](const ExperimentConfig& cfg) -> Backend& {
    const std::string key = fmt::format("{}|{}|{}|{}|{}|{}|{}|{}", cfg.backend, cfg.dtype, cfg.model.source,
                                        cfg.model.preset, cfg.model.path, cfg.model.gguf, cfg.model.seed,
                                        cfg.model.tokenizer);
    if (!backend || key != backend_key) {
      backend.reset();  // free the old weights before loading new ones
      backend = make_backend(cfg);
      backend_key = key;
    }
    return *backend;
  };

  Backend& b0 = backend_for(first);
  const int threads0 = first.threads > 0 ? first.threads : cores;
  ResultsWriter writer({opts.results_root, first.experiment, opts.run_id, opts.force, all_yaml},
                       collect_provenance(threads0, b0.name(), b0.device_name()));

  const int total_runs = static_cast<int>(exp.points.size()) * (exp.warmup + exp.repeat);
  int run_no = 0;
  for (const SweepPoint& point : exp.points) {
    const ExperimentConfig& cfg = point.config;
    const int threads = cfg.threads > 0 ? cfg.threads : cores;
    omp_set_num_threads(threads);
    Backend& backend_ref = backend_for(cfg);
    auto* cuda_backend = dynamic_cast<CudaBackend*>(&backend_ref);
    if (cuda_backend) {  // per point: no reload to toggle
      cuda_backend->set_cuda_graphs(cfg.cuda_graphs);
      cuda_backend->set_cuda_pdl(cfg.cuda_pdl);
      cuda_backend->set_cuda_l2_prefetch(cfg.cuda_l2_prefetch);
      cuda_backend->set_flash_decode_version(cfg.cuda_flash_decode_version);
    }
    const int max_seq = effective_max_seq_len(cfg, backend_ref.shape());
    std::vector<Request> requests =
        make_workload(cfg.workload, static_cast<std::uint64_t>(cfg.seed), backend_ref.shape().vocab_size, max_seq);
    apply_prompt_file(cfg, max_seq, requests);
    const int eos = eos_token_of(cfg);
    std::optional<Provenance> prov;
    if (threads != threads0 || backend_ref.name() != b0.name())
      prov = collect_provenance(threads, backend_ref.name(), backend_ref.device_name());

    for (int i = 0; i < exp.warmup + exp.repeat; ++i) {
      ++run_no;
      const bool timed = i >= exp.warmup;
      std::string label = fmt::format("run {}/{} point {}", run_no, total_runs, point.index);
      for (const auto& [k, v] : point.swept) label += fmt::format(" {}={}", k, v);
      label += timed ? fmt::format(" repeat {}", i - exp.warmup) : " warm-up";
      Progress progress(opts.quiet, label);
      const CudaGraphStats graphs0 = cuda_backend ? cuda_backend->graph_stats() : CudaGraphStats{};
      RunRecords rec = run_once(cfg, backend_ref, requests, eos, &progress);
      progress.finish();
      if (cuda_backend && cfg.cuda_graphs) {  // how much of the run the graphs covered
        const CudaGraphStats g = cuda_backend->graph_stats();
        std::fprintf(stderr, "%s: cuda_graphs: %lld of %lld forward passes replayed a graph (%lld captured)\n",
                     label.c_str(), g.replays - graphs0.replays, g.steps - graphs0.steps, g.captures - graphs0.captures);
      }
      if (timed) writer.add_run(point.index, i - exp.warmup, point.columns, rec, summarize(rec, cfg.slo), prov);
    }
  }

  const auto dir = writer.commit();
  print_summary_table(table, writer.rows(), exp.swept_keys);
  return dir;
}

}  // namespace ablate
