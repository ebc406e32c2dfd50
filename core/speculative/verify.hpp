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

#include "base/request.hpp"
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

class Drafter;
class KvCache;
struct Draft;

struct SequenceVerdict {
  int accepted = 0;  // draft tokens verification accepted (what acceptance rates count)
  int kept = 0;      // of them, those the sequence keeps: fewer when an accepted token is EOS
  int token = 0;     // the token that follows them (EOS itself after such a cut)
};

// Verifies the `drafted` tokens at the end of `seq` (its first num_computed tokens are computed,
// the drafts follow) against target_logits (drafted + 1 rows of `vocab`: the last computed
// token's and each draft's), then brings the sequence, the KV cache and the drafter to the kept
// prefix: rejected drafts are dropped from seq.tokens and both caches, and a request that ends at
// an accepted EOS stops there, without the tokens after it. Does not append `token`.
SequenceVerdict verify_sequence(Sequence& seq, std::size_t drafted, const Draft& draft, std::span<const float> target_logits,
                                int vocab, const Sampler& sampler, std::mt19937_64& rng, KvCache& kv, Drafter& drafter,
                                int eos_token);

}  // namespace ablate
