#include "sched/continuous_scheduler.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

struct ContinuousScheduler::Step {
  SchedulePlan plan;
  int budget = 0;  // tokens left this step
  bool preempted = false;
};

SchedulePlan ContinuousScheduler::schedule(KvCache& kv) {
  Step st;
  st.budget = max_batched_tokens_;
  if (running_.empty()) admissions_paused_ = false;
  if (prefill_ == Prefill::PrefillFirst) {
    // A step prefills new prompts if any can be admitted, else decodes everyone running.
    if (!admissions_paused_) admit_waiting(kv, st, /*whole_prompts=*/true);
    if (st.plan.chunks.empty()) schedule_running(kv, st);
  } else {
    schedule_running(kv, st);
    if (!admissions_paused_ || running_.empty()) admit_waiting(kv, st, /*whole_prompts=*/false);
  }
  if (st.plan.chunks.empty() && !waiting_.empty())
    throw std::runtime_error(fmt::format("continuous batching: request {} does not fit in an empty KV cache",
                                         waiting_.front()->id));
  st.plan.tokens_left = std::max(0, st.budget);
  return std::move(st.plan);
}

void ContinuousScheduler::schedule_running(KvCache& kv, Step& st) {
  std::vector<Sequence*> order;  // decodes first, then prefill chunks; oldest first within each
  for (Sequence* s : running_)
    if (s->num_uncomputed() == 1) order.push_back(s);
  for (Sequence* s : running_)
    if (s->num_uncomputed() > 1) order.push_back(s);
  for (Sequence* s : order) {
    if (st.budget <= 0) break;
    if (s->state != SeqState::Running) continue;  // preempted earlier in this loop
    const int n = std::min(s->num_uncomputed(), st.budget);
    bool lost = false;
    while (!lost && !kv.ensure(s->id, s->num_computed + n)) {
      lost = running_.back() == s;
      preempt_newest(kv, st);
    }
    if (lost) continue;
    st.plan.chunks.push_back({s, n});
    st.budget -= n;
  }
}

void ContinuousScheduler::admit_waiting(KvCache& kv, Step& st, bool whole_prompts) {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < max_num_seqs_ && st.budget > 0) {
    Sequence* s = waiting_.front();
    if (!kv.admit(s->id, s->prompt_len(), s->request->output_len)) break;  // strict FCFS
    const int first_hit = s->cached_prompt_tokens;
    attach_cached_prefix(kv, s);  // prefix cache hits cost neither tokens nor blocks
    int n = s->num_uncomputed();
    bool fits = true;
    if (whole_prompts) {
      // A prompt longer than the whole budget still runs, alone, rather than never.
      fits = !(n > st.budget && !st.plan.chunks.empty());
    } else {
      n = std::min(n, st.budget);
    }
    if (!fits || !kv.ensure(s->id, s->num_computed + n)) {
      kv.release(s->id);
      s->num_computed = 0;
      s->cached_prompt_tokens = first_hit;  // not admitted after all
      break;
    }
    waiting_.pop_front();
    s->state = SeqState::Running;
    running_.push_back(s);
    st.plan.chunks.push_back({s, n});
    st.budget -= n;
  }
}

void ContinuousScheduler::preempt_newest(KvCache& kv, Step& st) {
  Sequence* victim = running_.back();
  running_.pop_back();
  kv.release(victim->id);
  auto& chunks = st.plan.chunks;
  if (auto it = std::find_if(chunks.begin(), chunks.end(), [&](const ScheduledChunk& c) { return c.seq == victim; });
      it != chunks.end()) {  // scheduled earlier this step: give its tokens back
    st.budget += it->num_tokens;
    chunks.erase(it);
  }
  victim->num_computed = 0;  // recompute from its tokens (the engine counts the preemption)
  victim->state = SeqState::Waiting;
  waiting_.push_front(victim);
  st.plan.preempted.push_back(victim);
  st.preempted = true;
  admissions_paused_ = true;
}

void ContinuousScheduler::finished(Sequence* seq, KvCache& kv) {
  std::erase(running_, seq);
  kv.release(seq->id);
  admissions_paused_ = false;
}

}  // namespace ablate
