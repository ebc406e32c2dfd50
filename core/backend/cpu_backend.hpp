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
  std::size_t weights_bytes() const override { return weights_bytes_; }
  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  // Like forward() but stops after the first `n_layers` layers, then the final norm and LM head
  // (self-speculation draft; n_layers = all layers is the full model).
  const std::vector<float>& forward_layers(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                           int n_layers);

 private:
  // Projections that read the same input are fused into one matrix, so a decode step streams
  // each layer in 4 matmuls instead of 7 (fewer thread fork/joins, longer reads):
  // wqkv = [wq; wk; wv] ([dim + 2 kv_dim][dim]) and w13 = [w1; w3] ([2 hidden][dim]).
  struct FusedLayer {
    std::vector<float> wqkv, w13;
  };
  Weights w_;                      // wq, wk, wv, w1, w3 moved into fused_ (left empty)
  std::vector<FusedLayer> fused_;
  std::size_t weights_bytes_ = 0;
  // Activations, reused across steps (sized for the largest batch seen).
  std::vector<float> x_, xb_, qkv_, att_, h13_, h_, logits_;
  std::vector<int> positions_;
};

}  // namespace ablate
