#pragma once
// Continuous (iteration-level) batching, Orca / vLLM style: the batch is re-formed at every
// step; finished sequences leave at once and waiting ones join while `max_num_seqs`, the token
// budget `max_batched_tokens` and KV space allow.
//
//   prefill_first  vLLM's classic policy: a step either prefills newly admitted prompts (whole)
//                  or decodes every running sequence; admissions win when any fit.
//   chunked        Sarathi: every step decodes the running sequences first, then fills what is
//                  left of the token budget with prompt chunks (a long prompt spans several steps).
//
// When a running sequence cannot grow its KV (paged cache full), the newest running sequence is
// preempted: it loses its KV and goes back to the head of the queue to be recomputed from its
// tokens (vLLM's RECOMPUTE). After a preemption, admissions pause until some sequence finishes
// (or nothing runs), so the victim is not re-admitted only to be evicted again.
#include <deque>
#include <vector>

#include "sched/scheduler.hpp"

namespace ablate {

class ContinuousScheduler final : public Scheduler {
 public:
  enum class Prefill { PrefillFirst, Chunked };
  ContinuousScheduler(int max_num_seqs, int max_batched_tokens, Prefill prefill)
      : max_num_seqs_(max_num_seqs), max_batched_tokens_(max_batched_tokens), prefill_(prefill) {}

  std::string name() const override { return "continuous"; }
  void add(Sequence* seq) override { waiting_.push_back(seq); }
  SchedulePlan schedule(KvCache& kv) override;
  void finished(Sequence* seq, KvCache& kv) override;
  int num_waiting() const override { return static_cast<int>(waiting_.size()); }
  int num_running() const override { return static_cast<int>(running_.size()); }

 private:
  struct Step;  // one schedule() call's plan under construction
  // Grow every running sequence by its next chunk, oldest first, preempting the newest when
  // the KV cache cannot hold them all. Decodes before prefill chunks.
  void schedule_running(KvCache& kv, Step& st);
  // Admit waiting sequences (FCFS) with their first chunk. Prefill-first admits whole prompts.
  void admit_waiting(KvCache& kv, Step& st, bool whole_prompts);
  void preempt_newest(KvCache& kv, Step& st);

  int max_num_seqs_;
  int max_batched_tokens_;
  Prefill prefill_;
  std::deque<Sequence*> waiting_;   // FCFS; preempted sequences return to the front
  std::vector<Sequence*> running_;  // hold KV, in admission order (newest last)
  bool admissions_paused_ = false;  // set by a preemption, cleared when a sequence finishes
};

}  // namespace ablate
