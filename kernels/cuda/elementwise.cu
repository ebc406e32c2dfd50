// rmsnorm, rope, softmax, swiglu, add, argmax: one block per row for the reductions, one thread per
// element (or rotated pair) otherwise. Arithmetic follows the CPU kernels (llama2.c's expressions).
#include <cub/block/block_reduce.cuh>

#include <cstdint>

#include "cuda/check.cuh"
#include "cuda/kernels.cuh"
#include "cuda/rope.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

// One block per row. Rows of a multiple of 4 (pointers 16-byte aligned) read float4s: at batch 1 a single
// block does the whole row, so its latency is the kernel's (one row of 4096 in 256 threads is
// four float4 loads a thread rather than sixteen scalar ones).
__global__ void rmsnorm_kernel(float* out, const float* x, const float* weight, int dim, float eps) {
  pdl_trigger();
  pdl_wait();
  const float* xr = x + std::size_t(blockIdx.x) * dim;
  float* o = out + std::size_t(blockIdx.x) * dim;
  float ss = 0.0f;
  const bool vec = dim % 4 == 0 && ((reinterpret_cast<std::uintptr_t>(x) | reinterpret_cast<std::uintptr_t>(out) |
                                      reinterpret_cast<std::uintptr_t>(weight)) % 16) == 0;
  if (vec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (int j = threadIdx.x; j < dim / 4; j += blockDim.x) {
      const float4 v = x4[j];
      ss += v.x * v.x;
      ss += v.y * v.y;
      ss += v.z * v.z;
      ss += v.w * v.w;
    }
  } else {
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
  }
  ss = block_sum(ss);  // every thread has read its x before any writes o (out may alias x)
  const float inv = 1.0f / sqrtf(ss / dim + eps);
  if (vec) {
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    float4* o4 = reinterpret_cast<float4*>(o);
    for (int j = threadIdx.x; j < dim / 4; j += blockDim.x) {
      const float4 v = x4[j], g = w4[j];
      o4[j] = make_float4(g.x * (inv * v.x), g.y * (inv * v.y), g.z * (inv * v.z), g.w * (inv * v.w));
    }
  } else {
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = weight[j] * (inv * xr[j]);
  }
}

// One thread per (row, head, pair i): every rotation is independent (a thread per (row, pair)
// looping over the heads left one 64-thread block doing 64 heads in turn at batch 1).
__global__ void rope_kernel(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions,
                            float theta, const float* freq_table) {
  const int half = head_dim / 2;
  const std::size_t idx = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= std::size_t(rows) * n_heads * half) return;
  const int p = int(idx % half), h = int(idx / half % n_heads), r = int(idx / half / n_heads);
  float* v = x + std::size_t(r) * row_stride + std::size_t(h) * head_dim + 2 * p;
  rope_rotate(v[0], v[1], positions[r], 2 * p, head_dim, theta, freq_table);
}

__global__ void softmax_kernel(float* x, int n) {
  float* row = x + std::size_t(blockIdx.x) * n;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) sum += row[j] = expf(row[j] - mx);
  const float inv = 1.0f / block_sum(sum);
  for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] *= inv;
}

__global__ void swiglu_kernel(float* gate, const float* up, std::size_t n) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  gate[i] = g * (1.0f / (1.0f + expf(-g))) * up[i];
}

__global__ void swiglu_rows_kernel(float* out, const float* gate_up, int rows, int hidden) {
  pdl_trigger();
  pdl_wait();
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= std::size_t(rows) * hidden) return;
  const std::size_t r = i / hidden, j = i % hidden;
  const float* g = gate_up + r * 2 * hidden;
  const float v = g[j], u = g[hidden + j];  // both read before the write: out may alias gate_up at rows 1
  out[i] = v * (1.0f / (1.0f + expf(-v))) * u;
}

