#pragma once
// speculative.draft: none. The baseline: every step emits one token per decoding sequence.
#include "speculative/drafter.hpp"

namespace ablate {

class NoDrafter final : public Drafter {
 public:
  std::string name() const override { return "none"; }
  int k() const override { return 0; }
  std::vector<Draft> propose(std::span<Sequence* const> seqs) override { return std::vector<Draft>(seqs.size()); }
  void rollback(const Sequence&, int) override {}
  void release(const Sequence&) override {}
};

}  // namespace ablate
