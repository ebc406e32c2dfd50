#pragma once
// bf16 weights for the CUDA decode path: conversion and the bf16 x bf16 -> fp32 GEMM.
// Plain C++ like kernels.cuh: host-callable launchers on device pointers and a stream.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "cuda/kernels.cuh"  // L2Prefetch

namespace ablate::cuda {

// Raw bf16 storage (the upper 16 bits of an fp32), so plain C++ can hold and pass it; raw fp16
// (IEEE half) storage likewise. The same integer type: the functions below say which they read.
using bf16_bits = std::uint16_t;
using f16_bits = std::uint16_t;

// dst[i] = bf16(src[i]), round to nearest even.
void to_bf16(bf16_bits* dst, const float* src, std::size_t n, cudaStream_t stream);

// y[rows][out] (fp32) = x[rows][in] (bf16) * w[out][in]^T (bf16), fp32 accumulation
// (cublasGemmEx, CUBLAS_COMPUTE_32F). Sets `handle`'s stream.
void matmul_bf16(float* y, const bf16_bits* x, const bf16_bits* w, int rows, int in, int out, cublasHandle_t handle,
                 cudaStream_t stream);
// The same in fp16 (x and w IEEE half).
void matmul_f16(float* y, const f16_bits* x, const f16_bits* w, int rows, int in, int out, cublasHandle_t handle,
                cudaStream_t stream);

}  // namespace ablate::cuda

