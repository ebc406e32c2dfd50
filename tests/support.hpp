#pragma once
// Helpers shared by the engine, scheduler and speculation tests.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <omp.h>

#include "common/attention_problem.hpp"
#include "common/kv_view.hpp"
#include "base/request.hpp"

namespace ablate::test {

// One OpenMP thread for a scope: the small test models gain nothing from threads, and on a busy
// machine OpenMP barriers only stall.
struct OneThread {
  int saved = omp_get_max_threads();
  OneThread() { omp_set_num_threads(1); }
  ~OneThread() { omp_set_num_threads(saved); }
};

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

// n values uniform in [lo, hi).
inline std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// One sequence's attention inputs for the kernel tests: queries inside a wider fused-QKV-like row,
// K/V for the visible tokens plus `future` stored tokens a causal kernel must ignore (their keys
// set to future_key when it is not 0, so that reading them would dominate the softmax), and
// output rows with padding columns that must survive (kOutPad).
struct AttentionShape {
  int n_q, q_pos0, n_heads, n_kv_heads, head_dim;
};
inline constexpr float kOutPad = 7.0f;

struct AttentionCase {
  AttentionShape s;
  int q_stride, out_stride, ts, len;
  std::vector<float> q, k, v;
  AttentionCase(AttentionShape s_, std::mt19937& rng, int future, float future_key = 0.0f) : s(s_) {
    ts = s.n_kv_heads * s.head_dim;
    q_stride = s.n_heads * s.head_dim + 2 * ts;
    out_stride = s.n_heads * s.head_dim + 3;
    len = s.q_pos0 + s.n_q + future;
    q = random_vec(std::size_t(s.n_q) * q_stride, rng, -2.0f, 2.0f);
    k = random_vec(std::size_t(len) * ts, rng, -2.0f, 2.0f);
    v = random_vec(std::size_t(len) * ts, rng);
    if (future_key != 0.0f) std::fill(k.begin() + std::size_t(len - future) * ts, k.end(), future_key);
  }
  std::vector<float> out_buffer() const { return std::vector<float>(std::size_t(s.n_q) * out_stride, kOutPad); }
  AttentionProblem problem(const KvSeqView& kv, float* out) const {
    AttentionProblem p;
    p.q = q.data();
    p.out = out;
    p.q_stride = q_stride;
    p.out_stride = out_stride;
    p.n_q = s.n_q;
    p.q_pos0 = s.q_pos0;
    p.kv = kv;
    p.n_heads = s.n_heads;
    p.n_kv_heads = s.n_kv_heads;
    p.head_dim = s.head_dim;
    p.scale = 1.0f / std::sqrt(float(s.head_dim));
    return p;
  }
  // Largest |a - b| / max(|b|, floor) over the heads part of every output row; infinity when a
  // padding column changed or a value is NaN.
  double err(const std::vector<float>& out, const std::vector<float>& expect, double floor) const {
    double worst = 0.0;
    const int w = s.n_heads * s.head_dim;
    for (int i = 0; i < s.n_q; ++i) {
      const std::size_t row = std::size_t(i) * out_stride;
      for (int j = 0; j < out_stride; ++j) {
        const double a = out[row + j], b = expect[row + j];
        if (j >= w) {
          if (a != kOutPad) return INFINITY;
          continue;
        }
        const double e = std::abs(a - b) / std::max(std::abs(b), floor);
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
      }
    }
    return worst;
  }
};

}  // namespace ablate::test
