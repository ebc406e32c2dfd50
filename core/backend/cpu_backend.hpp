#pragma once
// The CPU backend: the whole Llama forward pass in fp32, in the spirit of llama2.c's run.c,
// over a ragged batch (all tokens of all chunks go through each matmul together).
#include <vector>

#include "backend/backend.hpp"
#include "model/weights.hpp"

namespace ablate {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(Weights weights);
  std::string name() const override { return "cpu"; }
  std::string device_name() const override;
  const ModelShape& shape() const override { return w_.shape; }
  std::size_t weights_bytes() const override { return w_.bytes(); }
  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  // Like forward() but stops after the first `n_layers` layers, then the final norm and LM head
  // (self-speculation draft; n_layers = all layers is the full model).
  const std::vector<float>& forward_layers(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                           int n_layers);

 private:
  Weights w_;
  // Activations, reused across steps (sized for the largest batch seen).
  std::vector<float> x_, xb_, q_, k_, v_, att_, h1_, h3_, logits_;
  std::vector<int> positions_;
};

}  // namespace ablate
