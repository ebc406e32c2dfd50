// ablate: the command line. `run` executes an experiment config (every sweep point, repeats and
// warm-ups) and writes results/<experiment>/<run id>/; `validate` checks a config and prints it
// resolved; `list` shows what the registry and the presets offer.
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "config/load.hpp"
#include "config/paths.hpp"
#include "config/registry.hpp"
#include "engine/runner.hpp"
#include "model/shape.hpp"

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
  std::cout << "\nModel presets (model.preset):\n";
  for (const auto& name : preset_names()) {
    const ModelShape s = *find_preset(name);
    std::cout << fmt::format("  {:<13} dim {:>4}  layers {:>2}  heads {:>2}/{:<2} ffn {:>5}  vocab {:>5}  {:.0f}M params\n",
                             name, s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.hidden_dim, s.vocab_size,
                             static_cast<double>(s.param_count()) / 1e6);
  }
  std::cout << "\nConfig keys:\n";
  for (const auto& k : config_schema())
    std::cout << fmt::format("  {:<28} {:<7} default {:<24} allowed {}\n      {}\n", k.key, k.type,
                             k.default_value.empty() ? "\"\"" : k.default_value, k.allowed, k.doc);
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

  auto* validate = app.add_subcommand("validate", "Check a config and print every point's resolved config");
  validate->add_option("config", config_file, "experiment YAML")->required();
  validate->add_option("--set", overrides, "override a config key (repeatable)");

  app.add_subcommand("list", "Registered implementations, model presets and every config key");

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
    opts.results_root = out_dir.empty() ? project_root() / "results" : std::filesystem::path(out_dir);
    const auto dir = run_experiment(exp, opts, std::cout);
    std::cerr << "results: " << dir.string() << "\n";
    return 0;
  } catch (const ConfigError& e) {
    std::cerr << "ablate: error: " << e.what() << "\n";
    return kBadInput;
  } catch (const std::exception& e) {
    std::cerr << "ablate: error: " << e.what() << "\n";
    return 1;
  }
}
