// The CUDA backend's data movement: embedding gather, KV writes into the cache's pools (either
// layout: the cache gives each token's slot as an element offset, in any KV element type), and KV
// gather into a contiguous fp32 copy (naive attention on a paged or 16/8-bit cache) or 16-bit copy
// (flash prefill on a KV type other than its own). CPU twins: the memcpy loops of
// CpuBackend::forward, cpu::kv_encode and KvSeqView::k()/v(); tests/cuda/test_cuda_backend.cpp
// compares them.
#include <algorithm>
#include <stdexcept>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/check.cuh"
#include "cuda/half16.cuh"
#include "cuda/kernels.cuh"
#include "cuda/rope.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

// One block per row.
__global__ void embed_kernel(float* x, const float* table, const int* tokens, int dim) {
  pdl_trigger();
  pdl_wait();
  const float* src = table + std::size_t(tokens[blockIdx.x]) * dim;
  float* dst = x + std::size_t(blockIdx.x) * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = src[j];
}

// Block (c, r): pool[offsets[r] + j] = src[r * src_stride + j] for j in chunk c of the row
// (kKvWriteChunk elements, a thread each): at batch 1 a block per row left one block copying
// 4096 elements 32 at a time per thread.
constexpr int kKvWriteChunk = 256;
template <typename T>
__global__ void kv_write_kernel(T* pool, const std::int64_t* offsets, const float* src, int src_stride, int rows, int n) {
  const int j = blockIdx.x * kKvWriteChunk + threadIdx.x;
  if (j >= n) return;
  for (int r = blockIdx.y; r < rows; r += gridDim.y)  // grid.y is capped at 65535
    pool[offsets[r] + j] = Half16<T>::from(src[std::size_t(r) * src_stride + j]);
}

// One thread per pair (r, 2p) of a qkv row: the bias added (when given) and the query and key pairs
// rotated, in place, then the row's query pair into q16, its key or value pair into the pools
// (rows < store_rows). T: the query's 16-bit type; K: the pools' element type.
template <typename T, typename K>
__global__ void rope_store_qkv_kernel(float* qkv, int rows, int store_rows, int q_dim, int kv_dim, int head_dim,
                                      const int* positions, float theta, const float* freq_table, K* k_pool,
                                      K* v_pool, const std::int64_t* offsets, T* q16, L2Prefetch prefetch,
                                      const float* bias) {
  pdl_trigger();
  pdl_wait();  // the prefetch too: before it, the previous GEMV is still streaming its own weights
  l2_prefetch_grid(prefetch.base, prefetch.bytes);
  const int row_dim = q_dim + 2 * kv_dim, pairs = row_dim / 2;
  const std::size_t idx = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= std::size_t(rows) * pairs) return;
  const int r = int(idx / pairs), i = int(idx % pairs) * 2;
  float* v = qkv + std::size_t(r) * row_dim + i;
  float v0 = v[0], v1 = v[1];
  if (bias) v0 += bias[i], v1 += bias[i + 1];
  if (i < q_dim + kv_dim) rope_rotate(v0, v1, positions[r], i % head_dim, head_dim, theta, freq_table);
  if (bias || i < q_dim + kv_dim) {
    v[0] = v0;
    v[1] = v1;
  }
  if (r >= store_rows) return;
  if (i < q_dim) {
    T* dst = q16 + std::size_t(r) * row_dim + i;
    dst[0] = Half16<T>::from(v0);
    dst[1] = Half16<T>::from(v1);
    return;
  }
  K* dst = i < q_dim + kv_dim ? k_pool + offsets[r] + (i - q_dim) : v_pool + offsets[r] + (i - q_dim - kv_dim);
  dst[0] = Half16<K>::from(v0);
  dst[1] = Half16<K>::from(v1);
}

// One block per token t: dst[t][j] = token t of the page list, j < token_stride, converted from
// the pool's type S to D through fp32 (exact when D is fp32, or 16 bits and S fp8 or the same type).
template <typename D, typename S>
__global__ void kv_gather_kernel(D* dst, const S* pool, const std::int32_t* indices, int page_size,
                                 int token_stride) {
  const int t = blockIdx.x;
  const S* src = pool + (std::size_t(indices[t / page_size]) * page_size + t % page_size) * token_stride;
  D* d = dst + std::size_t(t) * token_stride;
  for (int j = threadIdx.x; j < token_stride; j += blockDim.x) d[j] = Half16<D>::from(Half16<S>::to(src[j]));
}

