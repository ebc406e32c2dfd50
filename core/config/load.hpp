#pragma once
// YAML experiment files -> validated ExperimentConfigs, one per sweep point.
// Every problem is a ConfigError whose message names file:line:col, the dotted key, what is
// wrong and what is allowed. The schema below drives validation, docs and CSV columns alike.
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "base/experiment_config.hpp"

namespace ablate {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ConfigKey {            // one row per leaf key, in a stable documented order
  std::string key;            // dotted: "kv.memory_mb"
  std::string type;           // "int" | "number" | "string" | "bool" | "path" | "choice"
  std::string default_value;  // as text
  std::string allowed;        // human text: "contiguous, paged" or ">= 1" or "(0, 1]"
  std::string doc;            // one line
};
const std::vector<ConfigKey>& config_schema();

// The precisions each backend runs (`ablate list`; the config rules refuse the rest): weight
// dtypes and kv.dtype values, and what kv.dtype auto means there.
struct BackendPrecision {
  std::string backend;
  std::vector<std::string> dtypes, kv_dtypes;
  std::string kv_note;
};
const std::vector<BackendPrecision>& backend_precisions();

// `slo: {preset: NAME}` fills slo.ttft_ms and slo.tpot_ms (MLPerf Inference's server constraints).
struct SloPreset {
  const char* name;
  double ttft_ms, tpot_ms;
};
const std::vector<SloPreset>& slo_presets();

struct SweepPoint {
  int index = 0;                 // 0-based point number
  ExperimentConfig config;       // validated, typed; path keys hold expanded paths
  std::string resolved_yaml;     // every schema key with its value (defaults filled), for config.yaml
  std::vector<std::pair<std::string, std::string>> columns;  // every schema key -> value text, schema order
  std::vector<std::pair<std::string, std::string>> swept;    // only the swept keys -> value of this point
  std::string config_hash;       // 16 hex digits, FNV-1a 64 of resolved_yaml
};

struct LoadedExperiment {
  std::string file;
  std::vector<std::string> swept_keys;
  std::vector<SweepPoint> points;  // cross product; first swept key varies slowest
  // Whole-experiment keys (never swept), from the first point.
  int repeat = 1, warmup = 0;
  std::string order = "interleaved";
  double target_ci = 0.0;
  std::string target_metric = "output_throughput";
  int max_repeat = 20;
};

// overrides are "dotted.key=value" strings from --set; the value is parsed as a YAML node, so
// "kv.memory_mb=64", "workload.prompt_len={dist: uniform, min: 8, max: 64}",
// "slo.preset=interactive" and "sweep.kv.memory_mb=[64,128]" all work. A --set of a swept key
// replaces that sweep with the single value.
LoadedExperiment load_experiment(const std::filesystem::path& file,
                                 const std::vector<std::string>& overrides = {});
// The same from text; display_name stands for the file in messages (tests, stdin).
LoadedExperiment load_experiment_text(const std::string& yaml_text, const std::string& display_name,
                                      const std::vector<std::string>& overrides = {});

}  // namespace ablate