namespace ablate::cuda {
// Batch-1 decode GEMV: y[out] (fp32) (+)= w[out][in] (bf16) * x[in] (fp32), fp32 accumulation.
// One warp per row of w, 16-byte loads (8 weights) per lane, x read through the cache; bound by
// reading w once, which cuBLAS's GEMM path at n = 1 does not reach. accumulate = true adds into
// y (a fused residual connection).
// version 1: one row per warp, one 16-byte weight load per lane per step (the compiler's unroll
// keeps about one in flight). Versions 2-5: R rows per warp, U loads per row per lane issued
// before any is used, x read once for the R rows: 2 (R 1, U 4), 3 (R 2, U 4), 4 (R 1, U 8),
// 5 (R 4, U 4), 8 warps a block; 6 and 7: versions 2 and 4 in 2-warp blocks (the rows spread
// evenly over the SMs). Rows of w must start 16-byte aligned (in % 8 == 0) for versions 2-7;
// otherwise version 1 runs.
// norm_weight != nullptr fuses the RMSNorm of x into the product: y (+)= W (norm_weight . x) /
// sqrt(mean(x^2) + norm_eps), the same as rmsnorm() then the GEMV, without the extra launch.
// kGemvVersionsAll: versions 1-7 above; 8 and 9 are versions 2 and 4 with an L2 256-byte
// prefetch hint on the weight loads; 10 and 11 split each row over 2 and 4 warps of a block
// (their sums added in a fixed order), for matrices of few rows. Tests and benchmarks cover all;
// the CUDA backend tunes over all, each checked against version 1 on the model's weights first.
// next (every GEMV below; cuda_l2_prefetch): a range, the start of the weights the decode step
// reads next, that each block asks L2 to fetch (its share, 16 KB pieces) once its rows are done,
// so that HBM keeps streaming through this kernel's tail and the next one's ramp. A hint: the
// same results.
inline constexpr int kGemvVersionsAll = 11;
void gemv_bf16(float* y, const float* x, const bf16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
               int version = 1, const float* norm_weight = nullptr, float norm_eps = 0.0f, L2Prefetch next = {});
// The same GEMV versions over fp16 weights.
void gemv_f16(float* y, const float* x, const f16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
              int version = 1, const float* norm_weight = nullptr, float norm_eps = 0.0f, L2Prefetch next = {});

// The same GEMV with x in the weights' 16-bit type (bf16 x for bf16 w, fp16 for fp16): the
// attention output feeds the output projection without a cast to fp32. in % 8 == 0; version 1
// runs as version 2.
void gemv_bf16_x16(float* y, const bf16_bits* x, const bf16_bits* w, int in, int out, bool accumulate,
                   cudaStream_t stream, int version = 2, L2Prefetch next = {});
void gemv_f16_x16(float* y, const f16_bits* x, const f16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
                  int version = 2, L2Prefetch next = {});

// The feed-forward block's gate/up GEMV with SwiGLU as its epilogue, at batch 1: w13 holds
// 2 * hidden rows (w1's, then w3's); h[j] = silu(w1_j . xn) * (w3_j . xn), xn = x or its RMSNorm
// (norm_weight != nullptr), equal bit for bit to gemv version 6 into [gate | up] followed by
// swiglu_rows (version 1). One launch instead of two, and no h13 round trip. in % 8 == 0.
// Versions (kEpilogueVersions; the CUDA backend tunes over them): 1, a warp a gate/up pair in
// 2-warp blocks; 2, 3 and 4, the pair split over 2, 4 and 8 warps of an 8-warp block (as GEMV
// versions 10 and 11); 5, version 3 with 2 loads a row in flight instead of 4. Versions 2-5 add
// their sums in another order (within float rounding of version 1's).
inline constexpr int kEpilogueVersions = 5;
void gemv_swiglu_bf16(float* h, const float* x, const bf16_bits* w13, int in, int hidden, cudaStream_t stream,
                      const float* norm_weight = nullptr, float norm_eps = 0.0f, L2Prefetch next = {}, int version = 1);
void gemv_swiglu_f16(float* h, const float* x, const f16_bits* w13, int in, int hidden, cudaStream_t stream,
                     const float* norm_weight = nullptr, float norm_eps = 0.0f, L2Prefetch next = {}, int version = 1);

// The attention block's QKV projection at batch 1 with rope_store_qkv as its epilogue: wqkv
// holds the (n_heads + 2 n_kv_heads) * head_dim rows of q, k and v; the product with x (or its
// RMSNorm, norm_weight != nullptr) is rotated (RoPE at *position, adjacent pairs, q and k),
// rounded to the weights' 16-bit type and stored: the query into q16, the key and value into
// k_pool and v_pool at element *offset (position and offset are device pointers). The same bits
// as gemv version 3 into an fp32 qkv row followed by rope_store_qkv (tested), in one launch; the
// fp32 row is not written. in % 8 == 0. Versions as gemv_swiglu's: 1 (the same bits as the two
// launches), 2-5 (each RoPE pair's rows split over several warps). freq: RoPE's frequencies (a
// table for scaled RoPE); bias (device, one qkv row, nullptr: none): Qwen2's Q/K/V biases, added
// to the product before RoPE, as rope_store_qkv's.
void gemv_qkv_rope_bf16(const float* x, const bf16_bits* wqkv, int in, int n_heads, int n_kv_heads, int head_dim,
                        const int* position, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offset,
                        void* q16, cudaStream_t stream, const float* norm_weight = nullptr, float norm_eps = 0.0f,
                        L2Prefetch next = {}, int version = 1, const float* bias = nullptr);
void gemv_qkv_rope_f16(const float* x, const f16_bits* wqkv, int in, int n_heads, int n_kv_heads, int head_dim,
                       const int* position, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offset,
                       void* q16, cudaStream_t stream, const float* norm_weight = nullptr, float norm_eps = 0.0f,
                       L2Prefetch next = {}, int version = 1, const float* bias = nullptr);

// Deterministic pseudo-random fill for benchmarks and tests: dst[i] uniform in [-scale, scale)
// from a hash of (seed, i), computed on the device (no host copy of multi-GB weights).
void fill_uniform_bf16(bf16_bits* dst, std::size_t n, std::uint64_t seed, float scale, cudaStream_t stream);
}  // namespace ablate::cuda
