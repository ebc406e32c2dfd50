#pragma once
// Verification of a draft against the target's logits for the same positions (one target pass
// over the k+1 positions: the last computed token and the k drafts).
//   greedy (temperature 0): accept while the draft equals the target's argmax; the target's
//     argmax after the last accepted token is emitted too.
//   sampling: accept draft x with probability min(1, p(x)/q(x)); at the first rejection emit a
//     sample of norm(max(0, p - q)); if all are accepted emit a bonus sample of the target's next
//     distribution (Leviathan et al. 2023; Chen et al. 2023). The emitted tokens are distributed
//     exactly as the target's own samples would be.
//   simulated (alpha >= 0): accept each draft with probability alpha whatever its value, then
//     emit the target's token at the first rejection (or the bonus). Not lossless.
#include <random>
#include <span>

#include "base/sampler.hpp"

namespace ablate {

struct Verdict {
  int accepted = 0;  // leading draft tokens kept
  int token = 0;     // the target's token that follows them
};


// Rejection sampling on probability rows: p has draft.size() + 1 rows, q has draft.size() rows,
// each of `vocab` floats.
Verdict rejection_sample(std::span<const float> p, std::span<const float> q, std::span<const int> draft, int vocab,
                         std::mt19937_64& rng);

// The engine's entry point: target_logits has draft.size() + 1 rows of `vocab`; draft_probs is
// q (draft.size() rows) when sampling, ignored when greedy or simulated.
Verdict verify_draft(const Sampler& sampler, std::span<const float> target_logits, int vocab, std::span<const int> draft,
                     std::span<const float> draft_probs, std::mt19937_64& rng, double simulated_alpha);

}  // namespace ablate
