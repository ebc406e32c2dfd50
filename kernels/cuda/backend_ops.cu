// The CUDA backend's data movement: embedding gather, KV writes into the cache's pools (either
// layout: the cache gives each token's slot as an element offset), and KV gather into a
// contiguous fp32 copy (naive attention on a paged or bf16 cache). CPU twins: the memcpy loops of
// CpuBackend::forward and KvSeqView::k()/v(); tests/cuda/test_cuda_backend_ops.cpp compares them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

template <typename T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// One block per row.
__global__ void embed_kernel(float* x, const float* table, const int* tokens, int dim) {
  const float* src = table + std::size_t(tokens[blockIdx.x]) * dim;
  float* dst = x + std::size_t(blockIdx.x) * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = src[j];
}

// One block per row: pool[offsets[r] + j] = src[r * src_stride + j], j < n.
template <typename T>
__global__ void kv_write_kernel(T* pool, const std::int64_t* offsets, const float* src, int src_stride, int n) {
  T* dst = pool + offsets[blockIdx.x];
  const float* s = src + std::size_t(blockIdx.x) * src_stride;
  for (int j = threadIdx.x; j < n; j += blockDim.x) dst[j] = from_float<T>(s[j]);
}

// One block per token t: dst[t][j] = token t of the page list, j < token_stride.
template <typename T>
__global__ void kv_gather_kernel(float* dst, const T* pool, const std::int32_t* indices, int page_size,
                                 int token_stride) {
  const int t = blockIdx.x;
  const T* src = pool + (std::size_t(indices[t / page_size]) * page_size + t % page_size) * token_stride;
  float* d = dst + std::size_t(t) * token_stride;
  for (int j = threadIdx.x; j < token_stride; j += blockDim.x) d[j] = to_float(src[j]);
}

}  // namespace

const char* kv_elem_name(KvElem e) {
  switch (e) {
    case KvElem::f32: return "fp32";
    case KvElem::f16: return "fp16";
    case KvElem::bf16: return "bf16";
  }
  return "?";
}
std::size_t kv_elem_bytes(KvElem e) { return e == KvElem::f32 ? 4 : 2; }

void embed(float* x, const float* table, const int* tokens, int rows, int dim, cudaStream_t stream) {
  if (rows <= 0) return;
  embed_kernel<<<rows, kBlock, 0, stream>>>(x, table, tokens, dim);
  check_launch("embed");
}

void kv_write(void* pool, const std::int64_t* offsets, const float* src, int src_stride, int rows, int n, KvElem elem,
              cudaStream_t stream) {
  if (rows <= 0) return;
  switch (elem) {
    case KvElem::f32:
      kv_write_kernel<<<rows, 128, 0, stream>>>(static_cast<float*>(pool), offsets, src, src_stride, n);
      break;
    case KvElem::f16:
      kv_write_kernel<<<rows, 128, 0, stream>>>(static_cast<__half*>(pool), offsets, src, src_stride, n);
      break;
    case KvElem::bf16:
      kv_write_kernel<<<rows, 128, 0, stream>>>(static_cast<__nv_bfloat16*>(pool), offsets, src, src_stride, n);
      break;
  }
  check_launch("kv_write");
}

void kv_gather_f32(float* dst, const void* pool, const std::int32_t* indices, int page_size, int length,
                   int token_stride, KvElem elem, cudaStream_t stream) {
  if (length <= 0) return;
  switch (elem) {
    case KvElem::f32:
      kv_gather_kernel<<<length, 128, 0, stream>>>(dst, static_cast<const float*>(pool), indices, page_size, token_stride);
      break;
    case KvElem::f16:
      kv_gather_kernel<<<length, 128, 0, stream>>>(dst, static_cast<const __half*>(pool), indices, page_size,
                                                   token_stride);
      break;
    case KvElem::bf16:
      kv_gather_kernel<<<length, 128, 0, stream>>>(dst, static_cast<const __nv_bfloat16*>(pool), indices, page_size,
                                                   token_stride);
      break;
  }
  check_launch("kv_gather_f32");
}

}  // namespace ablate::cuda
