// GCC 12 reports false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packet code, and a
// false -Wuninitialized inside avx512fintrin.h's _mm512_reduce_add_ps (its __Y is an
// intentionally undefined vector); both only for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/kernels.hpp"

namespace ablate::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

#if defined(__AVX512F__)
// Few rows (decode, speculative verification, small batches): the product is bound by reading w,
// so each row of w is read once and dotted with every row of x while it sits in L1. Hand-written
// because, measured side by side (bench_kernels, 2 threads), Eigen's GEMV reads these short rows
// (576 floats) ~10 % slower at rows = 1, and its GEMM packs w first: 1.4-2.2x slower at rows = 5
// (a k = 4 verification pass). Tiles of 4 rows of w x up to 4 rows of x keep 16 accumulators in
// registers; without AVX-512 everything goes through Eigen.
// NW rows of w from o, R rows of x from r0; both compile-time so the accumulators stay in registers.
template <int NW, int R>
void dot_tile(float* y, const float* x, const float* w, int in, int out, int o, int r0) {
  // Written out without helpers: GCC keeps the accumulators in registers only when nothing takes
  // their address (a lambda over them spilled every FMA to the stack).
  __m512 acc[NW][R];
#pragma GCC unroll 4
  for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
  const float* xr = x + std::size_t(r0) * in;
  const float* wr = w + std::size_t(o) * in;
  const int nv = in / 16, tail = in - nv * 16;
  for (int v = 0; v <= nv; ++v) {
    const int i = v * 16;
    const __mmask16 m = v < nv ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << tail) - 1u);
    if (m == 0) break;
    __m512 xv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) xv[r] = _mm512_maskz_loadu_ps(m, xr + std::size_t(r) * in + i);
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) {
      // The next tile's rows of w, a whole tile ahead: the loads here are too sparse in time
      // (16 FMAs per 64 bytes) for the hardware prefetcher to keep the stream going.
      if (R > 1) _mm_prefetch(reinterpret_cast<const char*>(wr + std::size_t(NW + j) * in + i), _MM_HINT_T0);
      const __m512 wv = _mm512_maskz_loadu_ps(m, wr + std::size_t(j) * in + i);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_fmadd_ps(wv, xv[r], acc[j][r]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NW; ++j)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) y[std::size_t(r0 + r) * out + o + j] = _mm512_reduce_add_ps(acc[j][r]);
}

template <int NW>
void dot_rows(float* y, const float* x, const float* w, int rows, int in, int out, int o) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) dot_tile<NW, 4>(y, x, w, in, out, o, r);
  switch (rows - r) {
    case 3: dot_tile<NW, 3>(y, x, w, in, out, o, r); break;
    case 2: dot_tile<NW, 2>(y, x, w, in, out, o, r); break;
    case 1: dot_tile<NW, 1>(y, x, w, in, out, o, r); break;
    default: break;
  }
}

// One row of x: each row of w is streamed start to end with four accumulators along it (one
// stream at a time is what the hardware prefetcher follows best).
void gemv_block(float* y, const float* x, const float* w, int in, int o0, int o1) {
  const int nv = in / 16, tail = in - nv * 16;
  const __mmask16 tail_mask = static_cast<__mmask16>((1u << tail) - 1u);
  for (int o = o0; o < o1; ++o) {
    const float* r = w + std::size_t(o) * in;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int v = 0;
    for (; v + 4 <= nv; v += 4) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + v * 16), _mm512_loadu_ps(x + v * 16), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + v * 16 + 16), _mm512_loadu_ps(x + v * 16 + 16), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + v * 16 + 32), _mm512_loadu_ps(x + v * 16 + 32), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + v * 16 + 48), _mm512_loadu_ps(x + v * 16 + 48), a3);
    }
    for (; v < nv; ++v) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + v * 16), _mm512_loadu_ps(x + v * 16), a0);
    if (tail)
      a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail_mask, r + nv * 16), _mm512_maskz_loadu_ps(tail_mask, x + nv * 16), a1);
    y[o] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}

void few_rows_block(float* y, const float* x, const float* w, int rows, int in, int out, int o0, int o1) {
  if (rows == 1) return gemv_block(y, x, w, in, o0, o1);
  int o = o0;
  for (; o + 4 <= o1; o += 4) dot_rows<4>(y, x, w, rows, in, out, o);
  for (; o < o1; ++o) dot_rows<1>(y, x, w, rows, in, out, o);
}
constexpr int kFewRows = 16;
#endif

// Columns [o0, o1) of y: rows o0..o1 of w, read once (few rows) or reused across x's rows (GEMM).
void matmul_block(float* y, const float* x, const float* w, int rows, int in, int out, int o0, int o1) {
#if defined(__AVX512F__)
  if (rows <= kFewRows) return few_rows_block(y, x, w, rows, in, out, o0, o1);
#endif
  const int n = o1 - o0;
  Eigen::Map<const RowMat> wb(w + std::size_t(o0) * in, n, in);
  if (rows == 1) {
    Eigen::Map<Eigen::VectorXf>(y + o0, n).noalias() = wb * Eigen::Map<const Eigen::VectorXf>(x, in);
  } else {
    Eigen::Map<RowMat, 0, Eigen::OuterStride<>> yb(y + o0, rows, n, Eigen::OuterStride<>(out));
    yb.noalias() = Eigen::Map<const RowMat>(x, rows, in) * wb.transpose();
  }
}

}  // namespace

void matmul(float* y, const float* x, const float* w, int rows, int in, int out) {
  if (std::size_t(rows) * in * out < kMatmulParallelMinWork || omp_in_parallel()) {
    matmul_block(y, x, w, rows, in, out, 0, out);
    return;
  }
#pragma omp parallel
  {
    // Static split in multiples of 16 rows of w (whole SIMD panels for Eigen's kernels).
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int per = ((out + nt - 1) / nt + 15) / 16 * 16;
    const int o0 = std::min(out, t * per), o1 = std::min(out, o0 + per);
    if (o1 > o0) matmul_block(y, x, w, rows, in, out, o0, o1);
  }
}

}  // namespace ablate::cpu
