#pragma once
// Workloads: the requests of a run (arrival times, prompts, output lengths) from a WorkloadConfig.
//
// Determinism: the same (config, seed, vocab_size, max_seq_len) gives the same requests, bit for bit,
// on any compiler or standard library: no std::*_distribution is used (their output is
// implementation-defined); the generators below are written out on top of std::mt19937_64, whose
// sequence the standard specifies. Arrivals, prompt lengths, output lengths and token ids draw from
// separate streams, so changing one distribution does not reshuffle the others.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "base/experiment_config.hpp"
#include "base/request.hpp"

namespace ablate {

// Builds workload.requests requests, ids 0..N-1 in arrival order (non-decreasing arrival_s); with
// conversation.turns T > 1, N conversations of up to T turns (below).
//  arrival offline: all at 0.
//          poisson / gamma: N gaps (exponential; gamma with shape = burstiness, scale =
//            1/(rate*burstiness)), summed and rescaled so the last arrival is exactly N/rate, as
//            vLLM's benchmark does; request i arrives after i+1 gaps, so the first one does not
//            arrive at 0.
//          trace: replays workload.trace rows [start_row, start_row+N), times relative to the first
//            of them, gaps multiplied by trace.time_scale.
//  lengths fixed | uniform [min,max] | normal / lognormal (mean and std of the lengths, rounded,
//          clipped to [min,max]) | trace (ContextTokens / GeneratedTokens of the same rows; trace
//          caps max_output_len / max_prompt_len apply). trace.rows random draws N distinct rows of
//          [start_row, end) uniformly with the seed instead of taking N consecutive ones: a sample of
//          the trace's whole length distribution rather than of one time window.
//  shared_prefix {tokens: N, groups: G}: every prompt starts with one of G prefixes of N ids
//          (each from its own seeded stream; request i's group drawn from another), then its own
//          prompt of the length above, whose ids do not change with the prefix.
//  Every request then fits max_seq_len (> 0; <= 0 means no limit): when prefix + prompt + output
//  exceed it, the own prompt is cut (to at least 1 token), then the output. Lengths are always >= 1.
//  Prompt ids are uniform in [0, vocab_size); request i's ids depend only on the seed, i and its
//  prompt length.
//  conversation {turns: T, think_time_ms, think_time_dist}: the N requests above are the first
//          turns of N conversations. Turn t > 1 of a conversation is a new user message whose
//          length is drawn from prompt_len like a first turn's (trace: one row per message), with
//          its own output_len; its Request follows turn t-1 (Request::follows), and the engine
//          makes its prompt turn t-1's prompt and output followed by the message, arriving
//          think_s after turn t-1's last token (think_time_ms, or exponential with that mean).
//          Message m = (t-1) * N + c is conversation c's turn t: lengths, think times and ids of
//          the first N messages are the single-turn workload's, and a message's ids come from its
//          own stream. The context as planned (whole outputs) fits max_seq_len: a turn that does
//          not fit has its message cut, then its output, and a conversation with no room for a
//          turn of 1 + 1 tokens ends. Ids are turn-major: 0..N-1 the first turns, then the
//          conversations' second turns in conversation order, and so on; Request::conversation
//          is the conversation's first request id.
// Throws std::runtime_error on a bad config or trace (file:line:column: problem).
std::vector<Request> make_workload(const WorkloadConfig& w, std::uint64_t seed, int vocab_size,
                                   int max_seq_len);

// One row of a request trace.
struct TraceRow {
  double time_s = 0;   // seconds since the first row returned (exact to the trace's resolution)
  int prompt_len = 0;  // ContextTokens
  int output_len = 0;  // GeneratedTokens
};
// Reads data rows [start_row, start_row + count) (count < 0: to the end) of a CSV with the columns TIMESTAMP
// ("YYYY-MM-DD HH:MM:SS[.fraction]", up to 9 fraction digits), ContextTokens, GeneratedTokens.
// Throws if the file has fewer rows, a row is malformed or timestamps go backwards.
std::vector<TraceRow> read_trace(const std::string& path, int start_row, int count);

// Random numbers with a specified output on every platform (see above).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : gen_(seed) {}
  std::uint64_t next() { return gen_(); }
  double uniform();                                  // [0, 1), 53 random bits
  std::int64_t uniform_int(std::int64_t lo, std::int64_t hi);  // [lo, hi], no modulo bias
  double normal();                                   // N(0, 1), Marsaglia polar
  double exponential(double rate);                   // mean 1/rate
  double gamma(double shape, double scale);          // Marsaglia-Tsang; mean shape*scale
  // log of a Gamma(shape, 1) variate: finite for any shape > 0, where gamma() underflows to 0
  // for tiny shapes (shape 1e-6 gives values like exp(-1e6)).
  double log_gamma(double shape);

 private:
  std::mt19937_64 gen_;
};

// A well-mixed seed for stream `stream` of a run seeded with `seed` (splitmix64).
std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream);

}  // namespace ablate
