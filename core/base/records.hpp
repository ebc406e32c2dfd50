#pragma once
// What one run records: a row per request, a row per step, and facts about the run.
// Names are the CSV column names (shared/reference/metrics.md).
#include <cstddef>
#include <string>
#include <optional>
#include <vector>

namespace ablate {

struct RequestRecord {
  int request_id = 0;
  double arrival_s = 0;         // scheduled arrival, seconds since run start
  double first_scheduled_s = 0;
  double first_token_s = 0;
  double last_token_s = 0;
  int prompt_len = 0;
  int output_len = 0;           // tokens actually emitted
  int preemptions = 0;
  int cached_prompt_tokens = 0; // prompt tokens the prefix cache held at first admission (not computed)
  int conversation = 0;         // the conversation's id (its first turn's request id; a single-turn request's own)
  int turn = 1;                 // 1-based turn within the conversation
  std::vector<double> itl_s;    // gaps between consecutive emitting steps
  // Derived (seconds): queue_time = first_scheduled - arrival, ttft = first_token - arrival,
  // e2el = last_token - arrival, tpot = (e2el - ttft) / (output_len - 1) when output_len > 1.
  double queue_time() const { return first_scheduled_s - arrival_s; }
  double ttft() const { return first_token_s - arrival_s; }
  double e2el() const { return last_token_s - arrival_s; }
  bool has_tpot() const { return output_len > 1; }
  double tpot() const { return has_tpot() ? (e2el() - ttft()) / (output_len - 1) : 0.0; }
};

struct StepRecord {
  int step = 0;
  double start_s = 0;           // since run start
  double wall_s = 0;            // the whole step: schedule, forward, sample, bookkeeping
  double forward_s = 0;         // the backend's forward pass alone
  std::optional<double> device_s;  // of it, time on the GPU (CUDA events); none on the CPU
  int batch_size = 0;           // sequences in the forward batch
  int prefill_seqs = 0;         // sequences running prompt tokens this step
  int decode_seqs = 0;          // sequences running one generated token (or 1 + k to verify)
  int prefill_tokens = 0;
  int decode_tokens = 0;
  int padding_rows = 0;
  int running = 0;              // after the step
  int running_at_forward = 0;   // unfinished sequences holding KV during the forward pass
  int waiting = 0;
  int preempted = 0;            // preemptions this step
  std::size_t kv_reserved_bytes = 0;
  std::size_t kv_used_bytes = 0;
  int kv_blocks_allocated = 0;  // paged: blocks held (0 for contiguous)
  int kv_blocks_shared = 0;     // prefix cache: blocks read by more than one sequence
  long long kv_tokens_stored = 0;  // tokens holding real state
  // reserved - used: paged = unused slots of last blocks (internal fragmentation);
  // contiguous = the unfilled rest of every reservation.
  std::size_t kv_fragmentation_bytes() const { return kv_reserved_bytes - kv_used_bytes; }
};

// Facts about one run that are not per request or per step.
struct RunFacts {
  std::size_t weights_bytes = 0;
  double bits_per_weight = 0;         // Backend::bits_per_weight
  std::size_t kv_capacity_bytes = 0;
  std::size_t peak_host_bytes = 0;    // process peak RSS
  std::size_t peak_device_bytes = 0;  // 0 on the CPU backend
  std::size_t workspace_peak_bytes = 0;  // activations + attention scratch of the largest forward pass
  int peak_concurrency = 0;           // most unfinished sequences holding KV at once (max running_at_forward)
  int peak_batch_size = 0;            // largest forward batch (max batch_size; padding rows excluded)
  double run_wall_s = 0;              // engine start to last completion
  // Speculative decoding (zero without a drafter).
  long long num_drafts = 0;
  long long draft_tokens = 0;
  long long accepted_tokens = 0;
  std::vector<long long> accepted_at_pos;  // accepted at draft position i
  bool lossless = true;               // false: simulated acceptance (outputs are not the target's)
  double draft_s = 0;
  double verify_s = 0;
};

struct RunRecords {
  std::vector<RequestRecord> requests;  // in request id order
  std::vector<StepRecord> steps;
  RunFacts facts;
  std::vector<std::vector<int>> output_tokens;  // generated tokens per request (tests compare them)
};

}  // namespace ablate
