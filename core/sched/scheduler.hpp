#pragma once
// The batching axis: which sequences run at a step, with how many tokens each.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "base/request.hpp"
#include "kv/kv_cache.hpp"

namespace ablate {

struct ScheduledChunk {
  Sequence* seq = nullptr;
  int num_tokens = 0;  // run tokens [seq->num_computed, seq->num_computed + num_tokens) this step
};

struct SchedulePlan {
  std::vector<ScheduledChunk> chunks;
  // Rows pushed through every matmul only to be thrown away: static batching's padded prompts.
  int padding_rows = 0;
  // Static batching's finished members, still carried by the batch as in a padded
  // [batch, length] tensor: each recomputes its last position (matmuls, attention over its whole
  // context, LM head) and its output is thrown away. Counted as padding rows.
  std::vector<Sequence*> padding_seqs;
  std::vector<Sequence*> preempted;  // lost their KV this step; requeued for recompute
  // Tokens the step may still take (continuous: max_batched_tokens minus what is scheduled); draft
  // tokens to verify come out of it. Unlimited for a policy without a token budget.
  int tokens_left = std::numeric_limits<int>::max();
  bool empty() const { return chunks.empty() && padding_rows == 0 && padding_seqs.empty(); }
};

// Admission's KV step shared by every policy: after kv.admit(), attach the sequence's cached
// prefix (a prefix cache; nothing otherwise), skip those tokens and record the first hit.
inline void attach_cached_prefix(KvCache& kv, Sequence* s) {
  s->num_computed = kv.attach_prefix(s->id, s->tokens);
  if (s->cached_prompt_tokens < 0) s->cached_prompt_tokens = std::min(s->num_computed, s->prompt_len());
}

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  virtual std::string name() const = 0;
  // A request arrived: its sequence waits for admission.
  virtual void add(Sequence* seq) = 0;
  // Decide this step's batch; admission reserves and grows KV through `kv` (ensure() has been
  // called for every token of every chunk when this returns).
  virtual SchedulePlan schedule(KvCache& kv) = 0;
  // A sequence emitted its last token. The policy decides when its KV is released
  // (continuous: now; static: when the whole batch ends).
  virtual void finished(Sequence* seq, KvCache& kv) = 0;
  virtual int num_waiting() const = 0;
  virtual int num_running() const = 0;
  bool has_work() const { return num_waiting() + num_running() > 0; }
};

}  // namespace ablate