// One block per row: each thread keeps its strided (index, value) best, then CUB's block
// reduction with cub::ArgMax (the larger value; the lower index on ties). 1024 threads: at batch 1
// one block scans the whole vocabulary.
constexpr int kArgmaxBlock = 1024;
__global__ void __launch_bounds__(kArgmaxBlock) argmax_rows_kernel(const float* x, int n, int* out) {
  pdl_trigger();
  pdl_wait();
  using Best = cub::KeyValuePair<int, float>;
  using Reduce = cub::BlockReduce<Best, kArgmaxBlock>;
  __shared__ typename Reduce::TempStorage tmp;
  const float* row = x + std::size_t(blockIdx.x) * n;
  Best best(n, -INFINITY);  // index n: past the end, loses every tie
  for (int j = threadIdx.x; j < n; j += blockDim.x) best = cub::ArgMax()(best, Best(j, row[j]));
  const Best b = Reduce(tmp).Reduce(best, cub::ArgMax());
  if (threadIdx.x == 0) out[blockIdx.x] = b.key < n ? b.key : 0;
}

__global__ void l2_prefetch_kernel(L2Prefetch range) { l2_prefetch_grid(range.base, range.bytes); }

__global__ void add_kernel(float* x, const float* y, std::size_t n) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void add_bias_rows_kernel(float* x, const float* bias, std::size_t total, int n) {
  const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) x[i] += bias[i % n];
}

}  // namespace

void set_programmatic_launch(bool on) { g_programmatic_launch = on; }

bool programmatic_launch_supported() {
  int dev = 0, major = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
}

bool l2_prefetch_supported() { return programmatic_launch_supported(); }  // both: compute capability 9.0

void l2_prefetch(L2Prefetch range, cudaStream_t stream) {
  if (reinterpret_cast<std::uintptr_t>(range.base) % 16 != 0)
    throw std::invalid_argument("l2_prefetch: the range must start 16-byte aligned");
  if (range.bytes == 0) return;
  l2_prefetch_kernel<<<64, kBlock, 0, stream>>>(range);
  check_launch("l2_prefetch");
}

void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps, cudaStream_t stream) {
  if (rows <= 0) return;
  launch_pdl(rmsnorm_kernel, rows, kBlock, 0, stream, out, x, weight, dim, eps);
}

void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, RopeFreq freq,
          cudaStream_t stream) {
  const std::size_t threads = std::size_t(rows) * n_heads * (head_dim / 2);
  if (threads == 0) return;
  rope_kernel<<<grid_for(threads), kBlock, 0, stream>>>(x, rows, row_stride, n_heads, head_dim, positions, freq.theta,
                                                        freq.table);
  check_launch("rope");
}

void softmax(float* x, int rows, int n, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  softmax_kernel<<<rows, kBlock, 0, stream>>>(x, n);
  check_launch("softmax");
}

void swiglu(float* gate, const float* up, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  swiglu_kernel<<<grid_for(n), kBlock, 0, stream>>>(gate, up, n);
  check_launch("swiglu");
}

void argmax_rows(const float* x, int rows, int n, int* out, cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  launch_pdl(argmax_rows_kernel, rows, kArgmaxBlock, 0, stream, x, n, out);
}

void swiglu_rows(float* out, const float* gate_up, int rows, int hidden, cudaStream_t stream) {
  const std::size_t n = std::size_t(rows) * hidden;
  if (n == 0) return;
  launch_pdl(swiglu_rows_kernel, grid_for(n), kBlock, 0, stream, out, gate_up, rows, hidden);
}

void add(float* x, const float* y, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, y, n);
  check_launch("add");
}

void add_bias_rows(float* x, const float* bias, int rows, int n, cudaStream_t stream) {
  const std::size_t total = std::size_t(rows) * n;
  if (rows <= 0 || n <= 0) return;
  add_bias_rows_kernel<<<grid_for(total), kBlock, 0, stream>>>(x, bias, total, n);
  check_launch("add_bias_rows");
}

}  // namespace ablate::cuda
