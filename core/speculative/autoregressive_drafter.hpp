#pragma once
// What the model and layer_skip drafters share: a smaller forward pass with its own KV cache
// that proposes k tokens autoregressively per sequence, batched across sequences. Before
// drafting it catches up on the tokens it has not seen (the prompt, the last accepted draft
// token, the target's bonus token); it keeps the tokens behind its cache so a stale or rolled
// back cache is detected by comparison rather than trusted.
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <unordered_map>

#include "base/forward_batch.hpp"
#include "base/sampler.hpp"
#include "speculative/drafter.hpp"

namespace ablate {

class Attention;
class KvCache;

struct DraftOptions {
  int k = 4;
  double temperature = 0.0;  // the target's sampling: greedy drafts argmax, else samples q
  double top_p = 1.0;
  std::uint64_t seed = 0;    // draft sampling (its own generators, per request)
};

class AutoregressiveDrafter : public Drafter {
 public:
  // Runs the draft model over a batch, writing its K/V into the cache; logits as Backend::forward.
  using Forward = std::function<const std::vector<float>&(const ForwardBatch&, KvCache&, Attention&)>;
  AutoregressiveDrafter(std::string name, Forward forward, int vocab, std::unique_ptr<KvCache> kv,
                        std::unique_ptr<Attention> attention, const DraftOptions& options);
  ~AutoregressiveDrafter() override;

  std::string name() const override { return name_; }
  int k() const override { return options_.k; }
  std::vector<Draft> propose(std::span<Sequence* const> seqs) override;
  void rollback(const Sequence& seq, int length) override;
  void release(const Sequence& seq) override;

  const KvCache& kv() const { return *kv_; }
  long long forward_passes() const { return passes_; }

 private:
  struct State {
    std::vector<int> cached;  // tokens whose K/V are in kv_ (positions 0..cached.size()-1)
    std::mt19937_64 rng;
  };
  std::string name_;
  Forward forward_;
  int vocab_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<Attention> attention_;
  DraftOptions options_;
  Sampler sampler_;
  std::unordered_map<int, State> states_;
  long long passes_ = 0;
};

}  // namespace ablate
