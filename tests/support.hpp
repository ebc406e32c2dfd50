#pragma once
// Helpers shared by the engine, scheduler and speculation tests.
#include <random>
#include <vector>

#include "engine/request.hpp"

namespace ablate::test {

// n requests with random prompts (1..max_prompt tokens of ids below vocab) and output lengths in
// [min_out, max_out]; arrivals spread over about span_s seconds (0: all at once), ids 0..n-1.
inline std::vector<Request> random_requests(unsigned seed, int n, int vocab, int max_prompt, int max_out,
                                            double span_s = 0.0, int min_out = 1) {
  std::mt19937 rng(seed);
  std::vector<Request> reqs;
  double t = 0;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.id = i;
    t += span_s / n * (rng() % 3);
    r.arrival_s = t;
    r.prompt.resize(1 + rng() % static_cast<unsigned>(max_prompt));
    for (int& tok : r.prompt) tok = static_cast<int>(rng() % static_cast<unsigned>(vocab));
    r.output_len = min_out + static_cast<int>(rng() % static_cast<unsigned>(max_out - min_out + 1));
    reqs.push_back(std::move(r));
  }
  return reqs;
}

}  // namespace ablate::test
