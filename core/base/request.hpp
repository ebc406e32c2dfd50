#pragma once
// A request (what the workload asks for) and a sequence (its state inside the engine).
#include <vector>

namespace ablate {

struct Request {
  int id = 0;
  double arrival_s = 0.0;        // scheduled arrival, seconds after the run starts
  std::vector<int> prompt;       // token ids
  int output_len = 0;            // tokens to generate (synthetic runs ignore EOS)

  // Multi-turn conversations (workload.conversation). A later turn follows the request `follows`
  // (an earlier id): until that request finishes, `prompt` holds only the new user message; the
  // engine then makes the prompt that request's prompt and output followed by the message, and
  // the arrival its last token's time plus think_s (arrival_s is unused until then).
  int conversation = -1;         // the conversation's id (its first turn's request id); -1: the request's own
  int turn = 1;                  // 1-based
  int follows = -1;              // the previous turn's request id; -1: an independent arrival
  double think_s = 0.0;          // the user's think time before this turn
};

enum class SeqState { Waiting, Running, Finished };

struct Sequence {
  const Request* request = nullptr;
  int id = 0;                    // == request->id; also the KV cache's handle
  std::vector<int> tokens;       // prompt, then generated tokens
  int num_computed = 0;          // leading tokens whose K/V are in the cache
  SeqState state = SeqState::Waiting;
  int preemptions = 0;
  int cached_prompt_tokens = -1; // prompt tokens found in the prefix cache at first admission (-1: not yet admitted)
  bool stopped_at_eos = false;

  // Timing, seconds since run start (shared/reference/metrics.md).
  double first_scheduled_s = -1.0;
  std::vector<double> emit_times;   // one entry per step that emitted tokens (ITL unit)
  std::vector<int> emit_counts;     // tokens emitted at that step (> 1 with speculation)

  int prompt_len() const { return static_cast<int>(request->prompt.size()); }
  int num_generated() const { return static_cast<int>(tokens.size()) - prompt_len(); }
  int max_len() const { return prompt_len() + request->output_len; }
  bool done() const { return stopped_at_eos || num_generated() >= request->output_len; }
  // Tokens still to run through the model before the next token can be sampled.
  int num_uncomputed() const { return static_cast<int>(tokens.size()) - num_computed; }
  bool in_prefill() const { return num_computed < prompt_len(); }
};

}  // namespace ablate
