// bf16 conversion and GEMM (see bf16.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/bf16.cuh"
#include "cuda/check.cuh"
#include "cuda/half16.cuh"
#include "cuda/rope.cuh"

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

constexpr int kGemvWarps = 8;  // rows of w per block
using detail::Half16;

// What a GEMV does with its finished sums: write them (kEpiPlain), SwiGLU a gate/up pair
// (kEpiSwiglu), or RoPE a (q or k) pair and store it in 16 bits as rope_store_qkv does (kEpiRope).
constexpr int kEpiPlain = 0, kEpiSwiglu = 1, kEpiRope = 2;
// kEpiRope's operands (see gemv_qkv_rope_bf16); unused by the other epilogues.
struct RopeStore {
  const int* position;          // device, one int: the token's position
  const std::int64_t* offset;   // device, one int64: its K/V slot in the pools, in elements
  void *k_pool, *v_pool, *q16;  // the weights' 16-bit type
  int head_dim, q_dim, kv_dim;
  float theta;
  const float* freq_table;  // device, head_dim / 2 floats (scaled RoPE); nullptr: from theta
  const float* bias;        // device, one qkv row of Q/K/V biases (Qwen2); nullptr: none
};

// 16 bytes of a stream read once, L2 asked to fetch the whole 256-byte line around them.
__device__ __forceinline__ uint4 load_l2_256(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The fused RMSNorm of a GEMV's input (norm != nullptr): y = W (norm . x) / rms(x), the scalar
// 1/rms(x) applied to the finished dot product, which removes the separate rmsnorm launch before
// the QKV and gate/up projections at batch 1. Version 1 computes it over the whole of x
// (L2-resident, 16 KB at dim 4096) before the product (inv_rms); versions 2-11 sum the squares of
// the x they read for the product (a split row's warps each their part, added with the row's
// sums), so that no pass over x delays the first product. (A pass per split warp cost an H100's
// LM head 159 us against 90 without the norm: 128000 warps each reading 16 KB.)
struct GemvNorm {
  const float* weight;  // nullptr: no norm
  float eps;
};
__device__ __forceinline__ float inv_rms(const float* x, int in, float eps) {
  const int lane = threadIdx.x & 31;
  float ss = 0.0f;
  if (in % 4 == 0) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int j = lane; j < in / 4; j += 32) {
      const float4 v = __ldg(x4 + j);
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int j = lane; j < in; j += 32) ss += x[j] * x[j];
  }
  return 1.0f / sqrtf(detail::warp_sum(ss) / in + eps);
}

template <class T>
__global__ void gemv_bf16_kernel(float* y, const float* x, const T* w, int in, int out, bool accumulate, GemvNorm norm,
                                 L2Prefetch next) {
  using H = Half16<T>;
  const int lane = threadIdx.x & 31;
  const int o = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (o >= out) return;
  const T* row = w + std::size_t(o) * in;
  detail::pdl_trigger();
  detail::pdl_wait();
  const float inv = norm.weight ? inv_rms(x, in, norm.eps) : 1.0f;
  float acc = 0.0f;
  if (in % 8 == 0) {  // rows start 16-byte aligned: 8 weights a load
    const uint4* row8 = reinterpret_cast<const uint4*>(row);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* g4 = reinterpret_cast<const float4*>(norm.weight);
#pragma unroll 4
    for (int i = lane; i < in / 8; i += 32) {
      const uint4 packed = __ldcs(row8 + i);  // streamed once: do not keep in cache
      const auto* h = reinterpret_cast<const typename H::Pair*>(&packed);
      float4 xa = __ldg(x4 + 2 * i), xb = __ldg(x4 + 2 * i + 1);
      if (g4) {
        const float4 ga = __ldg(g4 + 2 * i), gb = __ldg(g4 + 2 * i + 1);
        xa = make_float4(ga.x * xa.x, ga.y * xa.y, ga.z * xa.z, ga.w * xa.w);
        xb = make_float4(gb.x * xb.x, gb.y * xb.y, gb.z * xb.z, gb.w * xb.w);
      }
      const float2 w0 = H::to2(h[0]), w1 = H::to2(h[1]);
      const float2 w2 = H::to2(h[2]), w3 = H::to2(h[3]);
      acc += w0.x * xa.x + w0.y * xa.y + w1.x * xa.z + w1.y * xa.w + w2.x * xb.x + w2.y * xb.y + w3.x * xb.z +
             w3.y * xb.w;
    }
  } else {
    for (int i = lane; i < in; i += 32) acc += H::to(row[i]) * (norm.weight ? norm.weight[i] * x[i] : x[i]);
  }
  acc = detail::warp_sum(acc) * inv;
  if (lane == 0) y[o] = accumulate ? y[o] + acc : acc;
  if (threadIdx.x == 0) detail::l2_prefetch_block_share(next.base, next.bytes);  // this block's rows are done
}

