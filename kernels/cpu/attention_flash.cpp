// Flash attention on the CPU: tiles of (query rows x keys) with an online softmax (running max
// and running sum per row), so the score matrix is never materialised; and flash-decoding
// (flash_split), which splits a sequence's key range over threads and merges the partial results
// by log-sum-exp. Both read K/V page by page through the KvSeqView, like attention_naive.
// GCC 12 reports false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packet code, and
// at -O1 (the asan preset) a false -Wuninitialized in avx512fintrin.h's unpack intrinsics that
// Eigen's transpose uses (their __Y is an intentionally undefined vector).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <limits>
#include <vector>

#include "cpu/attention.hpp"
#include "cpu/scratch.hpp"
#include "cpu/kv_format.hpp"

namespace ablate::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Up to this many rows in a tile (decode: G x n_q) the products run as one GEMV per row: a GEMM
// there spends most of its time packing the K and V tiles for a handful of rows.
constexpr int kGemvRows = 8;

int group_of(const AttentionProblem& p) { return p.n_heads / p.n_kv_heads; }
int rows_of(const AttentionProblem& p) { return p.n_q * group_of(p); }
int key_block(const AttentionProblem& p) { return std::min(kFlashKeyBlock, p.kv_len()); }
int row_block(const AttentionProblem& p) { return std::min(kFlashRowBlock, rows_of(p)); }

// Per-thread tile scratch: Q tile [rb][hd] (pre-scaled), scores/probabilities [rb][bc], the
// unnormalised output accumulator [rb][hd], running max and sum [rb] each; and, for a pool that is
// not fp32, its K or V rows widened [kKvDecodeRows][hd].
std::size_t tile_floats(int rb, int bc, int hd, KvDtype dt) {
  return std::size_t(rb) * (2 * hd + bc + 2) + (dt == KvDtype::fp32 ? 0 : std::size_t(kKvDecodeRows) * hd);
}
std::size_t tile_floats(const AttentionProblem& p) { return tile_floats(row_block(p), key_block(p), p.head_dim, p.kv.dtype); }

struct Tile {
  float *q, *s, *o, *m, *l, *kv;
  Tile(float* ws, int rb, int bc, int hd)
      : q(ws), s(q + std::size_t(rb) * hd), o(s + std::size_t(rb) * bc), m(o + std::size_t(rb) * hd), l(m + rb), kv(l + rb) {}
};

