#include "sched/static_scheduler.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

SchedulePlan StaticScheduler::schedule(KvCache& kv) {
  SchedulePlan plan;
  if (batch_.empty()) {
    // Form the next batch in arrival order; stop at the first request whose reservation does
    // not fit (strict FCFS: no request overtakes an earlier one).
    while (!waiting_.empty() && static_cast<int>(batch_.size()) < max_batch_) {
      Sequence* s = waiting_.front();
      if (!kv.admit(s->id, s->prompt_len(), s->request->output_len)) break;
      attach_cached_prefix(kv, s);
      waiting_.pop_front();
      s->state = SeqState::Running;
      batch_.push_back(s);
    }
    if (batch_.empty() && !waiting_.empty())
      throw std::runtime_error(fmt::format("static batching: request {} does not fit in an empty KV cache",
                                           waiting_.front()->id));
    // Prompts are padded to the longest one in the batch.
    int longest = 0;
    for (const Sequence* s : batch_) longest = std::max(longest, s->num_uncomputed());
    for (const Sequence* s : batch_) plan.padding_rows += longest - s->num_uncomputed();
  } else {
    for (Sequence* s : batch_)
      if (s->done()) {
        plan.padding_seqs.push_back(s);  // a finished member still occupies its row
        // It rewrites its last position: a block the prefix cache holds gets its own copy (or
        // leaves the cache) first. Without a prefix cache this changes nothing.
        kv.truncate(s->id, s->num_computed - 1);
        if (!kv.ensure(s->id, s->num_computed))
          throw std::logic_error("static batching: a padding row outgrew its KV reservation");
        kv.set_length(s->id, s->num_computed);
      }
  }
  for (Sequence* s : batch_) {
    if (s->done()) continue;
    const int n = s->num_uncomputed();
    if (!kv.ensure(s->id, s->num_computed + n))
      throw std::logic_error("static batching: a sequence outgrew its KV reservation");
    plan.chunks.push_back({s, n});
  }
  return plan;
}

void StaticScheduler::finished(Sequence* /*seq*/, KvCache& kv) {
  // The batch holds its memory until its longest member ends.
  if (std::all_of(batch_.begin(), batch_.end(), [](const Sequence* s) { return s->done(); })) {
    for (Sequence* s : batch_) kv.release(s->id);
    batch_.clear();
  }
}

}  // namespace ablate
