// rmsnorm, rope, softmax, swiglu, add: memory-light kernels kept close to llama2.c's arithmetic
// so generated text matches its reference output.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "cpu/kernels.hpp"

namespace ablate::cpu {

namespace {
// Below this many floats a parallel region costs more than it saves.
constexpr std::size_t kParallelMinFloats = std::size_t{1} << 15;
}  // namespace

void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps) {
#pragma omp parallel for schedule(static) if (std::size_t(rows) * dim >= kParallelMinFloats && rows > 1)
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + std::size_t(r) * dim;
    float* o = out + std::size_t(r) * dim;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < dim; ++j) ss += xr[j] * xr[j];
    ss = 1.0f / sqrtf(ss / dim + eps);
    for (int j = 0; j < dim; ++j) o[j] = weight[j] * (ss * xr[j]);
  }
}

void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, float theta) {
#pragma omp parallel for schedule(static) if (std::size_t(rows) * n_heads * head_dim >= kParallelMinFloats && rows > 1)
  for (int r = 0; r < rows; ++r) {
    float* row = x + std::size_t(r) * row_stride;
    for (int i = 0; i < head_dim; i += 2) {
      // llama2.c's exact float expressions; the angle depends only on (pos, i), so it is computed
      // once per row and applied to every head.
      float freq = 1.0f / powf(theta, i / (float)head_dim);
      float val = positions[r] * freq;
      float fcr = cosf(val);
      float fci = sinf(val);
      for (int h = 0; h < n_heads; ++h) {
        float* v = row + std::size_t(h) * head_dim + i;
        const float v0 = v[0], v1 = v[1];
        v[0] = v0 * fcr - v1 * fci;
        v[1] = v0 * fci + v1 * fcr;
      }
    }
  }
}

void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, const float* freq) {
#pragma omp parallel for schedule(static) if (std::size_t(rows) * n_heads * head_dim >= kParallelMinFloats && rows > 1)
  for (int r = 0; r < rows; ++r) {
    float* row = x + std::size_t(r) * row_stride;
    for (int i = 0; i < head_dim; i += 2) {
      float val = positions[r] * freq[i / 2];
      float fcr = cosf(val);
      float fci = sinf(val);
      for (int h = 0; h < n_heads; ++h) {
        float* v = row + std::size_t(h) * head_dim + i;
        const float v0 = v[0], v1 = v[1];
        v[0] = v0 * fcr - v1 * fci;
        v[1] = v0 * fci + v1 * fcr;
      }
    }
  }
}

void softmax(float* x, int n) {
  float max_val = x[0];
  for (int i = 1; i < n; ++i) max_val = x[i] > max_val ? x[i] : max_val;
  // A float running sum over a 49152-word vocabulary drifts by ~4e-5; double keeps it exact enough.
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu(float* gate, const float* up, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    float val = gate[i];
    val *= 1.0f / (1.0f + expf(-val));
    gate[i] = val * up[i];
  }
}

void argmax_rows(const float* x, int rows, int n, int* out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = x + std::size_t(r) * n;
    out[r] = static_cast<int>(std::max_element(row, row + n) - row);  // the first of equal maxima
  }
}

void swiglu_rows(float* out, const float* gate_up, int rows, int hidden) {
  // Rows split between threads (a batch-16 decode step spends ~4 ms of ~30 in expf otherwise,
  // on one thread); each value is computed exactly as swiglu does.
#pragma omp parallel for schedule(static) if (std::size_t(rows) * hidden >= kParallelMinFloats / 4 && rows > 1)
  for (int r = 0; r < rows; ++r) {
    const float* g = gate_up + std::size_t(r) * 2 * hidden;
    float* o = out + std::size_t(r) * hidden;
    for (int j = 0; j < hidden; ++j) {
      float val = g[j];
      val *= 1.0f / (1.0f + expf(-val));
      o[j] = val * g[hidden + j];
    }
  }
}

void add(float* x, const float* y, std::size_t n) {
#pragma omp simd
  for (std::size_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace ablate::cpu
