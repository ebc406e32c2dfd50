#include "config/registry.hpp"

#include <algorithm>
#include <filesystem>
#include <map>

#include "base/experiment_config.hpp"
#include "model/shape.hpp"

namespace ablate {

namespace {
struct AxisNames {
  std::vector<std::string> known;        // every name the project defines for the axis
  std::vector<std::string> implemented;  // those this build can run
};

const std::map<std::string, AxisNames, std::less<>>& axes() {
  static const std::map<std::string, AxisNames, std::less<>> table = {
#if defined(ABLATE_HAVE_CUDA)
      {"backend", {{"cpu", "cuda"}, {"cpu", "cuda"}}},  // cuda runs where a device is present
#else
      {"backend", {{"cpu", "cuda"}, {"cpu"}}},
#endif
      {"batching", {{"static", "continuous"}, {"static", "continuous"}}},
      {"kv.layout", {{"contiguous", "paged"}, {"contiguous", "paged"}}},
      {"attention", {{"naive", "flash", "flash_split"}, {"naive", "flash", "flash_split"}}},
      {"speculative.draft", {{"none", "model", "layer_skip", "simulated"}, {"none", "model", "layer_skip", "simulated"}}},
  };
  return table;
}
}  // namespace

const std::vector<std::string>& registered_names(std::string_view axis_key) {
  static const std::vector<std::string> none;
  auto it = axes().find(axis_key);
  return it == axes().end() ? none : it->second.known;
}

bool is_implemented(std::string_view axis_key, std::string_view name) {
  auto it = axes().find(axis_key);
  if (it == axes().end()) return false;
  for (const auto& n : it->second.implemented)
    if (n == name) return true;
  return false;
}

ModelConfig draft_model_config(const std::string& path) {
  ModelConfig m;
  if (std::filesystem::path(path).extension() == ".gguf") {
    m.source = "gguf";
    m.gguf = path;
  } else if (std::filesystem::is_directory(path)) {  // a Hugging Face checkpoint folder
    m.source = "hf";
    m.path = path;
  } else {
    m.source = "llama2c";
    m.path = path;
  }
  return m;
}

int effective_max_seq_len(const ExperimentConfig& cfg, const ModelShape& shape) {
  return cfg.max_seq_len > 0 ? std::min(cfg.max_seq_len, shape.max_seq_len) : shape.max_seq_len;
}

}  // namespace ablate
