#pragma once
// speculative.draft: model. A second, smaller model with the target's vocabulary and its own KV
// cache (the target's layout, sized for the draft's shape) proposes k tokens per step.
#include <memory>

#include "backend/backend.hpp"
#include "speculative/autoregressive_drafter.hpp"

namespace ablate {

class ModelDrafter final : public AutoregressiveDrafter {
 public:
  // `kv` must be built for draft->shape(); draft->shape().vocab_size must equal the target's.
  ModelDrafter(std::unique_ptr<Backend> draft, std::unique_ptr<KvCache> kv, std::unique_ptr<Attention> attention,
               const DraftOptions& options)
      : AutoregressiveDrafter(
            "model",
            [this](const ForwardBatch& b, KvCache& c, Attention& a) -> const std::vector<float>& {
              return draft_->forward(b, c, a);
            },
            draft->shape().vocab_size, std::move(kv), std::move(attention), options),
        draft_(std::move(draft)) {}
  const Backend& draft_backend() const { return *draft_; }

 private:
  std::unique_ptr<Backend> draft_;
};

}  // namespace ablate
