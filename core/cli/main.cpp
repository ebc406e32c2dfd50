// ablate: the command line. `run` executes an experiment config (every sweep point, repeats and
// warm-ups) and writes results/<experiment>/<run id>/; `validate` checks a config and prints it
// resolved; `list` shows what the registry and the presets offer.
#include <algorithm>
#include <chrono>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "config/load.hpp"
#include "base/paths.hpp"
#include "config/registry.hpp"
#include "experiment/runner.hpp"
#include "experiment/slurm.hpp"
#include "experiment/stop.hpp"
#include "model/shape.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "backend/cuda_backend.hpp"
#include "base/experiment_config.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "model/tokenizer.hpp"
#include "model/weights.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

using namespace ablate;

namespace {

constexpr int kBadInput = 2;

void print_list() {
  std::cout << "Registered implementations (config key: names; * = not built yet):\n";
  for (const char* axis : {"backend", "batching", "kv.layout", "attention", "speculative.draft"}) {
    std::string names;
    for (const auto& n : registered_names(axis))
      names += (names.empty() ? "" : ", ") + n + (is_implemented(axis, n) ? "" : "*");
    std::cout << fmt::format("  {:<18} {}\n", axis, names);
  }
  std::cout << "\nPrecision per backend (dtype: weights; kv.dtype: K/V elements):\n";
  for (const auto& p : backend_precisions())
    std::cout << fmt::format("  {:<5} dtype {:<30} kv.dtype {}\n        ({})\n", p.backend, fmt::format("{}", fmt::join(p.dtypes, ", ")),
                             fmt::format("{}", fmt::join(p.kv_dtypes, ", ")), p.kv_note);
  std::cout << "\nModel presets (model.preset):\n";
  for (const auto& name : preset_names()) {
    const ModelShape s = *find_preset(name);
    std::cout << fmt::format("  {:<13} dim {:>4}  layers {:>2}  heads {:>2}/{:<2} ffn {:>5}  vocab {:>5}  {:.0f}M params\n",
                             name, s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.hidden_dim, s.vocab_size,
                             static_cast<double>(s.param_count()) / 1e6);
  }
  std::cout << "\nSLO presets (slo.preset; each sets slo.ttft_ms and slo.tpot_ms, a key written beside it wins):\n";
  for (const auto& p : slo_presets())
    std::cout << fmt::format("  {:<13} ttft_ms {:>5}  tpot_ms {:>4}\n", p.name, p.ttft_ms, p.tpot_ms);
  std::cout << "\nConfig keys:\n";
  for (const auto& k : config_schema())
    std::cout << fmt::format("  {:<28} {:<7} default {:<24} allowed {}\n      {}\n", k.key, k.type,
                             k.default_value.empty() ? "\"\"" : k.default_value, k.allowed, k.doc);
}

struct GenerateOptions {
  std::string model, tokenizer, prompt;
  std::string dtype = "fp32";
  int n = 64;
  double temperature = 0.0;
  double top_p = 1.0;
  int seed = 0;
  bool no_stop = false;
};

// `ablate generate`: one prompt through the engine (CPU, batch 1), the continuation as text on
// stdout, timings on stderr.
int generate(const GenerateOptions& o) {
  ModelConfig cfg;
  const bool gguf = std::filesystem::path(o.model).extension() == ".gguf";
  const bool hf = std::filesystem::is_directory(o.model);  // config.json, *.safetensors, tokenizer.json
  cfg.source = gguf ? "gguf" : hf ? "hf" : "llama2c";
  (gguf ? cfg.gguf : cfg.path) = o.model;
  cfg.tokenizer = o.tokenizer;
  if (!gguf && !hf && o.tokenizer.empty())
    throw std::runtime_error(o.model + ": not a .gguf file or a Hugging Face folder; a llama2.c checkpoint needs --tokenizer");
  const auto t0 = std::chrono::steady_clock::now();
  const auto tok = load_tokenizer(cfg);
  if (o.dtype == "native" && !has_stored_encoding(cfg.source))
    throw std::runtime_error(o.model + ": --dtype native keeps a checkpoint file's own encoding; a llama2.c checkpoint is fp32 (use --dtype fp32)");
  CpuBackend backend(load_weights(cfg, o.dtype == "native"), o.dtype);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const ModelShape& s = backend.shape();
  std::vector<int> prompt = tok->tokenize(o.prompt);
  if (prompt.empty()) {
    if (tok->bos_id() < 0) throw std::runtime_error("empty prompt and the tokenizer has no BOS token");
    prompt.push_back(tok->bos_id());
  }
  const int len = static_cast<int>(prompt.size()) + o.n;
  if (len > s.max_seq_len)
    throw std::runtime_error(fmt::format("prompt ({} tokens) + -n {} exceeds the model's {} positions", prompt.size(), o.n, s.max_seq_len));
  ContiguousKvCache kv(s, static_cast<std::size_t>(s.kv_floats_per_token()) * sizeof(float) * static_cast<std::size_t>(len), len,
                       ContiguousKvCache::Reserve::MaxSeqLen);
  StaticScheduler sched(1);
  NaiveAttention attention;
  NoDrafter none;
  EngineOptions eo;
  eo.seed = static_cast<std::uint64_t>(o.seed);
  eo.temperature = o.temperature;
  eo.top_p = o.top_p;
  eo.eos_token = o.no_stop ? -1 : tok->eos_id();
  const RunRecords rec = run_engine({backend, kv, sched, attention, none}, {{0, 0.0, prompt, o.n}}, eo);
  std::vector<int> out = rec.output_tokens.at(0);
  const bool stopped = !out.empty() && !o.no_stop && out.back() == tok->eos_id();
  if (stopped) out.pop_back();
  // Each token's text after the one before it, starting from the prompt's last token (llama2.c
  // drops a piece's leading space only right after BOS).
  std::string text;
  int prev = prompt.back();
  for (int t : out) text += tok->token_text(prev, t), prev = t;
  std::cout << text << std::endl;
  const auto& r = rec.requests.at(0);
  std::cerr << fmt::format("[{} ({}): loaded in {:.2f} s; prompt {} tokens, TTFT {:.1f} ms; {} tokens generated{}; decode {:.1f} tok/s]\n",
                           s.name, o.dtype, load_s, prompt.size(), r.ttft() * 1e3, r.output_len, stopped ? " (stopped at EOS)" : "",
                           r.has_tpot() ? 1.0 / r.tpot() : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ablate: how much does each LLM-inference throughput technique buy, everything else held fixed"};
  app.require_subcommand(1);

  RunOptions opts;
  std::string config_file, out_dir;
  std::vector<std::string> overrides;
  auto* run = app.add_subcommand("run", "Run an experiment config; results go to <out>/<experiment>/<run id>/");
  run->add_option("config", config_file, "experiment YAML (see configs/)")->required();
  run->add_option("--set", overrides, "override a config key, e.g. --set kv.memory_mb=128 (repeatable)");
  run->add_option("--out", out_dir, "results root folder (default: <project>/results)");
  run->add_option("--run-id", opts.run_id, "name of the run folder (default: UTC time + config hash)");
  run->add_flag("--force", opts.force, "replace an existing run folder of the same id");
  run->add_flag("--quiet", opts.quiet, "no progress lines on stderr");
  std::string resume_dir, shard;
  run->add_option("--resume", resume_dir, "continue the unfinished run in this folder (<run id>.partial): only its missing units run");
  run->add_option("--shard", shard, "I/N: run units I, I+N, I+2N, ... (0 <= I < N) into <run id>/shards/I/ (needs --run-id)");

  std::string merge_dir;
  auto* merge = app.add_subcommand("merge", "Combine a sharded run's shards/<I>/ into the run folder's CSVs");
  merge->add_option("run_dir", merge_dir, "the run folder (<out>/<experiment>/<run id>)")->required();

  SlurmOptions slurm_opts;
  std::string slurm_config;
  auto* slurm = app.add_subcommand("slurm", "Write (and with --submit, submit) a Slurm array job, one shard per task, plus a merge job");
  slurm->add_option("config", slurm_config, "experiment YAML")->required();
  slurm->add_option("--set", slurm_opts.overrides, "override a config key (repeatable)");
  slurm->add_option("--shards", slurm_opts.shards, "array tasks (default 2)")->check(CLI::Range(1, 100000));
  slurm->add_option("--partition", slurm_opts.partition, "#SBATCH --partition");
  slurm->add_option("--time", slurm_opts.time, "#SBATCH --time, per task (e.g. 4:00:00)");
  slurm->add_option("--gpus-per-task", slurm_opts.gpus_per_task, "#SBATCH --gpus-per-task");
  slurm->add_option("--cpus-per-task", slurm_opts.cpus_per_task, "#SBATCH --cpus-per-task");
  slurm->add_option("--account", slurm_opts.account, "#SBATCH --account");
  slurm->add_option("--extra", slurm_opts.extra, "another #SBATCH line, as written (repeatable)");
  slurm->add_option("--out", out_dir, "results root folder (default: <project>/results)");
  slurm->add_option("--run-id", slurm_opts.run_id, "the run folder's name (default: UTC time + config hash)");
  slurm->add_flag("--submit", slurm_opts.submit, "submit with sbatch and print the job ids");

  auto* validate = app.add_subcommand("validate", "Check a config and print every point's resolved config");
  validate->add_option("config", config_file, "experiment YAML")->required();
  validate->add_option("--set", overrides, "override a config key (repeatable)");

  app.add_subcommand("list", "Registered implementations, model presets and every config key");

  GenerateOptions gen;
  auto* generate_cmd = app.add_subcommand("generate", "Continue a prompt with a real model (CPU, batch 1); prints the text");
  generate_cmd->add_option("--model", gen.model, "checkpoint: .gguf (llama architecture), a Hugging Face folder (Llama, Mistral, Qwen2), or a llama2.c .bin with --tokenizer")->required();
  generate_cmd->add_option("--tokenizer", gen.tokenizer, "llama2.c tokenizer .bin (not needed for .gguf)");
  generate_cmd->add_option("--prompt", gen.prompt, "the text to continue")->required();
  generate_cmd->add_option("-n", gen.n, "tokens to generate (default 64)")->check(CLI::Range(1, 1 << 20));
  generate_cmd->add_option("--temperature", gen.temperature, "0 = greedy (default)")->check(CLI::NonNegativeNumber);
  // The same range as the config's sampling.top_p: (0, 1]; a mass of 0 keeps no token.
  generate_cmd->add_option("--top-p", gen.top_p, "nucleus sampling mass in (0, 1] (default 1)")
      ->check(CLI::Validator([](std::string& v) -> std::string {
        double x = 0;
        try { x = std::stod(v); } catch (const std::exception&) { return "--top-p: not a number: " + v; }
        return x > 0.0 && x <= 1.0 ? "" : "--top-p: " + v + " is out of range; allowed: (0, 1], as sampling.top_p";
      }, "(0, 1]"));
  generate_cmd->add_option("--dtype", gen.dtype, "weight precision, as the config's dtype (default fp32)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16", "q8_0", "native"}));
  generate_cmd->add_option("--seed", gen.seed, "sampling seed (default 0)");
  generate_cmd->add_flag("--no-stop", gen.no_stop, "keep going past the end-of-sequence token");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kBadInput;
  }

  try {
    if (app.got_subcommand("list")) {
      print_list();
      return 0;
    }
    if (app.got_subcommand("generate")) return generate(gen);
    if (app.got_subcommand("merge")) {
      try {
        std::cerr << "merged into " << merge_shards(merge_dir, std::cerr).string() << "\n";
      } catch (const std::invalid_argument& e) {
        std::cerr << "ablate: error: merge " << merge_dir << ": " << e.what() << "\n";
        return kBadInput;
      }
      return 0;
    }
    if (app.got_subcommand("slurm")) {
      slurm_opts.config = slurm_config;
      slurm_opts.results_root = out_dir.empty() ? project_root() / "results" : std::filesystem::path(out_dir);
      slurm_opts.ablate = std::filesystem::canonical("/proc/self/exe");
      const LoadedExperiment exp = load_experiment(slurm_config, slurm_opts.overrides);
      try {
        const SlurmScripts js = write_slurm_job(exp, slurm_opts);
        std::cout << fmt::format("array job: {}\nmerge job: {}\n", js.array_script.string(), js.merge_script.string());
        if (slurm_opts.submit)
          std::cout << fmt::format("submitted: array {} ({} tasks), merge {} (after every task has ended)\n"
                                   "watch:     squeue -j {},{}\nresults:   {} (shards/<I>/ as tasks finish, merged CSVs at the end)\n",
                                   js.array_job, slurm_opts.shards, js.merge_job, js.array_job, js.merge_job, js.run_dir.string());
        else
          std::cout << fmt::format("submit:    jid=$(sbatch --parsable {}) && sbatch --dependency=afterany:$jid {}\n",
                                   js.array_script.string(), js.merge_script.string());
      } catch (const std::invalid_argument& e) {
        std::cerr << "ablate: error: slurm: " << e.what() << "\n";
        return kBadInput;
      }
      return 0;
    }
    if (!shard.empty()) {  // I/N, 0 <= I < N
      const auto slash = shard.find('/');
      int i = -1, n = 0;
      try {
        if (slash != std::string::npos) i = std::stoi(shard.substr(0, slash)), n = std::stoi(shard.substr(slash + 1));
      } catch (const std::exception&) {
      }
      if (slash == std::string::npos || n < 1 || i < 0 || i >= n) {
        std::cerr << "ablate: error: --shard " << shard << ": expected I/N with 0 <= I < N (shard indices start at 0, "
                  << "as Slurm's SLURM_ARRAY_TASK_ID does)\n";
        return kBadInput;
      }
      opts.shard_index = i;
      opts.shard_count = n;
    }
    if (!resume_dir.empty()) {
      if (!shard.empty()) {
        std::cerr << "ablate: error: --resume with --shard: a shard resumes its own folder; give the same --shard and --run-id\n";
        return kBadInput;
      }
      if (!std::filesystem::exists(std::filesystem::path(resume_dir) / "provenance.yaml")) {
        std::cerr << "ablate: error: --resume " << resume_dir << ": not a run folder (no provenance.yaml)\n";
        return kBadInput;
      }
      opts.resume = resume_dir;
    }
    const LoadedExperiment exp = load_experiment(config_file, overrides);
    if (app.got_subcommand("validate")) {
      for (const auto& p : exp.points) {
        std::cout << fmt::format("# point {} of {}", p.index + 1, exp.points.size());
        for (const auto& [k, v] : p.swept) std::cout << fmt::format("  {}={}", k, v);
        std::cout << fmt::format("  (config hash {})\n{}\n", p.config_hash, p.resolved_yaml);
      }
      std::cerr << fmt::format("{}: OK, {} point(s) x {} repeat(s)\n", config_file, exp.points.size(), exp.repeat);
      return 0;
    }
    // A CUDA run on a machine without a usable device is bad input for this machine: say so
    // before anything is loaded or written.
    if (std::any_of(exp.points.begin(), exp.points.end(), [](const auto& p) { return p.config.backend == "cuda"; })) {
      try {
        cuda_backend_check_device();
      } catch (const std::exception& e) {
        std::cerr << "ablate: error: " << config_file << ": backend: cuda: " << e.what() << "\n";
        return kBadInput;
      }
    }
    opts.results_root = out_dir.empty() ? project_root() / "results" : std::filesystem::path(out_dir);
    for (int i = 0; i < argc; ++i) {  // the command again, for the "resume with" hint
      if (std::string(argv[i]) == "--resume") { ++i; continue; }
      opts.resume_command += (i ? " " : "") + std::string(argv[i]);
    }
    install_stop_handlers();
    const auto dir = run_experiment(exp, opts, std::cout);
    std::cerr << "results: " << dir.string() << "\n";
    return 0;
  } catch (const RunInterrupted& e) {
    return 128 + e.signal;
  } catch (const ConfigError& e) {
    std::cerr << "ablate: error: " << e.what() << "\n";
    return kBadInput;
  } catch (const std::exception& e) {
    std::cerr << "ablate: error: " << e.what() << "\n";
    return 1;
  }
}
