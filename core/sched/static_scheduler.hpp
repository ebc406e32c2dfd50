#pragma once
// Static batching, the baseline: up to max_batch waiting requests (FCFS) form a batch whose
// prompts are padded to the longest; the batch decodes until its longest member ends, its
// finished members still computed as padding rows (each recomputes its last position: matmuls,
// attention over its context, LM head), as a padded [batch, length] tensor would; arrivals wait
// for the next batch.
#include <deque>
#include <vector>

#include "sched/scheduler.hpp"

namespace ablate {

class StaticScheduler final : public Scheduler {
 public:
  explicit StaticScheduler(int max_batch) : max_batch_(max_batch) {}
  std::string name() const override { return "static"; }
  void add(Sequence* seq) override { waiting_.push_back(seq); }
  SchedulePlan schedule(KvCache& kv) override;
  void finished(Sequence* seq, KvCache& kv) override;
  int num_waiting() const override { return static_cast<int>(waiting_.size()); }
  int num_running() const override { return static_cast<int>(batch_.size()); }

 private:
  int max_batch_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> batch_;
};

}  // namespace ablate