// Versions 2..7: R rows per warp; each lane loads U 16-byte vectors of every row before it uses
// any, so R * U loads per lane are in flight (version 1's unrolled loop leaves the scheduler to
// overlap them, and at 36 registers it overlaps few). 2: R 1, U 4; 3: R 2, U 4; 4: R 1, U 8;
// 5: R 4, U 4; all with 8 warps a block. 6 and 7: versions 2 and 4 with 2 warps a block. Why:
// a 4096-row matrix in 8-row blocks is 512 blocks, 3 or 4 per SM on 132 SMs, so a quarter of
// the SMs finish early and the bytes in flight fall off in the tail; 2-row blocks spread it as
// 31 or 32 rows per SM (an ncu profile of the step showed wo and w2, the 4096-row matrices,
// at 2.1-2.3 TB/s against 2.6-2.8 for the wider ones). The first U loads are issued before the
// wait for the previous kernel (pdl).
//
// Epi kEpiSwiglu (R = 2): the gate/up GEMV of the feed-forward block with SwiGLU as its epilogue. w holds
// 2 * out rows (gate rows, then up rows); warp o computes gate row o and up row o + out, and
// writes y[o] = silu(gate) * up, as swiglu_rows does (no h13 round trip, no extra launch).
//
// Epi kEpiRope (R = 2): the batch-1 QKV projection with rope_store_qkv as its epilogue. Warp rows
// o0, o0 + 1 (o0 even) are one RoPE pair (adjacent pairs, never across a head); rotated if in q or
// k, rounded to 16 bits and stored as the query (q16) or into the K or V pool at the token's slot.
// y is not written. One launch fewer a layer, the same bits as version 3 then rope_store_qkv.
//
// X16: x is in the weights' 16-bit type (the attention output feeding the output projection,
// read without a cast to fp32 first: one launch fewer, half the x bytes); no fused norm.
// Line256 (versions 8 and 9): the weight loads ask L2 to fetch whole 256-byte
// lines (ld.global.nc.L1::no_allocate.L2::256B) instead of streaming 16 bytes a lane (__ldcs).
//
// Split > 1 (versions 10 and 11; the SwiGLU and RoPE epilogues' versions 2-5): Split warps
// share a warp's rows, each reading a contiguous 1/Split of them, their sums added in a fixed
// order through shared memory before the epilogue. Why: a 4096-row matrix gives one row to each
// of 4096 warps, under half of the H100's 8448 warp slots, so half the loads that could be in
// flight are not (wo and w2 ran at 2.3-2.4 TB/s against 2.8 for the 32000-row LM head).
template <class T, int R, int kGemvLoads, int Warps = kGemvWarps, int Epi = kEpiPlain, bool X16 = false,
          bool Line256 = false, int Split = 1>
