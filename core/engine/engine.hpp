#pragma once
// The one decode loop every experiment runs: admit arrivals, schedule, draft, forward a ragged
// batch of prefill and decode tokens, sample (verify), update caches, record.
#include <cstdint>
#include <functional>
#include <vector>

#include "base/records.hpp"
#include "base/request.hpp"

namespace ablate {

class Attention;
class Backend;
class Drafter;
class KvCache;
class Scheduler;

struct EngineParts {
  Backend& backend;
  KvCache& kv;
  Scheduler& scheduler;
  Attention& attention;
  Drafter& drafter;
};

struct EngineOptions {
  std::uint64_t seed = 0;          // sampling
  double temperature = 0.0;
  double top_p = 1.0;
  int eos_token = -1;              // >= 0: a request stops early when it emits this token
  int profile_start_step = 0;      // steps [start, end) inside cudaProfilerStart/Stop; end 0 = none
  int profile_end_step = 0;
  // Called after every step: requests done, total, seconds elapsed, output tokens so far.
  std::function<void(int, int, double, long long)> on_step;
  // Called before every step and every 50 ms while waiting for an arrival; may throw to abandon
  // the run (the runner's clean stop on SIGINT/SIGTERM).
  std::function<void()> check_stop;
};

// Runs the requests (ids 0..n-1, the independent ones in arrival order) in real time: a request
// joins at its arrival time, and the engine sleeps when it has nothing to do. A request that
// follows another (a conversation's later turn, Request::follows) arrives its think time after
// that one's last token, its prompt that one's prompt and output followed by its own.
RunRecords run_engine(EngineParts parts, const std::vector<Request>& requests, const EngineOptions& options);

}  // namespace ablate
