#pragma once
// Model weights as the CPU backend holds them (fp32, row-major [out][in]), from a seed or a file.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/shape.hpp"

namespace ablate {

struct ModelConfig;

// A matrix as a GGUF file stores it, for dtype native: its ggml type (GgmlType) and rows x cols
// values in that type's encoding, row after row (whole blocks a row). Empty unless the model was
// loaded with keep_stored; the matching fp32 matrix is then left empty.
struct StoredMatrix {
  std::string source;  // "FILE: tensor NAME", for errors
  std::uint32_t ggml_type = 0;
  std::size_t rows = 0, cols = 0;
  std::vector<std::uint8_t> bytes;
  bool empty() const { return bytes.empty(); }
};

struct LayerWeights {
  std::vector<float> rms_att;   // [dim]
  std::vector<float> wq;        // [dim][dim]
  std::vector<float> wk;        // [kv_dim][dim]
  std::vector<float> wv;        // [kv_dim][dim]
  std::vector<float> wo;        // [dim][dim]
  std::vector<float> rms_ffn;   // [dim]
  std::vector<float> w1;        // [hidden][dim]  gate
  std::vector<float> w2;        // [dim][hidden]  down
  std::vector<float> w3;        // [hidden][dim]  up
  std::vector<float> bq, bk, bv;  // [dim], [kv_dim], [kv_dim] when shape.qkv_bias (Qwen2); else empty
  struct Stored {
    StoredMatrix wq, wk, wv, wo, w1, w2, w3;
  } stored;  // keep_stored: the same matrices as the file has them
};

struct Weights {
  ModelShape shape;
  std::vector<float> token_embedding;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> rms_final;        // [dim]
  std::vector<float> classifier;       // [vocab][dim]; empty when tied to the embedding
  StoredMatrix stored_lm_head;         // keep_stored: output.weight, or token_embd.weight when tied
  const float* lm_head() const { return classifier.empty() ? token_embedding.data() : classifier.data(); }
  std::size_t bytes() const;
};

// Deterministic weights from a seed, scaled so activations stay finite at any depth.
Weights synthetic_weights(const ModelShape& shape, unsigned long long seed);
// A llama2.c checkpoint (legacy version 0 layout; shared/models/README.md).
Weights load_llama2c(const std::string& path);
// The shape a model config will have, without loading weights (a llama2.c header, GGUF metadata or
// a Hugging Face config.json is read).
// Throws std::runtime_error naming the file on a bad checkpoint.
ModelShape model_shape(const ModelConfig& cfg);
// Checks that the model fits in host memory (check_weights_fit below), then loads it.
// keep_stored (dtype native): a checkpoint file's matrices stay in their stored encoding
// (StoredMatrix: a GGUF's blocks, a Hugging Face folder's F32/F16/BF16 tensors); throws
// std::invalid_argument for a source without one (has_stored_encoding).
Weights load_weights(const ModelConfig& cfg, bool keep_stored = false);
// Whether model.source reads a file with an encoding of its own to keep: gguf and hf (a preset's
// weights are generated in fp32; a llama2.c file is fp32).
bool has_stored_encoding(const std::string& source);

// Host memory this process can still use: /proc/meminfo's MemAvailable, capped by the cgroup's
// memory limit (v2 memory.max - memory.current, or v1) and by $ABLATE_HOST_MEMORY_MB when set
// (tests; a self-imposed budget). `source` says which bound applied. nullopt when none is readable.
struct HostMemory {
  std::uint64_t bytes = 0;
  std::string source;
};
std::optional<HostMemory> host_memory_available();
// The host bytes the backends' fp32 weights of `shape` take (every backend loads them on the host).
std::uint64_t weights_host_bytes(const ModelShape& shape);
// Throws std::runtime_error, before anything is allocated, when the fp32 weights of `shape` alone
// exceed `available` (which the OOM killer would otherwise end): estimated vs available bytes and
// where the figure comes from. `what` names the model in the message.
void check_weights_fit(const ModelShape& shape, const std::string& what, const std::optional<HostMemory>& available);

}  // namespace ablate
