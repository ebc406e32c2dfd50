#pragma once
// The attention axis: how one layer's attention over a ragged batch is computed.
#include <cstddef>
#include <span>
#include <string>

#include "common/attention_problem.hpp"

namespace ablate {

class Attention {
 public:
  virtual ~Attention() = default;
  virtual std::string name() const = 0;
  // All sequences of the batch for one layer; the implementation chooses how to spread them
  // over threads.
  virtual void forward(std::span<const AttentionProblem> problems) = 0;
  // Scratch bytes the implementation needs for one problem of this size (a workspace counter:
  // O(n_q * kv_len) for naive, O(n_q) for flash).
  virtual std::size_t workspace_bytes(const AttentionProblem& p) const = 0;
};

}  // namespace ablate
