// GCC 12 reports false -Wmaybe-uninitialized positives inside Eigen's AVX-512 packet code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>

#include "cpu/kernels.hpp"

namespace ablate::cpu {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Columns [o0, o1) of y: rows o0..o1 of w, read once (GEMV) or reused across x's rows (GEMM).
void matmul_block(float* y, const float* x, const float* w, int rows, int in, int out, int o0, int o1) {
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