__global__ void gemv_bf16_multi_kernel(float* y, const void* xv, const T* w, int in, int out, bool accumulate,
                                       GemvNorm norm, L2Prefetch next, RopeStore rs) {
  constexpr bool Swiglu = Epi == kEpiSwiglu;
  static_assert(Epi == kEpiPlain || R == 2, "the SwiGLU and RoPE epilogues pair two rows");
  static_assert(Warps % Split == 0, "a block holds whole groups of Split warps");
  const float* x = static_cast<const float*>(xv);
  using H = Half16<T>;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int o0 = (blockIdx.x * (Warps / Split) + warp / Split) * (Swiglu ? 1 : R);
  if constexpr (Split == 1) {
    if (o0 >= out) return;  // (a split row's warps all reach the barrier below: rows clamp instead)
  }
  const int n8 = in / 8;
  int begin = 0, end = n8;  // this warp's part of the row, in 16-byte vectors
  if constexpr (Split > 1) {
    const int per = (n8 + Split - 1) / Split;
    begin = min(n8, (warp % Split) * per);
    end = min(n8, begin + per);
  }
  const uint4* rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = Swiglu ? min(o0, out - 1) + r * out : min(o0 + r, out - 1);
    rows[r] = reinterpret_cast<const uint4*>(w + std::size_t(row) * in);
  }
  const float4* x4 = reinterpret_cast<const float4*>(x);
  const float4* g4 = reinterpret_cast<const float4*>(norm.weight);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  uint4 wv[R][kGemvLoads];
  const auto load = [&](int i0) {
#pragma unroll
    for (int u = 0; u < kGemvLoads; ++u) {
      const int i = i0 + 32 * u;
#pragma unroll
      for (int r = 0; r < R; ++r)
        wv[r][u] = i >= end ? make_uint4(0, 0, 0, 0) : Line256 ? load_l2_256(rows[r] + i) : __ldcs(rows[r] + i);
    }
  };
  load(begin + lane);  // the weights never change: these loads may overlap the previous kernel (pdl)
  detail::pdl_trigger();
  detail::pdl_wait();
  // The fused norm's sum of squares, of the x this warp reads for its products (see GemvNorm).
  float ss = 0.0f;
  for (int i0 = begin + lane; i0 < end; i0 += 32 * kGemvLoads) {
    if (i0 != begin + lane) load(i0);
#pragma unroll
    for (int u = 0; u < kGemvLoads; ++u) {
      const int i = i0 + 32 * u;
      if (i >= end) break;
      float4 xa, xb;
      if constexpr (X16) {
        const uint4 packed = __ldg(static_cast<const uint4*>(xv) + i);
        const auto* xp = reinterpret_cast<const typename H::Pair*>(&packed);
        const float2 a0 = H::to2(xp[0]), a1 = H::to2(xp[1]), a2 = H::to2(xp[2]), a3 = H::to2(xp[3]);
        xa = make_float4(a0.x, a0.y, a1.x, a1.y);
        xb = make_float4(a2.x, a2.y, a3.x, a3.y);
      } else {
        xa = __ldg(x4 + 2 * i);
        xb = __ldg(x4 + 2 * i + 1);
        if (g4) {
          ss += xa.x * xa.x + xa.y * xa.y + xa.z * xa.z + xa.w * xa.w + xb.x * xb.x + xb.y * xb.y + xb.z * xb.z +
                xb.w * xb.w;
          const float4 ga = __ldg(g4 + 2 * i), gb = __ldg(g4 + 2 * i + 1);
          xa = make_float4(ga.x * xa.x, ga.y * xa.y, ga.z * xa.z, ga.w * xa.w);
          xb = make_float4(gb.x * xb.x, gb.y * xb.y, gb.z * xb.z, gb.w * xb.w);
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const auto* h = reinterpret_cast<const typename H::Pair*>(&wv[r][u]);
        const float2 w0 = H::to2(h[0]), w1 = H::to2(h[1]);
        const float2 w2 = H::to2(h[2]), w3 = H::to2(h[3]);
        acc[r] += w0.x * xa.x + w0.y * xa.y + w1.x * xa.z + w1.y * xa.w + w2.x * xb.x + w2.y * xb.y + w3.x * xb.z +
                  w3.y * xb.w;
      }
    }
  }
  // The rows' sums and the norm's sum of squares (sum[R]), in lane 0 of the group's first warp
  // (`lead`): a split row's parts added in warp order.
  float sum[R + 1];
#pragma unroll
  for (int r = 0; r < R; ++r) sum[r] = detail::warp_sum(acc[r]);
  sum[R] = g4 ? detail::warp_sum(ss) : 0.0f;
  bool lead = lane == 0;
  if constexpr (Split > 1) {
    __shared__ float partial[Warps][R + 1];
    if (lane == 0)
#pragma unroll
      for (int r = 0; r <= R; ++r) partial[warp][r] = sum[r];
    __syncthreads();
    lead = lane == 0 && warp % Split == 0;
    if (lead)
#pragma unroll
      for (int r = 0; r <= R; ++r) {
        sum[r] = 0.0f;
#pragma unroll
        for (int p = 0; p < Split; ++p) sum[r] += partial[warp + p][r];
      }
  }
  const float inv = g4 ? 1.0f / sqrtf(sum[R] / in + norm.eps) : 1.0f;
  if (lead && o0 < out) {
    if constexpr (Swiglu) {
      const float g = sum[0] * inv, u = sum[1] * inv;
      y[o0] = g * (1.0f / (1.0f + expf(-g))) * u;
    } else if constexpr (Epi == kEpiRope) {
      float v0 = sum[0] * inv, v1 = sum[1] * inv;
      if (o0 + 1 < out) {
        const int i = o0;
        // __fadd_rn: never fused with the product above into an FMA, so the same bits as the
        // GEMV's stored output plus the bias (rope_store_qkv, add_bias_rows, the CPU).
        if (rs.bias) v0 = __fadd_rn(v0, rs.bias[i]), v1 = __fadd_rn(v1, rs.bias[i + 1]);
        if (i < rs.q_dim + rs.kv_dim)
          detail::rope_rotate(v0, v1, *rs.position, i % rs.head_dim, rs.head_dim, rs.theta, rs.freq_table);
        T* dst = i < rs.q_dim                ? static_cast<T*>(rs.q16) + i
                 : i < rs.q_dim + rs.kv_dim ? static_cast<T*>(rs.k_pool) + *rs.offset + (i - rs.q_dim)
                                            : static_cast<T*>(rs.v_pool) + *rs.offset + (i - rs.q_dim - rs.kv_dim);
        dst[0] = H::from(v0);
        dst[1] = H::from(v1);
      }
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float a = sum[r] * inv;
        if (o0 + r < out) y[o0 + r] = accumulate ? y[o0 + r] + a : a;
      }
    }
  }
  // Warp 0 (never past `out`) when its rows are done: the block's share of the next weights.
  if (threadIdx.x == 0) detail::l2_prefetch_block_share(next.base, next.bytes);
}

}  // namespace