// Rows [r0, r0 + rb) of KV head g (row r is query r / G of head g*G + r % G, so one key tile feeds
// the whole GQA group), keys [k0, k1) clipped to what is causally visible. Leaves t.o holding the
// UNnormalised output sum_k exp(s_k - m) v_k, t.m the running max and t.l the running sum; a row
// that sees no key in the range keeps m = -inf, l = 0, o = 0.
void flash_rows(const AttentionProblem& p, int g, int r0, int rb, int k0, int k1, const Tile& t) {
  const int G = group_of(p), hd = p.head_dim, bc = key_block(p);
  const KvSeqView& kv = p.kv;

  for (int rr = 0; rr < rb; ++rr) {
    const int r = r0 + rr, i = r / G, j = r % G;
    const float* src = p.q + std::size_t(i) * p.q_stride + std::size_t(g * G + j) * hd;
    Eigen::Map<Eigen::ArrayXf>(t.q + std::size_t(rr) * hd, hd) = Eigen::Map<const Eigen::ArrayXf>(src, hd) * p.scale;
  }
  std::fill_n(t.o, std::size_t(rb) * hd, 0.0f);
  std::fill_n(t.m, rb, kNegInf);
  std::fill_n(t.l, rb, 0.0f);

  // Keys row r sees: [0, q_pos0 + r/G + 1). The first row sees the fewest, the last the most.
  const int vis_first = p.q_pos0 + r0 / G + 1;
  const int end = std::min(k1, p.q_pos0 + (r0 + rb - 1) / G + 1);
  Eigen::Map<const RowMat> q(t.q, rb, hd);
  Eigen::Map<RowMat> o(t.o, rb, hd);

  // Keys (or values) [p0, p0 + n) inside one page as fp32 rows: in place for an fp32 pool (rows
  // token_stride floats apart), else widened into the tile's kv rows.
  auto page = [&](bool v, int p0, int n) {
    int stride = 0;
    const float* rows = kv_rows(kv, v, g, hd, p0, n, t.kv, &stride);
    return ConstStridedMap(rows, n, hd, Eigen::OuterStride<>(stride));
  };
  auto run_len = [&](int p0, int stop) { return kv_run(kv, p0, stop - p0); };

  for (int t0 = k0; t0 < end; t0 += bc) {
    const int n = std::min(bc, end - t0);
    // S = (scale Q) K^T, one GEMM per page run inside the tile (one per tile when contiguous).
    for (int p0 = t0; p0 < t0 + n;) {
      const int len = run_len(p0, t0 + n);
      const ConstStridedMap keys = page(false, p0, len);
      if (rb <= kGemvRows) {
        for (int rr = 0; rr < rb; ++rr)
          Eigen::Map<Eigen::RowVectorXf>(t.s + std::size_t(rr) * n + (p0 - t0), len).noalias() = q.row(rr) * keys.transpose();
      } else {
        StridedMap(t.s + (p0 - t0), rb, len, Eigen::OuterStride<>(n)).noalias() = q * keys.transpose();
      }
      p0 += len;
    }
    // Online softmax row by row; masked (and fully invisible) entries become exact zeros.
    const bool full = t0 + n <= vis_first;
    for (int rr = 0; rr < rb; ++rr) {
      float* srow = t.s + std::size_t(rr) * n;
      const int vis = full ? n : std::clamp(p.q_pos0 + (r0 + rr) / G + 1 - t0, 0, n);
      if (vis == 0) {
        std::fill_n(srow, n, 0.0f);
        continue;
      }
      Eigen::Map<Eigen::ArrayXf> a(srow, vis);
      const float m_new = std::max(t.m[rr], a.maxCoeff());
      const float alpha = std::exp(t.m[rr] - m_new);  // 0 on the first visible tile (m = -inf)
      a = (a - m_new).exp();
      t.l[rr] = t.l[rr] * alpha + a.sum();
      t.m[rr] = m_new;
      if (alpha != 1.0f) o.row(rr) *= alpha;
      std::fill(srow + vis, srow + n, 0.0f);
    }
    // O += P V, page run by page run.
    for (int p0 = t0; p0 < t0 + n;) {
      const int len = run_len(p0, t0 + n);
      const ConstStridedMap values = page(true, p0, len);
      if (rb <= kGemvRows) {
        for (int rr = 0; rr < rb; ++rr)
          o.row(rr).noalias() += Eigen::Map<const Eigen::RowVectorXf>(t.s + std::size_t(rr) * n + (p0 - t0), len) * values;
      } else {
        o.noalias() += ConstStridedMap(t.s + (p0 - t0), rb, len, Eigen::OuterStride<>(n)) * values;
      }
      p0 += len;
    }
  }
}

// out rows of the tile = o / l.
void store_rows(const AttentionProblem& p, int g, int r0, int rb, const float* o, const float* l) {
  const int G = group_of(p), hd = p.head_dim;
  for (int rr = 0; rr < rb; ++rr) {
    const int r = r0 + rr, i = r / G, j = r % G;
    float* dst = p.out + std::size_t(i) * p.out_stride + std::size_t(g * G + j) * hd;
    Eigen::Map<Eigen::ArrayXf>(dst, hd) = Eigen::Map<const Eigen::ArrayXf>(o + std::size_t(rr) * hd, hd) * (1.0f / l[rr]);
  }
}

// One unit of parallel work: rows [r0, r0 + rb) of (problem, KV head g) over keys [k0, k1).
// part < 0: a whole row block, normalised straight into out. part >= 0: one split of a key
// range, left unnormalised in the partial buffer at float offset `part` ([rb][hd] o, [rb] m, [rb] l).
struct Task {
  int prob, g, r0, rb, k0, k1;
  long long part;
  double cost;
  int group = -1;  // split tasks: index of their (problem, KV head) in the merge list
};

// The splits of one (problem, KV head): where their partials start and how many there are. The
// task that finishes last merges them (no barrier between the splits and the merge).
struct SplitGroup {
  int prob, g, n;
  long long part;
  std::atomic<int> pending;
  SplitGroup(int prob_, int g_, int n_, long long part_) : prob(prob_), g(g_), n(n_), part(part_), pending(n_) {}
};

