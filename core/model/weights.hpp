#pragma once
// Model weights as the CPU backend holds them (fp32, row-major [out][in]), from a seed or a file.
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "model/shape.hpp"

namespace ablate {

struct ModelConfig;

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
};

struct Weights {
  ModelShape shape;
  std::vector<float> token_embedding;  // [vocab][dim]
  std::vector<LayerWeights> layers;
  std::vector<float> rms_final;        // [dim]
  std::vector<float> classifier;       // [vocab][dim]; empty when tied to the embedding
  const float* lm_head() const { return classifier.empty() ? token_embedding.data() : classifier.data(); }
  std::size_t bytes() const;
};

// Deterministic weights from a seed, scaled so activations stay finite at any depth.
Weights synthetic_weights(const ModelShape& shape, unsigned long long seed);
// A llama2.c checkpoint (legacy version 0 layout; shared/models/README.md).
Weights load_llama2c(const std::string& path);
// The shape a model config will have, without loading weights (a llama2.c header is read).
// Throws std::runtime_error naming the file on a bad checkpoint.
ModelShape model_shape(const ModelConfig& cfg);
Weights load_weights(const ModelConfig& cfg);

}  // namespace ablate