namespace {

bool misaligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 != 0; }

void check_version(const char* who, int version, int highest) {
  if (version < 1 || version > highest)
    throw std::invalid_argument(std::string(who) + ": version " + std::to_string(version) + "; allowed: 1.." +
                                std::to_string(highest));
}

// X16: x in the weights' 16-bit type (versions 2-11; version 1 runs as version 2), no norm.
template <class T, bool X16 = false>
void gemv_16(const char* who, float* y, const void* x, const std::uint16_t* w, int in, int out, bool accumulate,
             cudaStream_t stream, int version, GemvNorm norm, L2Prefetch next) {
  if (misaligned(next.base)) throw std::invalid_argument(std::string(who) + ": the prefetch range must start 16-byte aligned");
  if (in % 8 == 0 && (misaligned(x) || (norm.weight && misaligned(norm.weight))))
    throw std::runtime_error(std::string(who) + ": x and the norm weight must be 16-byte aligned");
  check_version(who, version, kGemvVersionsAll);
  if (X16 && (in % 8 != 0 || norm.weight))
    throw std::invalid_argument(std::string(who) + ": a 16-bit x needs in % 8 == 0 and no fused norm");
  const auto* wt = reinterpret_cast<const T*>(w);
  if (!X16 && (version == 1 || in % 8 != 0)) {
    detail::launch_pdl(gemv_bf16_kernel<T>, unsigned((out + kGemvWarps - 1) / kGemvWarps), 32 * kGemvWarps, 0, stream, y,
                       static_cast<const float*>(x), wt, in, out, accumulate, norm, next);
  } else {
    // rows_per_block: rows of w a block computes; warps: its warps.
    const auto launch = [&](auto kernel, int rows_per_block, int warps) {
      detail::launch_pdl(kernel, unsigned((out + rows_per_block - 1) / rows_per_block), 32 * warps, 0, stream, y, x, wt,
                         in, out, accumulate, norm, next, RopeStore{});
    };
    constexpr int W = kGemvWarps;
    constexpr int P = kEpiPlain;
    if (version <= 2) launch(gemv_bf16_multi_kernel<T, 1, 4, W, P, X16>, W, W);
    else if (version == 3) launch(gemv_bf16_multi_kernel<T, 2, 4, W, P, X16>, 2 * W, W);
    else if (version == 4) launch(gemv_bf16_multi_kernel<T, 1, 8, W, P, X16>, W, W);
    else if (version == 5) launch(gemv_bf16_multi_kernel<T, 4, 4, W, P, X16>, 4 * W, W);
    else if (version == 6) launch(gemv_bf16_multi_kernel<T, 1, 4, 2, P, X16>, 2, 2);
    else if (version == 7) launch(gemv_bf16_multi_kernel<T, 1, 8, 2, P, X16>, 2, 2);
    else if (version == 8) launch(gemv_bf16_multi_kernel<T, 1, 4, W, P, X16, true>, W, W);
    else if (version == 9) launch(gemv_bf16_multi_kernel<T, 1, 8, W, P, X16, true>, W, W);
    else if (version == 10) launch(gemv_bf16_multi_kernel<T, 1, 4, W, P, X16, false, 2>, W / 2, W);
    else launch(gemv_bf16_multi_kernel<T, 1, 4, W, P, X16, false, 4>, W / 4, W);
  }
  detail::check_launch(who);
}