// f(K{}) with K the element type of e.
template <class F>
void with_kv_elem(KvElem e, F&& f) {
  switch (e) {
    case KvElem::f32: return f(float{});
    case KvElem::f16: return f(__half{});
    case KvElem::bf16: return f(__nv_bfloat16{});
    case KvElem::fp8_e4m3: return f(__nv_fp8_e4m3{});
  }
  throw std::invalid_argument("cuda: unknown KV element type");
}

}  // namespace

const char* kv_elem_name(KvElem e) {
  switch (e) {
    case KvElem::f32: return "fp32";
    case KvElem::f16: return "fp16";
    case KvElem::bf16: return "bf16";
    case KvElem::fp8_e4m3: return "fp8_e4m3";
  }
  return "?";
}
std::size_t kv_elem_bytes(KvElem e) { return e == KvElem::f32 ? 4 : e == KvElem::fp8_e4m3 ? 1 : 2; }
KvElem kv_elem_of(DType t) { return t == DType::bf16 ? KvElem::bf16 : KvElem::f16; }

void embed(float* x, const float* table, const int* tokens, int rows, int dim, cudaStream_t stream) {
  if (rows <= 0) return;
  launch_pdl(embed_kernel, rows, kBlock, 0, stream, x, table, tokens, dim);
}

void kv_write(void* pool, const std::int64_t* offsets, const float* src, int src_stride, int rows, int n, KvElem elem,
              cudaStream_t stream) {
  if (rows <= 0 || n <= 0) return;
  const dim3 grid(unsigned((n + kKvWriteChunk - 1) / kKvWriteChunk), unsigned(std::min(rows, 65535)));
  with_kv_elem(elem, [&](auto k) {
    using K = decltype(k);
    kv_write_kernel<<<grid, kKvWriteChunk, 0, stream>>>(static_cast<K*>(pool), offsets, src, src_stride, rows, n);
  });
  check_launch("kv_write");
}

void rope_store_qkv(float* qkv, int rows, int store_rows, int n_heads, int n_kv_heads, int head_dim,
                    const int* positions, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offsets,
                    void* q16, DType dtype, cudaStream_t stream, L2Prefetch prefetch, const float* bias,
                    std::optional<KvElem> kv) {
  if (head_dim % 2 != 0) throw std::invalid_argument("rope_store_qkv: head_dim must be even");
  if (reinterpret_cast<std::uintptr_t>(prefetch.base) % 16 != 0)
    throw std::invalid_argument("rope_store_qkv: the prefetch range must start 16-byte aligned");
  const std::size_t threads = std::size_t(rows) * (n_heads + 2 * n_kv_heads) * head_dim / 2;
  if (threads == 0) return;
  const int q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim;
  const auto launch = [&](auto t, auto k) {
    using T = decltype(t);
    using K = decltype(k);
    launch_pdl(rope_store_qkv_kernel<T, K>, grid_for(threads), kBlock, 0, stream, qkv, rows, store_rows, q_dim, kv_dim,
               head_dim, positions, freq.theta, freq.table, static_cast<K*>(k_pool), static_cast<K*>(v_pool), offsets,
               static_cast<T*>(q16), prefetch, bias);
  };
  with_kv_elem(kv.value_or(kv_elem_of(dtype)), [&](auto k) {
    if (dtype == DType::bf16) launch(__nv_bfloat16{}, k);
    else launch(__half{}, k);
  });
}

void kv_gather_f32(float* dst, const void* pool, const std::int32_t* indices, int page_size, int length,
                   int token_stride, KvElem elem, cudaStream_t stream) {
  if (length <= 0) return;
  with_kv_elem(elem, [&](auto k) {
    using K = decltype(k);
    kv_gather_kernel<<<length, 128, 0, stream>>>(dst, static_cast<const K*>(pool), indices, page_size, token_stride);
  });
  check_launch("kv_gather_f32");
}

void kv_gather_16(void* dst, DType dtype, const void* pool, const std::int32_t* indices, int page_size, int length,
                  int token_stride, KvElem elem, cudaStream_t stream) {
  if (length <= 0) return;
  with_kv_elem(elem, [&](auto k) {
    using K = decltype(k);
    if (dtype == DType::bf16)
      kv_gather_kernel<<<length, 128, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), static_cast<const K*>(pool), indices,
                                                   page_size, token_stride);
    else
      kv_gather_kernel<<<length, 128, 0, stream>>>(static_cast<__half*>(dst), static_cast<const K*>(pool), indices,
                                                   page_size, token_stride);
  });
  check_launch("kv_gather_16");
}

}  // namespace ablate::cuda
