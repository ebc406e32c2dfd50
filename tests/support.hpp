#pragma once
// Helpers shared by the engine, scheduler and speculation tests.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/kv_view.hpp"
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

// One sequence's K/V laid out in a pool; unused slots hold NaN so any stray read shows.
struct KvLayout {
  std::vector<float> k, v;
  std::vector<int32_t> indices;
  KvSeqView view;
};

inline constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Contiguous: one page as long as the reservation, k_pool offset to the reservation's start.
inline KvLayout contiguous(const std::vector<float>& k, const std::vector<float>& v, int len, int ts) {
  const int offset = 11, reservation = len + 13;
  KvLayout l;
  l.k.assign(std::size_t(offset + reservation + 5) * ts, kNaN);
  l.v = l.k;
  std::copy(k.begin(), k.end(), l.k.begin() + std::size_t(offset) * ts);
  std::copy(v.begin(), v.end(), l.v.begin() + std::size_t(offset) * ts);
  l.indices = {0};
  l.view = {l.k.data() + std::size_t(offset) * ts, l.v.data() + std::size_t(offset) * ts, l.indices.data(), 1, reservation, len, ts};
  return l;
}

// Paged: pages of page_size tokens in a shuffled pool order, spare pages, last page partial.
inline KvLayout paged(const std::vector<float>& k, const std::vector<float>& v, int len, int ts, int page_size, std::mt19937& rng) {
  const int pages = (len + page_size - 1) / page_size, pool_pages = pages + 3;
  std::vector<int32_t> order(pool_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  KvLayout l;
  l.indices.assign(order.begin(), order.begin() + pages);
  l.k.assign(std::size_t(pool_pages) * page_size * ts, kNaN);
  l.v = l.k;
  for (int t = 0; t < len; ++t) {
    const std::size_t dst = (std::size_t(l.indices[t / page_size]) * page_size + t % page_size) * ts;
    std::copy_n(k.begin() + std::size_t(t) * ts, ts, l.k.begin() + dst);
    std::copy_n(v.begin() + std::size_t(t) * ts, ts, l.v.begin() + dst);
  }
  l.view = {l.k.data(), l.v.data(), l.indices.data(), pages, page_size, len, ts};
  return l;
}

}  // namespace ablate::test