// A gate/up (SwiGLU) or RoPE-pair GEMV of `pairs` warp groups by version: 1, Warps1 warps a block,
// a warp a group; 2, 3 and 4, 8-warp blocks, a group split over 2, 4 and 8 warps; 5, split over 4
// warps with 2 loads a row in flight (the bytes in flight of GEMV version 11, which reads 1 row).
template <class T, int Epi, int Warps1>
void launch_epilogue(int version, int pairs, cudaStream_t stream, float* y, const void* x, const T* w, int in, int out,
                     GemvNorm norm, L2Prefetch next, RopeStore rs) {
  const auto launch = [&](auto kernel, int warps, int split) {
    const int groups = warps / split;
    detail::launch_pdl(kernel, unsigned((pairs + groups - 1) / groups), 32 * warps, 0, stream, y, x, w, in, out, false,
                       norm, next, rs);
  };
  constexpr int W = kGemvWarps;
  if (version == 1) launch(gemv_bf16_multi_kernel<T, 2, 4, Warps1, Epi>, Warps1, 1);
  else if (version == 2) launch(gemv_bf16_multi_kernel<T, 2, 4, W, Epi, false, false, 2>, W, 2);
  else if (version == 3) launch(gemv_bf16_multi_kernel<T, 2, 4, W, Epi, false, false, 4>, W, 4);
  else if (version == 4) launch(gemv_bf16_multi_kernel<T, 2, 4, W, Epi, false, false, 8>, W, 8);
  else launch(gemv_bf16_multi_kernel<T, 2, 2, W, Epi, false, false, 4>, W, 4);
}

template <class T>
void gemv_swiglu_16(const char* who, float* h, const float* x, const std::uint16_t* w13, int in, int hidden,
                    cudaStream_t stream, GemvNorm norm, L2Prefetch next, int version) {
  if (in % 8 != 0 || misaligned(x) || misaligned(w13) || (norm.weight && misaligned(norm.weight)) || misaligned(next.base))
    throw std::invalid_argument(std::string(who) + ": needs in % 8 == 0 and 16-byte aligned x, w13, norm weight and prefetch range");
  check_version(who, version, kEpilogueVersions);
  launch_epilogue<T, kEpiSwiglu, 2>(version, hidden, stream, h, x, reinterpret_cast<const T*>(w13), in, hidden, norm,
                                    next, RopeStore{});
  detail::check_launch(who);
}

// Version 1 is GEMV version 3's shape (2 rows a warp, 4 loads a row in flight, 8 warps a block).
template <class T>
void gemv_qkv_rope_16(const char* who, const float* x, const std::uint16_t* wqkv, int in, int n_heads, int n_kv_heads,
                      int head_dim, RopeStore rs, cudaStream_t stream, GemvNorm norm, L2Prefetch next, int version) {
  if (in % 8 != 0 || head_dim % 2 != 0 || misaligned(x) || misaligned(wqkv) || (norm.weight && misaligned(norm.weight)) ||
      misaligned(next.base))
    throw std::invalid_argument(std::string(who) + ": needs in % 8 == 0, an even head_dim and 16-byte aligned x, wqkv, "
                                "norm weight and prefetch range");
  check_version(who, version, kEpilogueVersions);
  rs.head_dim = head_dim;
  rs.q_dim = n_heads * head_dim;
  rs.kv_dim = n_kv_heads * head_dim;
  const int out = rs.q_dim + 2 * rs.kv_dim;
  launch_epilogue<T, kEpiRope, kGemvWarps>(version, (out + 1) / 2, stream, static_cast<float*>(nullptr),
                                           static_cast<const void*>(x), reinterpret_cast<const T*>(wqkv), in, out, norm,
                                           next, rs);
  detail::check_launch(who);
}

}  // namespace

