#pragma once
// Internal to kernels/cuda: error checks and block reductions shared by the .cu files.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

namespace ablate::cuda::detail {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
inline void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(std::string(what) + ": cuBLAS status " + std::to_string(int(s)));
}
// After a launch: configuration errors show at once, execution errors at the next sync.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

constexpr int kBlock = 256;  // threads per block for the row kernels (a multiple of 32)

// Programmatic dependent launch (Hopper, sm_90+): a kernel launched by launch_pdl() while
// programmatic launch is on may start before the kernel ahead of it in the stream has finished,
// once every block of that one has called pdl_trigger(). It must call pdl_wait() before it reads
// anything an earlier kernel writes, or writes anything an earlier kernel reads; what comes
// before the wait (a GEMV's first weight loads: the weights never change) overlaps the previous
// kernel's tail. Without the attribute (or below sm_90) both calls are no-ops and the launch is
// an ordinary one. Each kernel of the decode step triggers first, then waits: its dependents may
// launch once all its blocks have started, so the next GEMV's first weight loads overlap the
// tail of the kernels ahead of it. Every write comes after the wait, when every earlier kernel
// has completed (each one waited for its own predecessor before completing).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Prefetch into L2 by the bulk-copy engine (sm_90+; a no-op below): one instruction a piece of up
// to kL2Piece bytes, nothing waits for it. A hint only: results cannot change, and a piece still in
// flight when the kernel exits completes on its own. Why: between two GEMVs (RoPE, attention, a
// kernel's tail and the next one's ramp) HBM idles; the next weights can stream into L2 meanwhile.
// Ranges start 16-byte aligned; a length is rounded down to 16 bytes.
constexpr std::size_t kL2Piece = 16384;
__device__ __forceinline__ void l2_prefetch_piece(const void* base, std::size_t bytes, std::size_t piece) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const std::size_t at = piece * kL2Piece;
  const unsigned size = unsigned((bytes - at < kL2Piece ? bytes - at : kL2Piece) & ~std::size_t(15));
  if (size) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(static_cast<const char*>(base) + at), "r"(size) : "memory");
#endif
}
// The whole range, its pieces spread over every thread of the grid (1-D blocks; any grid).
__device__ __forceinline__ void l2_prefetch_grid(const void* base, std::size_t bytes) {
  const std::size_t block = blockIdx.x + std::size_t(gridDim.x) * (blockIdx.y + std::size_t(gridDim.y) * blockIdx.z);
  const std::size_t threads = std::size_t(gridDim.x) * gridDim.y * gridDim.z * blockDim.x;
  for (std::size_t p = block * blockDim.x + threadIdx.x; p * kL2Piece < bytes; p += threads)
    l2_prefetch_piece(base, bytes, p);
}
// The calling thread's block's share of the range: pieces blockIdx.x, + gridDim.x, ... (one
// thread a block calls it, e.g. when the block's work is done).
__device__ __forceinline__ void l2_prefetch_block_share(const void* base, std::size_t bytes) {
  for (std::size_t p = blockIdx.x; p * kL2Piece < bytes; p += gridDim.x) l2_prefetch_piece(base, bytes, p);
}
// Whether launch_pdl() sets the attribute (cuda::set_programmatic_launch; the host thread's).
inline thread_local bool g_programmatic_launch = false;
template <class... Params, class... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = g_programmatic_launch ? 1 : 0;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "cudaLaunchKernelEx");
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reductions over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the
// result. The trailing barrier lets the shared slots be reused by the next call.
template <bool Max>
__device__ inline float block_reduce(float v) {
  __shared__ float slots[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = Max ? warp_max(v) : warp_sum(v);
  if (lane == 0) slots[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? slots[lane] : (Max ? -INFINITY : 0.0f);
    v = Max ? warp_max(v) : warp_sum(v);
    if (lane == 0) slots[0] = v;
  }
  __syncthreads();
  const float r = slots[0];
  __syncthreads();
  return r;
}
__device__ inline float block_sum(float v) { return block_reduce<false>(v); }
__device__ inline float block_max(float v) { return block_reduce<true>(v); }

inline unsigned grid_for(std::size_t n, int block = kBlock) { return unsigned((n + block - 1) / block); }

}  // namespace ablate::cuda::detail
