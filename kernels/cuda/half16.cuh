#pragma once
// Internal to kernels/cuda: the element types' conversions to and from fp32, defined once for
// every .cu file, so that a fused kernel rounds exactly as the kernels it replaces (gemv_qkv_rope
// against rope_store_qkv: the same bits). float is there for the fp32 KV pools, fp8 e4m3 for
// kv.dtype fp8_e4m3 (round to nearest even, saturating at +-448: cpu::to_fp8_e4m3's bytes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

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
struct Half16<__nv_fp8_e4m3> {
  static __device__ __forceinline__ float to(__nv_fp8_e4m3 v) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw(v.__x, __NV_E4M3)));
  }
  static __device__ __forceinline__ __nv_fp8_e4m3 from(float v) {
    __nv_fp8_e4m3 r;
    r.__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    return r;
  }
};
template <>
struct Half16<float> {
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float v) { return v; }
};

}  // namespace ablate::cuda::detail
