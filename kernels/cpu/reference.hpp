#pragma once
// Scalar references for the CPU kernels: straightforward loops, double accumulation where the
// kernel reduces. Slow on purpose; tests (CPU and CUDA) compare the real kernels with these.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <type_traits>
#include <vector>

#include "common/attention_problem.hpp"
#include "cpu/half.hpp"
#include "cpu/kv_format.hpp"
#include "cpu/quant.hpp"

namespace ablate::ref {

inline void matmul(float* y, const float* x, const float* w, int rows, int in, int out) {
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int i = 0; i < in; ++i) acc += double(x[std::size_t(r) * in + i]) * w[std::size_t(o) * in + i];
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w in a 16-bit format (cpu::Bf16, cpu::Half): each weight widened, then as above; with bf16
// weights x is rounded to bf16 as well (cpu::matmul's bf16 x bf16 products).
template <class W>
inline void matmul(float* y, const float* x, const W* w, int rows, int in, int out) {
  const auto input = [](float v) { return std::is_same_v<W, cpu::Bf16> ? cpu::to_float(cpu::to_bf16(v)) : v; };
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int i = 0; i < in; ++i) acc += double(input(x[std::size_t(r) * in + i])) * cpu::to_float(w[std::size_t(o) * in + i]);
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as Q8_0 blocks: x's rows quantized to Q8_0 blocks as well (cpu::quantize_q8_0), then each
// block pair's int8 dot product times the two scales (cpu::matmul's Q8_0 x Q8_0 products).
inline void matmul(float* y, const float* x, const cpu::BlockQ8_0* w, int rows, int in, int out) {
  const int nb = cpu::q8_0_blocks_per_row(in);
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nb; ++b) {
        const cpu::BlockQ8_0 &wb = w[std::size_t(o) * nb + b], &xb = xq[std::size_t(r) * nb + b];
        long dot = 0;
        for (int i = 0; i < cpu::kQ8Block; ++i) dot += long(wb.qs[i]) * xb.qs[i];
        acc += double(dot) * cpu::to_float(wb.d) * cpu::to_float(xb.d);
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as Q4_0, Q4_1, Q5_0, Q5_1 or IQ4_NL blocks ([out][in / 32]): x's rows quantized to Q8_0 blocks,
// then per block pair d_w d_x sum(w_w q_x) + m_w d_x sum(q_x) with w_w = q_w (IQ4_NL: q_w's level,
// no m_w), Q4_0's m_w being -8 d_w and Q5_0's -16 d_w (cpu::matmul's products).
template <class Block>
  requires std::is_same_v<Block, cpu::BlockQ4_0> || std::is_same_v<Block, cpu::BlockQ4_1> ||
           std::is_same_v<Block, cpu::BlockQ5_0> || std::is_same_v<Block, cpu::BlockQ5_1> || std::is_same_v<Block, cpu::BlockIQ4_NL>
void matmul(float* y, const float* x, const Block* w, int rows, int in, int out) {
  const int nb = in / cpu::kQ8Block;
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nb; ++b) {
        const Block& wb = w[std::size_t(o) * nb + b];
        const cpu::BlockQ8_0& xb = xq[std::size_t(r) * nb + b];
        long dot = 0, sum = 0;
        for (int i = 0; i < cpu::kQ8Block; ++i) dot += long(cpu::block_w(wb, i)) * xb.qs[i], sum += xb.qs[i];
        acc += (double(dot) * cpu::to_float(wb.d) + double(sum) * cpu::nibble_offset(wb)) * cpu::to_float(xb.d);
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as Q4_K or Q5_K blocks ([out][in / 256]): x's rows quantized to Q8_0 blocks, then per 32-value
// sub-block s and x's block there d_x (d sc_s sum(q_w q_x) - dmin m_s sum(q_x)) (cpu::matmul's products).
template <class Block>
  requires std::is_same_v<Block, cpu::BlockQ4_K> || std::is_same_v<Block, cpu::BlockQ5_K>
void matmul(float* y, const float* x, const Block* w, int rows, int in, int out) {
  const int nb = in / cpu::kQ8Block, nbk = in / cpu::kQ4KBlock;
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nbk; ++b) {
        const Block& wb = w[std::size_t(o) * nbk + b];
        for (int s = 0; s < 8; ++s) {
          int sc, m;
          cpu::k4_scale_min(wb.scales, s, sc, m);
          const cpu::BlockQ8_0& xb = xq[std::size_t(r) * nb + 8 * b + s];
          long dot = 0, sum = 0;
          for (int i = 0; i < cpu::kQ8Block; ++i) dot += long(cpu::k4_q(wb, 32 * s + i)) * xb.qs[i], sum += xb.qs[i];
          acc += (double(dot) * cpu::to_float(wb.d) * sc - double(sum) * cpu::to_float(wb.dmin) * m) * cpu::to_float(xb.d);
        }
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as IQ4_XS blocks ([out][in / 256]): x's rows quantized to Q8_0 blocks, then per 32-value sub-block
// s d (ls_s - 32) d_x sum(level(q_w) q_x) (cpu::matmul's products).
inline void matmul(float* y, const float* x, const cpu::BlockIQ4_XS* w, int rows, int in, int out) {
  const int nb = in / cpu::kQ8Block, nbk = in / cpu::kQ4KBlock;
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nbk; ++b) {
        const cpu::BlockIQ4_XS& wb = w[std::size_t(o) * nbk + b];
        for (int s = 0; s < 8; ++s) {
          const cpu::BlockQ8_0& xb = xq[std::size_t(r) * nb + 8 * b + s];
          long dot = 0;
          for (int i = 0; i < cpu::kQ8Block; ++i) dot += long(cpu::kIQ4Levels[cpu::iq4_xs_q(wb, 32 * s + i)]) * xb.qs[i];
          acc += double(dot) * cpu::to_float(wb.d) * cpu::iq4_xs_scale(wb, s) * cpu::to_float(xb.d);
        }
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as Q3_K or Q2_K blocks ([out][in / 256]): x's rows quantized to Q8_0 blocks, then per 16 values
// g d_x (d sc_g sum((q_w - 4) q_x)) (Q3_K) or d_x (d sc_g sum(q_w q_x) - dmin m_g sum(q_x)) (Q2_K)
// (cpu::matmul's products).
template <class Block>
  requires std::is_same_v<Block, cpu::BlockQ3_K> || std::is_same_v<Block, cpu::BlockQ2_K>
void matmul(float* y, const float* x, const Block* w, int rows, int in, int out) {
  constexpr bool kQ3 = std::is_same_v<Block, cpu::BlockQ3_K>;
  const int nb = in / cpu::kQ8Block, nbk = in / cpu::kQ4KBlock;
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nbk; ++b) {
        const Block& wb = w[std::size_t(o) * nbk + b];
        for (int g = 0; g < 16; ++g) {
          const cpu::BlockQ8_0& xb = xq[std::size_t(r) * nb + 8 * b + g / 2];
          long dot = 0, sum = 0;
          for (int i = 0; i < 16; ++i) {
            const int qx = xb.qs[16 * (g % 2) + i];
            if constexpr (kQ3) dot += long(cpu::q3_k_q(wb, 16 * g + i) - 4) * qx;
            else dot += long(cpu::q2_k_q(wb, 16 * g + i)) * qx;
            sum += qx;
          }
          if constexpr (kQ3) acc += double(dot) * cpu::to_float(wb.d) * cpu::q3_k_scale(wb, g) * cpu::to_float(xb.d);
          else
            acc += (double(dot) * cpu::to_float(wb.d) * (wb.scales[g] & 0xF) - double(sum) * cpu::to_float(wb.dmin) * (wb.scales[g] >> 4)) *
                   cpu::to_float(xb.d);
        }
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

// w as Q6_K blocks ([out][in / 256]): x's rows quantized to Q8_0 blocks, then per 16 values
// d sc_g d_x sum((q_w - 32) q_x) (cpu::matmul's products).
inline void matmul(float* y, const float* x, const cpu::BlockQ6_K* w, int rows, int in, int out) {
  const int nb = in / cpu::kQ8Block, nbk = in / cpu::kQ4KBlock;
  const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x, rows, in);
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int b = 0; b < nbk; ++b) {
        const cpu::BlockQ6_K& wb = w[std::size_t(o) * nbk + b];
        for (int g = 0; g < 16; ++g) {
          const cpu::BlockQ8_0& xb = xq[std::size_t(r) * nb + 8 * b + g / 2];
          long dot = 0;
          for (int i = 0; i < 16; ++i) dot += long(cpu::q6_k_q(wb, 16 * g + i) - 32) * xb.qs[16 * (g % 2) + i];
          acc += double(dot) * cpu::to_float(wb.d) * wb.scales[g] * cpu::to_float(xb.d);
        }
      }
      y[std::size_t(r) * out + o] = float(acc);
    }
}

inline void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + std::size_t(r) * dim;
    float* o = out + std::size_t(r) * dim;
    double ss = 0.0;
    for (int j = 0; j < dim; ++j) ss += double(xr[j]) * xr[j];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int j = 0; j < dim; ++j) o[j] = float(weight[j] * (inv * xr[j]));
  }
}

