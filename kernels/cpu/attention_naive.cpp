// GCC 12 reports false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packet code, and
// at -O1 (the asan preset) a false -Wuninitialized in avx512fintrin.h's unpack intrinsics that
// Eigen's transpose uses (their __Y is an intentionally undefined vector).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <utility>
#include <vector>

#include "cpu/attention.hpp"
#include "cpu/scratch.hpp"
#include "cpu/kv_format.hpp"

namespace ablate::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

constexpr int kRowBlock = 64;  // score rows per block (fastest of 64/128/256 on 16-token pages)
// Up to this many rows (a decode step's G query heads of one KV head), each row is a matrix-vector
// product (as flash attention's single rows): Eigen's GEMM packs both operands first, which for
// 3 x 64 by 64 x 64 costs more than the multiplication (perf: gemm_pack_lhs 12 % of a batch-16
// decode step, the GEMM kernel itself 2 %).
constexpr int kGemvRows = 8;

// One KV head of one problem: its G query heads stacked as R = n_q * G rows (row i*G + j is
// query i of head g*G + j), so each key page feeds one GEMM for the whole group.
void attend_group(const AttentionProblem& p, int g, float* ws) {
  const int G = p.n_heads / p.n_kv_heads, hd = p.head_dim, L = p.kv_len(), R = p.n_q * G;
  const KvSeqView& kv = p.kv;
  float* qg = ws;                        // [R][hd]
  float* s = qg + std::size_t(R) * hd;   // [R][L]
  float* og = s + std::size_t(R) * L;    // [R][hd]
  float* kvbuf = og + std::size_t(R) * hd;  // [kKvDecodeRows][hd]: K/V rows widened from a non-fp32 pool

  for (int i = 0; i < p.n_q; ++i)
    std::copy_n(p.q + std::size_t(i) * p.q_stride + std::size_t(g) * G * hd, std::size_t(G) * hd,
                qg + std::size_t(i) * G * hd);

  // Keys (or values) [p0, p0 + n), inside one page, as fp32 rows: in place for an fp32 pool
  // (token_stride floats apart), else widened into kvbuf.
  auto page = [&](bool v, int p0, int n) {
    int stride = 0;
    const float* rows = kv_rows(kv, v, g, hd, p0, n, kvbuf, &stride);
    return ConstStridedMap(rows, n, hd, Eigen::OuterStride<>(stride));
  };

  // Row blocks keep a block's queries, score rows and outputs cache-resident while every page
  // passes by (with small pages, whole-matrix passes would re-stream S and O once per page).
  for (int r0 = 0; r0 < R; r0 += kRowBlock) {
    const int rb = std::min(kRowBlock, R - r0);
    float* sb = s + std::size_t(r0) * L;
    Eigen::Map<const RowMat> q(qg + std::size_t(r0) * hd, rb, hd);

    // S = Q K^T, one column block per page (per kKvDecodeRows keys of a page when widened).
    for (int p0 = 0, n = 0; p0 < L; p0 += n) {
      n = kv_run(kv, p0, L - p0);
      StridedMap sp(sb + p0, rb, n, Eigen::OuterStride<>(L));
      const ConstStridedMap keys = page(false, p0, n);
      if (rb <= kGemvRows)
        for (int r = 0; r < rb; ++r) sp.row(r).noalias() = q.row(r) * keys.transpose();
      else
        sp.noalias() = q * keys.transpose();
    }

    // Causal row softmax of scale * S; masked entries become exact zeros for the PV product.
    for (int r = r0; r < r0 + rb; ++r) {
      const int visible = p.q_pos0 + r / G + 1;
      Eigen::Map<Eigen::ArrayXf> row(s + std::size_t(r) * L, visible);
      row = ((row - row.maxCoeff()) * p.scale).exp();
      row *= 1.0f / row.sum();
      std::fill(s + std::size_t(r) * L + visible, s + std::size_t(r + 1) * L, 0.0f);
    }

    // O = P V, accumulated page by page.
    Eigen::Map<RowMat> o(og + std::size_t(r0) * hd, rb, hd);
    o.setZero();
    for (int p0 = 0, n = 0; p0 < L; p0 += n) {
      n = kv_run(kv, p0, L - p0);
      const ConstStridedMap pb(sb + p0, rb, n, Eigen::OuterStride<>(L)), values = page(true, p0, n);
      if (rb <= kGemvRows)
        for (int r = 0; r < rb; ++r) o.row(r).noalias() += pb.row(r) * values;
      else
        o.noalias() += pb * values;
    }
  }

  for (int i = 0; i < p.n_q; ++i)
    std::copy_n(og + std::size_t(i) * G * hd, std::size_t(G) * hd,
                p.out + std::size_t(i) * p.out_stride + std::size_t(g) * G * hd);
}

}  // namespace

std::size_t attention_naive_workspace_bytes(const AttentionProblem& p) {
  const std::size_t rows = std::size_t(p.n_q) * (p.n_heads / p.n_kv_heads);
  const std::size_t widened = p.kv.dtype == KvDtype::fp32 ? 0 : std::size_t(kKvDecodeRows) * p.head_dim;
  return (rows * (std::size_t(p.kv_len()) + 2 * std::size_t(p.head_dim)) + widened) * sizeof(float);
}

void attention_naive(std::span<const AttentionProblem> problems) {
  std::vector<std::pair<int, int>> tasks;  // (problem, kv head)
  std::size_t flops = 0;
  for (int i = 0; i < int(problems.size()); ++i) {
    const AttentionProblem& p = problems[i];
    for (int g = 0; g < p.n_kv_heads; ++g) tasks.emplace_back(i, g);
    flops += 4 * std::size_t(p.n_q) * p.n_heads * p.kv_len() * p.head_dim;
  }
  const bool parallel = tasks.size() > 1 && flops >= (std::size_t{1} << 17) && !omp_in_parallel();
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (std::size_t t = 0; t < tasks.size(); ++t) {
    thread_local ScratchFloats ws;
    const AttentionProblem& p = problems[tasks[t].first];
    const std::size_t need = attention_naive_workspace_bytes(p) / sizeof(float);
    if (ws.size() < need) ws.resize(need);
    attend_group(p, tasks[t].second, ws.data());
  }
}

}  // namespace ablate::cpu
