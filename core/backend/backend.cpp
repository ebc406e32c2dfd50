#include "backend/backend.hpp"

#include <stdexcept>

#include "cpu/kernels.hpp"
#include "base/sampler.hpp"

namespace ablate {

const std::vector<int>& Backend::forward_argmax(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  const std::vector<float>& logits = forward(batch, kv, attention);
  const int vocab = shape().vocab_size, rows = batch.num_logit_rows();
  argmax_.resize(static_cast<std::size_t>(rows));
  cpu::argmax_rows(logits.data(), rows, vocab, argmax_.data());
  return argmax_;
}

const std::vector<int>& Backend::forward_sample(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                                const Sampler& sampler, std::span<const double> uniforms) {
  const std::vector<float>& logits = forward(batch, kv, attention);
  const auto vocab = static_cast<std::size_t>(shape().vocab_size);
  const auto rows = static_cast<std::size_t>(batch.num_logit_rows());
  if (uniforms.size() != rows) throw std::invalid_argument("Backend::forward_sample: one uniform per logit row");
  argmax_.resize(rows);
  for (std::size_t r = 0; r < rows; ++r)
    argmax_[r] = sampler.sample_uniform(std::span<const float>(logits).subspan(r * vocab, vocab), uniforms[r]);
  return argmax_;
}

}  // namespace ablate
