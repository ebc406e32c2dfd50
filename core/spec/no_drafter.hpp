#pragma once
// speculative.draft: none. The baseline: every step emits one token per decoding sequence.
#include "spec/drafter.hpp"

namespace ablate {

class NoDrafter final : public Drafter {
 public:
  std::string name() const override { return "none"; }
  int k() const override { return 0; }
  std::vector<std::vector<int>> propose(std::span<Sequence* const> seqs) override {
    return std::vector<std::vector<int>>(seqs.size());
  }
  void rollback(const Sequence&, int) override {}
  void release(const Sequence&) override {}
};

}  // namespace ablate
