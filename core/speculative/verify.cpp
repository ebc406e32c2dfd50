#include "speculative/verify.hpp"

#include "base/nvtx.hpp"
#include "kv/kv_cache.hpp"
#include "speculative/drafter.hpp"


#include <algorithm>
#include <stdexcept>
#include <vector>

namespace ablate {

namespace {
std::span<const float> row_of(std::span<const float> rows, int r, int vocab) {
  return rows.subspan(static_cast<std::size_t>(r) * static_cast<std::size_t>(vocab), static_cast<std::size_t>(vocab));
}
}  // namespace

Verdict rejection_sample(std::span<const float> p, std::span<const float> q, std::span<const int> draft, int vocab,
                         std::mt19937_64& rng) {
  const int n = static_cast<int>(draft.size());
  if (p.size() != static_cast<std::size_t>(n + 1) * static_cast<std::size_t>(vocab) ||
      q.size() != static_cast<std::size_t>(n) * static_cast<std::size_t>(vocab))
    throw std::invalid_argument("rejection_sample: p needs draft+1 rows and q draft rows of vocab floats");
  std::vector<float> residual(static_cast<std::size_t>(vocab));
  for (int i = 0; i < n; ++i) {
    const auto pi = row_of(p, i, vocab), qi = row_of(q, i, vocab);
    const auto x = static_cast<std::size_t>(draft[static_cast<std::size_t>(i)]);
    // u < p/q  <=>  u q < p (q(x) > 0: x was drawn from q).
    if (Sampler::uniform(rng) * qi[x] < pi[x]) continue;
    double mass = 0;
    for (std::size_t t = 0; t < residual.size(); ++t) mass += residual[t] = std::max(0.0f, pi[t] - qi[t]);
    // p == q up to rounding leaves no residual (a rejection then has probability ~0): fall back to p.
    return {i, mass > 1e-12 ? sample_from(residual, rng) : sample_from(pi, rng)};
  }
  return {n, sample_from(row_of(p, n, vocab), rng)};
}

Verdict verify_draft(const Sampler& sampler, std::span<const float> target_logits, int vocab, std::span<const int> draft,
                     std::span<const float> draft_probs, std::mt19937_64& rng, double simulated_alpha) {
  const int n = static_cast<int>(draft.size());
  Verdict v;
  if (simulated_alpha >= 0.0) {
    while (v.accepted < n && Sampler::uniform(rng) < simulated_alpha) ++v.accepted;
    v.token = sampler.sample(row_of(target_logits, v.accepted, vocab), rng);
    return v;
  }
  if (sampler.greedy()) {
    while (v.accepted < n && Sampler::argmax(row_of(target_logits, v.accepted, vocab)) == draft[static_cast<std::size_t>(v.accepted)])
      ++v.accepted;
    v.token = Sampler::argmax(row_of(target_logits, v.accepted, vocab));
    return v;
  }
  std::vector<float> p(static_cast<std::size_t>(n + 1) * static_cast<std::size_t>(vocab));
  for (int r = 0; r <= n; ++r)
    sampler.probabilities(row_of(target_logits, r, vocab),
                          std::span<float>(p).subspan(static_cast<std::size_t>(r) * static_cast<std::size_t>(vocab),
                                                      static_cast<std::size_t>(vocab)));
  return rejection_sample(p, draft_probs, draft, vocab, rng);
}

SequenceVerdict verify_sequence(Sequence& seq, std::size_t drafted, const Draft& draft, std::span<const float> target_logits,
                                int vocab, const Sampler& sampler, std::mt19937_64& rng, KvCache& kv, Drafter& drafter,
                                int eos_token) {
  NVTX_RANGE("verify");
  const auto& q = draft.probs;
  const Verdict v = verify_draft(
      sampler, target_logits, vocab, std::span<const int>(seq.tokens).subspan(static_cast<std::size_t>(seq.num_computed), drafted),
      q.empty() ? std::span<const float>() : std::span<const float>(q).first(drafted * static_cast<std::size_t>(vocab)), rng,
      drafter.simulated_alpha());
  SequenceVerdict out{v.accepted, v.accepted, v.token};
  seq.tokens.resize(static_cast<std::size_t>(seq.num_computed + v.accepted));
  seq.num_computed += v.accepted;
  kv.truncate(seq.id, seq.num_computed);  // rejected positions: both caches roll back
  drafter.rollback(seq, seq.num_computed);
  for (int a = 0; eos_token >= 0 && a < v.accepted; ++a)
    if (seq.tokens[static_cast<std::size_t>(seq.num_computed - v.accepted + a)] == eos_token) {
      seq.num_computed -= v.accepted - a;
      seq.tokens.resize(static_cast<std::size_t>(seq.num_computed));
      kv.truncate(seq.id, seq.num_computed);
      out.kept = a;
      out.token = eos_token;
      break;
    }
  return out;
}

}  // namespace ablate
