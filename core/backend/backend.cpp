#include "backend/backend.hpp"

#include "cpu/kernels.hpp"

namespace ablate {

const std::vector<int>& Backend::forward_argmax(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  const std::vector<float>& logits = forward(batch, kv, attention);
  const int vocab = shape().vocab_size, rows = batch.num_logit_rows();
  argmax_.resize(static_cast<std::size_t>(rows));
  cpu::argmax_rows(logits.data(), rows, vocab, argmax_.data());
  return argmax_;
}

}  // namespace ablate