// Merge: M = max_s m_s, w_s = exp(m_s - M), out = sum_s w_s o_s / sum_s w_s l_s.
void merge_group(std::span<const AttentionProblem> problems, const SplitGroup& gr, const float* partials) {
  const AttentionProblem& p = problems[gr.prob];
  const int G = group_of(p), hd = p.head_dim, R = rows_of(p);
  const std::size_t stride = std::size_t(R) * (hd + 2), no = std::size_t(R) * hd;
  const float* base = partials + gr.part;
  for (int r = 0; r < R; ++r) {
    float M = kNegInf;
    for (int s = 0; s < gr.n; ++s) M = std::max(M, base[s * stride + no + r]);
    float* dst = p.out + std::size_t(r / G) * p.out_stride + std::size_t(gr.g * G + r % G) * hd;
    Eigen::Map<Eigen::ArrayXf> acc(dst, hd);
    acc.setZero();
    float denom = 0.0f;
    for (int s = 0; s < gr.n; ++s) {
      const float* part = base + s * stride;
      const float m = part[no + r];
      if (m == kNegInf) continue;  // this split lies wholly after the row's last visible key
      const float w = std::exp(m - M);
      denom += w * part[no + R + r];
      acc += w * Eigen::Map<const Eigen::ArrayXf>(part + std::size_t(r) * hd, hd);
    }
    acc *= 1.0f / denom;
  }
}

double task_cost(const AttentionProblem& p, int r0, int rb, int k0, int k1) {
  const int G = group_of(p);
  const int lo = std::min(k1, p.q_pos0 + r0 / G + 1), hi = std::min(k1, p.q_pos0 + (r0 + rb - 1) / G + 1);
  return double(rb) * (0.5 * (std::max(0, lo - k0) + std::max(0, hi - k0)) + 32.0);
}

std::size_t total_flops(std::span<const AttentionProblem> problems) {
  std::size_t flops = 0;
  for (const AttentionProblem& p : problems) flops += 2 * std::size_t(p.n_q) * p.n_heads * p.kv_len() * p.head_dim;
  return flops;
}

void run_tasks(std::span<const AttentionProblem> problems, std::vector<Task>& tasks, float* partials,
               std::deque<SplitGroup>* groups) {
  // Most expensive first, so the dynamic schedule ends with small tasks (causal prefill blocks
  // near the end of the sequence cost the most).
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  const bool parallel = tasks.size() > 1 && total_flops(problems) >= (std::size_t{1} << 17) && !omp_in_parallel();
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (std::size_t k = 0; k < tasks.size(); ++k) {
    const Task& tk = tasks[k];
    const AttentionProblem& p = problems[tk.prob];
    thread_local ScratchFloats ws;
    const std::size_t need = tile_floats(p);
    if (ws.size() < need) ws.resize(need);
    Tile t(ws.data(), tk.rb, key_block(p), p.head_dim);
    flash_rows(p, tk.g, tk.r0, tk.rb, tk.k0, tk.k1, t);
    if (tk.part < 0) {
      store_rows(p, tk.g, tk.r0, tk.rb, t.o, t.l);
    } else {
      float* dst = partials + tk.part;
      const std::size_t no = std::size_t(tk.rb) * p.head_dim;
      std::copy_n(t.o, no, dst);
      std::copy_n(t.m, tk.rb, dst + no);
      std::copy_n(t.l, tk.rb, dst + no + tk.rb);
      SplitGroup& gr = (*groups)[tk.group];
      // acq_rel: the last decrement sees every other split's partials.
      if (gr.pending.fetch_sub(1, std::memory_order_acq_rel) == 1) merge_group(problems, gr, partials);
    }
  }
}

void add_row_blocks(std::span<const AttentionProblem> problems, int prob, int g, std::vector<Task>& tasks) {
  const AttentionProblem& p = problems[prob];
  const int R = rows_of(p), L = p.kv_len();
  for (int r0 = 0; r0 < R; r0 += kFlashRowBlock) {
    const int rb = std::min(kFlashRowBlock, R - r0);
    tasks.push_back({prob, g, r0, rb, 0, L, -1, task_cost(p, r0, rb, 0, L)});
  }
}

bool valid(const AttentionProblem& p) { return p.n_q > 0 && p.n_kv_heads > 0; }