// llama2.c's loop (run.c, forward()), one row at a time, for any number of heads.
inline void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, float theta) {
  for (int r = 0; r < rows; ++r) {
    const int pos = positions[r];
    float* vec = x + std::size_t(r) * row_stride;
    for (int i = 0; i < n_heads * head_dim; i += 2) {
      int hd = i % head_dim;
      float freq = 1.0f / powf(theta, hd / (float)head_dim);
      float val = pos * freq;
      float fcr = cosf(val);
      float fci = sinf(val);
      float v0 = vec[i];
      float v1 = vec[i + 1];
      vec[i] = v0 * fcr - v1 * fci;
      vec[i + 1] = v0 * fci + v1 * fcr;
    }
  }
}

inline void softmax(float* x, int n) {
  double mx = x[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(x[i]));
  std::vector<double> e(n);
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += e[i] = std::exp(x[i] - mx);
  for (int i = 0; i < n; ++i) x[i] = float(e[i] / sum);
}

inline void swiglu(float* gate, const float* up, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const double g = gate[i];
    gate[i] = float(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

inline void add(float* x, const float* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) x[i] += y[i];
}

// Element d of token t's key (v = false) or value in KV head h, as stored, widened to fp32.
inline float kv_at(const KvSeqView& kv, bool v, int t, int h, int hd, int d) {
  if (kv.dtype == KvDtype::fp32) return (v ? kv.v(t, h, hd) : kv.k(t, h, hd))[d];
  const std::size_t slot = kv.slot(t);
  return cpu::kv_decode_one(kv.dtype, v ? kv.v_data : kv.k_data, slot * kv.token_stride + std::size_t(h) * hd + d,
                            v ? kv.v_scale : kv.k_scale, slot * (kv.token_stride / hd) + h);
}

// Per query head and query: scores over keys [0, q_pos0 + i], softmax, weighted sum of V; K and V
// read in the view's dtype (kv_at).
inline void attention(std::span<const AttentionProblem> problems) {
  for (const AttentionProblem& p : problems) {
    const int group = p.n_heads / p.n_kv_heads;
    const int hd = p.head_dim;
    std::vector<double> s(p.kv_len()), o(hd);
    for (int i = 0; i < p.n_q; ++i)
      for (int h = 0; h < p.n_heads; ++h) {
        const float* q = p.q + std::size_t(i) * p.q_stride + std::size_t(h) * hd;
        const int kvh = h / group, n_keys = p.q_pos0 + i + 1;
        double mx = -INFINITY, sum = 0.0;
        for (int t = 0; t < n_keys; ++t) {
          double dot = 0.0;
          for (int d = 0; d < hd; ++d) dot += double(q[d]) * kv_at(p.kv, false, t, kvh, hd, d);
          s[t] = dot * p.scale;
          mx = std::max(mx, s[t]);
        }
        for (int t = 0; t < n_keys; ++t) sum += s[t] = std::exp(s[t] - mx);
        std::fill(o.begin(), o.end(), 0.0);
        for (int t = 0; t < n_keys; ++t)
          for (int d = 0; d < hd; ++d) o[d] += s[t] / sum * kv_at(p.kv, true, t, kvh, hd, d);
        float* out = p.out + std::size_t(i) * p.out_stride + std::size_t(h) * hd;
        for (int d = 0; d < hd; ++d) out[d] = float(o[d]);
      }
  }
}

}  // namespace ablate::ref