void gemv_swiglu_bf16(float* h, const float* x, const bf16_bits* w13, int in, int hidden, cudaStream_t stream,
                      const float* norm_weight, float norm_eps, L2Prefetch next, int version) {
  gemv_swiglu_16<__nv_bfloat16>("gemv_swiglu_bf16", h, x, w13, in, hidden, stream, {norm_weight, norm_eps}, next,
                                version);
}
void gemv_swiglu_f16(float* h, const float* x, const f16_bits* w13, int in, int hidden, cudaStream_t stream,
                     const float* norm_weight, float norm_eps, L2Prefetch next, int version) {
  gemv_swiglu_16<__half>("gemv_swiglu_f16", h, x, w13, in, hidden, stream, {norm_weight, norm_eps}, next, version);
}

void gemv_qkv_rope_bf16(const float* x, const bf16_bits* wqkv, int in, int n_heads, int n_kv_heads, int head_dim,
                        const int* position, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offset,
                        void* q16, cudaStream_t stream, const float* norm_weight, float norm_eps, L2Prefetch next,
                        int version, const float* bias) {
  gemv_qkv_rope_16<__nv_bfloat16>("gemv_qkv_rope_bf16", x, wqkv, in, n_heads, n_kv_heads, head_dim,
                                  {position, offset, k_pool, v_pool, q16, 0, 0, 0, freq.theta, freq.table, bias}, stream,
                                  {norm_weight, norm_eps}, next, version);
}
void gemv_qkv_rope_f16(const float* x, const f16_bits* wqkv, int in, int n_heads, int n_kv_heads, int head_dim,
                       const int* position, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offset,
                       void* q16, cudaStream_t stream, const float* norm_weight, float norm_eps, L2Prefetch next,
                       int version, const float* bias) {
  gemv_qkv_rope_16<__half>("gemv_qkv_rope_f16", x, wqkv, in, n_heads, n_kv_heads, head_dim,
                           {position, offset, k_pool, v_pool, q16, 0, 0, 0, freq.theta, freq.table, bias}, stream,
                           {norm_weight, norm_eps}, next, version);
}

void gemv_bf16(float* y, const float* x, const bf16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
               int version, const float* norm_weight, float norm_eps, L2Prefetch next) {
  gemv_16<__nv_bfloat16>("gemv_bf16", y, x, w, in, out, accumulate, stream, version, {norm_weight, norm_eps}, next);
}

void gemv_f16(float* y, const float* x, const f16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
              int version, const float* norm_weight, float norm_eps, L2Prefetch next) {
  gemv_16<__half>("gemv_f16", y, x, w, in, out, accumulate, stream, version, {norm_weight, norm_eps}, next);
}

void gemv_bf16_x16(float* y, const bf16_bits* x, const bf16_bits* w, int in, int out, bool accumulate,
                   cudaStream_t stream, int version, L2Prefetch next) {
  gemv_16<__nv_bfloat16, true>("gemv_bf16_x16", y, x, w, in, out, accumulate, stream, version, {nullptr, 0.0f}, next);
}

void gemv_f16_x16(float* y, const f16_bits* x, const f16_bits* w, int in, int out, bool accumulate, cudaStream_t stream,
                  int version, L2Prefetch next) {
  gemv_16<__half, true>("gemv_f16_x16", y, x, w, in, out, accumulate, stream, version, {nullptr, 0.0f}, next);
}

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

namespace {

// y[rows][out] (fp32) = x[rows][in] w[out][in]^T, x and w of the 16-bit type t, fp32 accumulation.
void matmul_16(cudaDataType t, const char* who, float* y, const std::uint16_t* x, const std::uint16_t* w, int rows,
               int in, int out, cublasHandle_t handle, cudaStream_t stream) {
  detail::check(cublasSetStream(handle, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Column-major view, as cuda::matmul: Y^T [out x rows] = W^T-view [in x out]^T * X^T [in x rows].
  detail::check(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, t, in, x, t, in, &zero, y,
                             CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                who);
}

}  // namespace

void matmul_bf16(float* y, const bf16_bits* x, const bf16_bits* w, int rows, int in, int out, cublasHandle_t handle,
                 cudaStream_t stream) {
  matmul_16(CUDA_R_16BF, "matmul_bf16", y, x, w, rows, in, out, handle, stream);
}

void matmul_f16(float* y, const f16_bits* x, const f16_bits* w, int rows, int in, int out, cublasHandle_t handle,
                cudaStream_t stream) {
  matmul_16(CUDA_R_16F, "matmul_f16", y, x, w, rows, in, out, handle, stream);
}

}  // namespace ablate::cuda
