#pragma once
// speculative.draft: layer_skip. Self-speculation: the target's own first n layers, then its
// final norm and LM head (shared weights), with a KV cache of its own for those n layers.
#include <memory>
#include <stdexcept>
#include <string>

#include "backend/cpu_backend.hpp"
#include "speculative/autoregressive_drafter.hpp"

namespace ablate {

class LayerSkipDrafter final : public AutoregressiveDrafter {
 public:
  // `kv` must be built for layer_skip_shape(target.shape(), n_layers).
  LayerSkipDrafter(CpuBackend& target, int n_layers, std::unique_ptr<KvCache> kv, std::unique_ptr<Attention> attention,
                   const DraftOptions& options)
      : AutoregressiveDrafter(
            "layer_skip",
            [&target, n_layers](const ForwardBatch& b, KvCache& c, Attention& a) -> const std::vector<float>& {
              return target.forward_layers(b, c, a, n_layers);
            },
            target.shape().vocab_size, std::move(kv), std::move(attention), options) {}
};

// The draft's shape: the target's with only its first n layers (what its KV cache holds).
inline ModelShape layer_skip_shape(ModelShape target, int n_layers) {
  target.n_layers = n_layers;
  target.name += "-first" + std::to_string(n_layers);
  return target;
}

}  // namespace ablate

namespace ablate {

// The draft as a cache factory sees it: only its shape (it runs through the target's backend).
class LayerSkipShapeView final : public Backend {
 public:
  explicit LayerSkipShapeView(ModelShape shape) : shape_(std::move(shape)) {}
  std::string name() const override { return "layer_skip"; }
  std::string device_name() const override { return ""; }
  const ModelShape& shape() const override { return shape_; }
  std::size_t weights_bytes() const override { return 0; }
  const std::vector<float>& forward(const ForwardBatch&, KvCache&, Attention&) override {
    throw std::logic_error("LayerSkipShapeView: shape only; the draft runs through the target");
  }

 private:
  ModelShape shape_;
};

}  // namespace ablate
