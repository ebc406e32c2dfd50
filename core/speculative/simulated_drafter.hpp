#pragma once
// speculative.draft: simulated. A real draft model runs (its cost is real), but the verifier
// accepts each draft token with probability alpha whatever its value, so speedup can be mapped
// against acceptance with synthetic weights (whose real acceptance is near zero). Not lossless:
// every output row of such a run says so (speculative.draft = simulated, lossless = 0).
#include <memory>

#include "speculative/drafter.hpp"

namespace ablate {

class SimulatedDrafter final : public Drafter {
 public:
  SimulatedDrafter(std::unique_ptr<Drafter> draft, double alpha) : draft_(std::move(draft)), alpha_(alpha) {}
  std::string name() const override { return "simulated"; }
  int k() const override { return draft_->k(); }
  std::vector<Draft> propose(std::span<Sequence* const> seqs) override { return draft_->propose(seqs); }
  void rollback(const Sequence& seq, int length) override { draft_->rollback(seq, length); }
  void release(const Sequence& seq) override { draft_->release(seq); }
  double simulated_alpha() const override { return alpha_; }

 private:
  std::unique_ptr<Drafter> draft_;
  double alpha_;
};

}  // namespace ablate
