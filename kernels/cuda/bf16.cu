// bf16 conversion and GEMM (see bf16.cuh).
#include <cuda_bf16.h>

#include "cuda/bf16.cuh"
#include "cuda/check.cuh"

namespace ablate::cuda {
namespace {

// Four elements a thread: 16-byte loads of src, 8-byte stores of dst where aligned.
__global__ void to_bf16_kernel(__nv_bfloat16* dst, const float* src, std::size_t n) {
  const std::size_t i = (std::size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i + 4 <= n) {
    const float4 v = *reinterpret_cast<const float4*>(src + i);
    dst[i] = __float2bfloat16_rn(v.x);
    dst[i + 1] = __float2bfloat16_rn(v.y);
    dst[i + 2] = __float2bfloat16_rn(v.z);
    dst[i + 3] = __float2bfloat16_rn(v.w);
  } else {
    for (std::size_t j = i; j < n; ++j) dst[j] = __float2bfloat16_rn(src[j]);
  }
}

__global__ void fill_uniform_bf16_kernel(__nv_bfloat16* dst, std::size_t n, std::uint64_t seed, float scale) {
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = float(z >> 40) * 0x1.0p-24f;  // [0, 1)
    dst[i] = __float2bfloat16_rn((2.0f * u - 1.0f) * scale);
  }
}

}  // namespace

void fill_uniform_bf16(bf16_bits* dst, std::size_t n, std::uint64_t seed, float scale, cudaStream_t stream) {
  fill_uniform_bf16_kernel<<<1024, detail::kBlock, 0, stream>>>(reinterpret_cast<__nv_bfloat16*>(dst), n, seed, scale);
  detail::check_launch("fill_uniform_bf16");
}

void to_bf16(bf16_bits* dst, const float* src, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  if (reinterpret_cast<std::uintptr_t>(src) % 16 != 0)
    throw std::runtime_error("to_bf16: src must be 16-byte aligned");
  to_bf16_kernel<<<detail::grid_for((n + 3) / 4), detail::kBlock, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(dst), src, n);
  detail::check_launch("to_bf16");
}

void matmul_bf16(float* y, const bf16_bits* x, const bf16_bits* w, int rows, int in, int out, cublasHandle_t handle,
                 cudaStream_t stream) {
  detail::check(cublasSetStream(handle, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Column-major view, as cuda::matmul: Y^T [out x rows] = W^T-view [in x out]^T * X^T [in x rows].
  detail::check(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, CUDA_R_16BF, in, x, CUDA_R_16BF,
                             in, &zero, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                "matmul_bf16");
}

}  // namespace ablate::cuda