// Splits for each problem's KV heads (1 = not split). Only problems whose rows fit one row block
// (decode, speculative verification) are split, and only when the unsplit work leaves threads idle.
std::vector<int> plan_splits(std::span<const AttentionProblem> problems, int threads, int force) {
  std::vector<int> splits(problems.size(), 1);
  std::size_t base = 0;
  for (const AttentionProblem& p : problems)
    if (valid(p)) base += std::size_t(p.n_kv_heads) * ((rows_of(p) + kFlashRowBlock - 1) / kFlashRowBlock);
  if (force <= 0 && (threads <= 1 || base >= std::size_t(kFlashSplitTasksPerThread) * threads)) return splits;
  const std::size_t want = force > 0 ? std::size_t(force)
                                      : (std::size_t(kFlashSplitTasksPerThread) * threads + base - 1) / std::max<std::size_t>(base, 1);
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const AttentionProblem& p = problems[i];
    if (!valid(p) || rows_of(p) > kFlashRowBlock) continue;
    const int min_keys = force > 0 ? 1 : kFlashSplitMinKeys;
    splits[i] = int(std::clamp<std::size_t>(std::min<std::size_t>(want, std::size_t(p.kv_len() / min_keys)), 1, 1024));
  }
  return splits;
}

// Keys per split: a multiple of 64 (so splits end on page boundaries of power-of-two pages up to
// 64 tokens), or exactly ceil(L / splits) when the caller forced the split count (tests).
int chunk_keys(int L, int splits, bool forced) {
  const int c = (L + splits - 1) / splits;
  return forced ? std::max(c, 1) : (c + 63) / 64 * 64;
}

}  // namespace

std::size_t attention_flash_workspace_bytes(const AttentionProblem& p) {
  if (!valid(p)) return 0;
  return tile_floats(p) * sizeof(float);
}

void attention_flash(std::span<const AttentionProblem> problems) {
  std::vector<Task> tasks;
  for (int i = 0; i < int(problems.size()); ++i)
    if (valid(problems[i]))
      for (int g = 0; g < problems[i].n_kv_heads; ++g) add_row_blocks(problems, i, g, tasks);
  run_tasks(problems, tasks, nullptr, nullptr);
}

int attention_flash_split_count(std::span<const AttentionProblem> problems, int threads, std::size_t i) {
  if (i >= problems.size()) return 1;
  const std::vector<int> s = plan_splits(problems, threads, 0);
  if (s[i] <= 1) return 1;
  const int L = problems[i].kv_len(), chunk = chunk_keys(L, s[i], false);
  return (L + chunk - 1) / chunk;
}

std::size_t attention_flash_split_workspace_bytes(const AttentionProblem& p, int threads) {
  const std::size_t tiles = attention_flash_workspace_bytes(p) * std::size_t(std::max(threads, 1));
  const int s = attention_flash_split_count({&p, 1}, threads, 0);
  if (s <= 1) return tiles;
  return tiles + std::size_t(s) * p.n_kv_heads * rows_of(p) * (p.head_dim + 2) * sizeof(float);
}

void attention_flash_split(std::span<const AttentionProblem> problems, int force_splits) {
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const std::vector<int> splits = plan_splits(problems, threads, force_splits);
  if (std::all_of(splits.begin(), splits.end(), [](int s) { return s <= 1; })) return attention_flash(problems);

  std::vector<Task> tasks;
  std::deque<SplitGroup> groups;  // atomics: not movable, so a deque
  long long floats = 0;
  for (int i = 0; i < int(problems.size()); ++i) {
    const AttentionProblem& p = problems[i];
    if (!valid(p)) continue;
    const int L = p.kv_len(), R = rows_of(p);
    const int chunk = chunk_keys(L, splits[i], force_splits > 0), n = (L + chunk - 1) / chunk;
    for (int g = 0; g < p.n_kv_heads; ++g) {
      if (n <= 1) {
        add_row_blocks(problems, i, g, tasks);
        continue;
      }
      groups.emplace_back(i, g, n, floats);
      for (int s = 0; s < n; ++s) {
        const int k0 = s * chunk, k1 = std::min(L, k0 + chunk);
        tasks.push_back({i, g, 0, R, k0, k1, floats, task_cost(p, 0, R, k0, k1), int(groups.size()) - 1});
        floats += std::size_t(R) * (p.head_dim + 2);
      }
    }
  }
  thread_local ScratchFloats partials;
  if (partials.size() < std::size_t(floats)) partials.resize(floats);
  run_tasks(problems, tasks, partials.data(), &groups);  // workers get the pointer, not the thread_local
}

}  // namespace ablate::cpu
