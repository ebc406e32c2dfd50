#pragma once
// The names a config may give for each axis (the factories that build them are
// experiment/factories.hpp), and the model facts the config checks share with the runner.
#include <string>
#include <string_view>
#include <vector>

namespace ablate {

struct ExperimentConfig;

// Names a config may give for an axis key: "backend", "batching", "kv.layout", "attention",
// "speculative.draft". Empty for any other key.
const std::vector<std::string>& registered_names(std::string_view axis_key);
// Same, but only those implemented in this build (e.g. "cuda" only with a CUDA build); the
// rest are known names whose use is reported as not yet available.
bool is_implemented(std::string_view axis_key, std::string_view name);

struct ModelShape;
struct ModelConfig;
// The model config of a draft checkpoint: .gguf files by their extension, a folder as a Hugging Face
// checkpoint (hf), else llama2.c.
ModelConfig draft_model_config(const std::string& path);
// The longest sequence a run allows: max_seq_len if set (capped by the model), else the model's.
int effective_max_seq_len(const ExperimentConfig& cfg, const ModelShape& shape);

}  // namespace ablate
