#include "speculative/autoregressive_drafter.hpp"

#include <algorithm>

#include "attention/attention.hpp"
#include "kv/kv_cache.hpp"
#include "speculative/verify.hpp"

namespace ablate {

AutoregressiveDrafter::AutoregressiveDrafter(std::string name, Forward forward, int vocab, std::unique_ptr<KvCache> kv,
                                             std::unique_ptr<Attention> attention, const DraftOptions& options)
    : name_(std::move(name)),
      forward_(std::move(forward)),
      vocab_(vocab),
      kv_(std::move(kv)),
      attention_(std::move(attention)),
      options_(options),
      sampler_(options.temperature, options.top_p) {}

AutoregressiveDrafter::~AutoregressiveDrafter() = default;

std::vector<Draft> AutoregressiveDrafter::propose(std::span<Sequence* const> seqs) {
  std::vector<Draft> out(seqs.size());
  struct Active {
    std::size_t i;
    Sequence* s;
    State* st;
    int limit;  // tokens to propose
    int len;    // the sequence's length when drafting began
  };
  std::vector<Active> active;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    Sequence* s = seqs[i];
    const int limit = std::min(options_.k, s->request->output_len - s->num_generated() - 1);
    if (limit <= 0) continue;
    if (!kv_->holds(s->id)) {
      if (!kv_->admit(s->id, s->prompt_len(), s->request->output_len)) continue;  // no room: no draft this time
      states_.erase(s->id);
    }
    auto [it, fresh] = states_.try_emplace(s->id);
    State& st = it->second;
    if (fresh) st.rng = Sampler::generator_for(options_.seed ^ 0xD8AF7E1C2B3A4956ull, s->id);
    // Keep the longest cached prefix that still matches, leaving at least the last token to run.
    const int len = static_cast<int>(s->tokens.size());
    std::size_t n = 0;
    while (n < st.cached.size() && static_cast<int>(n) < len - 1 && st.cached[n] == s->tokens[n]) ++n;
    st.cached.resize(n);
    if (kv_->length(s->id) > static_cast<int>(n)) kv_->truncate(s->id, static_cast<int>(n));
    active.push_back({i, s, &st, limit, len});
  }

  std::vector<float> q(static_cast<std::size_t>(vocab_));
  for (int j = 0; !active.empty(); ++j) {
    // Step 0 catches up (one chunk of every unseen token), later steps feed the last draft.
    ForwardBatch batch;
    std::vector<Active> ran;
    for (const Active& a : active) {
      const int pos0 = static_cast<int>(a.st->cached.size());
      const std::span<const int> toks =
          j == 0 ? std::span<const int>(a.s->tokens).subspan(static_cast<std::size_t>(pos0))
                 : std::span<const int>(out[a.i].tokens).subspan(static_cast<std::size_t>(j - 1), 1);
      if (!kv_->ensure(a.s->id, pos0 + static_cast<int>(toks.size()))) continue;  // out of memory: stop here
      batch.chunks.push_back({a.s->id, pos0, toks, false});
      ran.push_back(a);
    }
    if (ran.empty()) break;
    const std::vector<float>& logits = forward_(batch, *kv_, *attention_);
    ++passes_;
    active.clear();
    for (std::size_t r = 0; r < ran.size(); ++r) {
      const Active& a = ran[r];
      const ForwardChunk& c = batch.chunks[r];
      a.st->cached.insert(a.st->cached.end(), c.tokens.begin(), c.tokens.end());
      kv_->set_length(a.s->id, static_cast<int>(a.st->cached.size()));
      const std::span<const float> row(logits.data() + r * static_cast<std::size_t>(vocab_),
                                       static_cast<std::size_t>(vocab_));
      Draft& d = out[a.i];
      if (sampler_.greedy()) {
        d.tokens.push_back(Sampler::argmax(row));
      } else {
        sampler_.probabilities(row, q);
        d.tokens.push_back(sample_from(q, a.st->rng));
        d.probs.insert(d.probs.end(), q.begin(), q.end());
      }
      if (static_cast<int>(d.tokens.size()) < a.limit) active.push_back(a);
    }
  }
  return out;
}

void AutoregressiveDrafter::rollback(const Sequence& seq, int length) {
  auto it = states_.find(seq.id);
  if (it == states_.end()) return;
  auto& cached = it->second.cached;
  if (static_cast<int>(cached.size()) > length) cached.resize(static_cast<std::size_t>(length));
  if (kv_->holds(seq.id) && kv_->length(seq.id) > static_cast<int>(cached.size()))
    kv_->truncate(seq.id, static_cast<int>(cached.size()));
}

void AutoregressiveDrafter::release(const Sequence& seq) {
  states_.erase(seq.id);
  if (kv_->holds(seq.id)) kv_->release(seq.id);
}

}  // namespace ablate
