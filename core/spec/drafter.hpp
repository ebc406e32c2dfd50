#pragma once
// The speculation axis: a drafter proposes tokens that the target verifies in one pass.
#include <span>
#include <string>
#include <vector>

#include "engine/request.hpp"

namespace ablate {

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual std::string name() const = 0;
  // Tokens proposed per sequence per step (0: no speculation).
  virtual int k() const = 0;
  // Propose up to k() tokens after each sequence's current tokens (all of which the target has
  // computed but the last). Result i belongs to seqs[i]; may be shorter than k().
  virtual std::vector<std::vector<int>> propose(std::span<Sequence* const> seqs) = 0;
  // The target accepted the first `length` tokens of seq: drop the drafter's state beyond it.
  virtual void rollback(const Sequence& seq, int length) = 0;
  // The sequence finished or was preempted: drop all its state.
  virtual void release(const Sequence& seq) = 0;
};

}  // namespace ablate
