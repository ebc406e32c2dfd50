#pragma once
// Internal to kernels/cuda: the element types' conversions to and from fp32, defined once for
// every .cu file, so that a fused kernel rounds exactly as the kernels it replaces (gemv_qkv_rope
// against rope_store_qkv: the same bits). float is there for the fp32 KV pools.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace ablate::cuda::detail {

template <class T>
struct Half16;
template <>
struct Half16<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float2 to2(Pair p) { return __bfloat1622float2(p); }
  static __device__ __forceinline__ float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Half16<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float2 to2(Pair p) { return __half22float2(p); }
  static __device__ __forceinline__ float to(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Half16<float> {
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float v) { return v; }
};

}  // namespace ablate::cuda::detail
