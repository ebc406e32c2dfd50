#pragma once
// The speculation axis: a drafter proposes tokens that the target verifies in one pass.
#include <span>
#include <string>
#include <vector>

#include "base/request.hpp"

namespace ablate {

// What a drafter proposes for one sequence.
struct Draft {
  std::vector<int> tokens;   // up to k tokens to follow the sequence's current tokens
  // q: row i ([vocab] floats) is the distribution tokens[i] was drawn from, for lossless
  // rejection sampling at temperature > 0. Empty when drafting greedily.
  std::vector<float> probs;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual std::string name() const = 0;
  // Tokens proposed per sequence per step (0: no speculation).
  virtual int k() const = 0;
  // Propose up to k() tokens after each sequence's current tokens (all of which the target has
  // computed but the last). Result i belongs to seqs[i]; may be shorter than k() (never past the
  // sequence's output length less one: the target's bonus token needs that slot).
  virtual std::vector<Draft> propose(std::span<Sequence* const> seqs) = 0;
  // The target accepted the first `length` tokens of seq: drop the drafter's state beyond it.
  virtual void rollback(const Sequence& seq, int length) = 0;
  // The sequence finished or was preempted: drop all its state.
  virtual void release(const Sequence& seq) = 0;
  // Simulated acceptance: each draft token is accepted with this probability whatever its value
  // (not lossless: the output is not the target's). Negative: real verification.
  virtual double simulated_alpha() const { return -1.0; }
  bool lossless() const { return simulated_alpha() < 0.0; }
};

}  // namespace ablate
