#pragma once
// What the backend runs at one step: a ragged batch of token chunks, each a slice of one
// sequence (a whole prompt, a prefill chunk, one decode token, or 1 + k tokens to verify).
#include <span>
#include <vector>

namespace ablate {

struct ForwardChunk {
  int seq = 0;                  // KV cache handle
  int pos0 = 0;                 // position of tokens[0]
  std::span<const int> tokens;  // K/V for these positions are written into the cache
  bool all_logits = false;      // logits for every token (verification), else the last only
};

struct ForwardBatch {
  std::vector<ForwardChunk> chunks;
  int padding_rows = 0;         // computed through every matmul, then discarded
  int num_tokens() const {
    int n = 0;
    for (const auto& c : chunks) n += static_cast<int>(c.tokens.size());
    return n;
  }
  int num_logit_rows() const {
    int n = 0;
    for (const auto& c : chunks) n += c.all_logits ? static_cast<int>(c.tokens.size()) : 1;
    return n;
  }
};

}  // namespace ablate
