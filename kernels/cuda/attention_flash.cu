// Flash attention on the GPU, fp16/bf16 inputs with fp32 accumulation:
//  - attention_flash: prefill (any n_q), FlashAttention-2 style. One block per (query tile, query
//    head), 16 query rows a warp; K/V tiles of 64 keys in shared memory, read through the page
//    table; online softmax in fp32 (exp2 domain). Version 5 (default): 8 warps (128 rows),
//    mma.sync m16n8k16 with S, P and O in registers issued k-step outer (independent accumulators
//    back to back), ldmatrix for K and V, cp.async double buffering. Versions 1-4 (WMMA through
//    shared memory; mma.sync with synchronous loads; + cp.async; 4 warps) stay beside it.
//  - attention_flash_decode: paged decode (n_q = 1 .. k+1), one block per (query head, query),
//    D/8 threads per key reading 8 elements at once (16 bytes; 8 of fp8 K/V, widened as loaded:
//    decode is bound by the K/V bytes it reads), several keys in flight per block, a
//    shared-memory merge of the per-key-slot softmax states.
//  - attention_flash_split: the same kernel over key chunks (grid z = splits), each writing a
//    normalised partial output and its log-sum-exp to a workspace, then a reduction kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/page_window.hpp"
#include "cuda/check.cuh"
#include "cuda/half16.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

constexpr float kLog2e = 1.4426950408889634f;

// An AttentionProblem with its pointers at their real element type (all device pointers): T the
// query and output's 16-bit type, K the pools' (the decode kernels' only; prefill reads K = T).
template <class T, class K = T>
struct Prob {
  const T* q;
  T* out;
  const K* k;
  const K* v;
  const int32_t* idx;
  int q_stride, out_stride, token_stride, page_size, n_q, q_pos0, n_heads, n_kv_heads, kv_len;
  float scale_log2;  // scale * log2(e): scores go straight into exp2
};

template <class T, class K = T>
Prob<T, K> prob_of(const AttentionProblem& p) {
  return {reinterpret_cast<const T*>(p.q),
          reinterpret_cast<T*>(p.out),
          reinterpret_cast<const K*>(p.kv.k_pool),
          reinterpret_cast<const K*>(p.kv.v_pool),
          p.kv.indices,
          p.q_stride,
          p.out_stride,
          p.kv.token_stride,
          p.kv.page_size,
          p.n_q,
          p.q_pos0,
          p.n_heads,
          p.n_kv_heads,
          p.kv_len(),
          p.scale * kLog2e};
}

// Start of token t's vector for KV head kvh (t < kv_len), t being on page `page` of the pool.
template <class T, class K>
__device__ __forceinline__ std::size_t kv_offset_in(const Prob<T, K>& p, int page, int t, int kvh, int D) {
  return (std::size_t(page) * p.page_size + t % p.page_size) * p.token_stride + std::size_t(kvh) * D;
}
// The same, its page read from the page table.
template <class T, class K>
__device__ __forceinline__ std::size_t kv_offset(const Prob<T, K>& p, int t, int kvh, int D) {
  return kv_offset_in(p, p.idx[t / p.page_size], t, kvh, D);
}

// 8 consecutive K (or V) elements of type K as one decode thread loads them (Raw: one vector load,
// 16 bytes of a 16-bit type, 8 of fp8) and widens them to fp32 at use. fp8 e4m3 -> fp16 is exact
// (cvt.rn.f16x2.e4m3x2 on sm_89+), so the fp32 values are cpu::to_float's.
template <class K>
struct Kv8 {
  using Raw = uint4;
  static __device__ __forceinline__ Raw zero() { return make_uint4(0, 0, 0, 0); }
  static __device__ __forceinline__ Raw load(const K* p) { return *reinterpret_cast<const uint4*>(p); }
  static __device__ __forceinline__ void widen(const Raw& r, float (&f)[8]) {
    const K* e = reinterpret_cast<const K*>(&r);
#pragma unroll
    for (int c = 0; c < 8; ++c) f[c] = Half16<K>::to(e[c]);
  }
};
template <>
struct Kv8<__nv_fp8_e4m3> {
  using Raw = uint2;
  static __device__ __forceinline__ Raw zero() { return make_uint2(0, 0); }
  static __device__ __forceinline__ Raw load(const __nv_fp8_e4m3* p) { return *reinterpret_cast<const uint2*>(p); }
  static __device__ __forceinline__ void widen(const Raw& r, float (&f)[8]) {
    const auto* pairs = reinterpret_cast<const __nv_fp8x2_storage_t*>(&r);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float2 x = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(pairs[c], __NV_E4M3)));
      f[2 * c] = x.x;
      f[2 * c + 1] = x.y;
    }
  }
};

// ---- prefill: WMMA flash ---------------------------------------------------------------------

constexpr int kBr = 64, kBc = 64, kPrefillThreads = 128;  // 4 warps x 16 rows

template <int D>
struct PrefillSmem {
  static constexpr int ld = D + 8;      // T elements per Q/K/V row (16-byte pad, 32-byte aligned tiles)
  static constexpr int lds = kBc + 4;   // floats per S row
  static constexpr int ldp = kBc + 8;   // T elements per P row
  static constexpr int ldo = D + 4;     // floats per O row
  template <class T>
  static constexpr std::size_t bytes() {
    return std::size_t(3) * kBr * ld * sizeof(T) + std::size_t(kBr) * lds * 4 + std::size_t(kBr) * ldp * sizeof(T) +
           std::size_t(kBr) * ldo * 4;
  }
};

// rows x D tile from global (row r at src(r), or zeros when src(r) is null) into shared memory,
// 16-byte vectors.
template <class T, int D, class Src>
__device__ __forceinline__ void load_tile(T* dst, int ld, int rows, Src src) {
  constexpr int vec = 8, per_row = D / vec;
  for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
    const int r = e / per_row, c = (e % per_row) * vec;
    const T* s = src(r);
    uint4 val = make_uint4(0, 0, 0, 0);
    if (s) val = *reinterpret_cast<const uint4*>(s + c);
    *reinterpret_cast<uint4*>(dst + r * ld + c) = val;
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kPrefillThreads) flash_prefill_kernel(Prob<T> p) {
  using namespace nvcuda;
  using S = PrefillSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBr * S::ld;
  T* sV = sK + kBc * S::ld;
  float* sS = reinterpret_cast<float*>(sV + kBc * S::ld);
  T* sP = reinterpret_cast<T*>(sS + kBr * S::lds);
  float* sO = reinterpret_cast<float*>(sP + kBr * S::ldp);

  const int q0 = blockIdx.x * kBr, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows_here = min(kBr, p.n_q - q0);

  load_tile<T, D>(sQ, S::ld, kBr, [&](int r) -> const T* {
    return r < rows_here ? p.q + std::size_t(q0 + r) * p.q_stride + std::size_t(h) * D : nullptr;
  });
  for (int e = threadIdx.x; e < kBr * D; e += blockDim.x) sO[(e / D) * S::ldo + e % D] = 0.0f;

  // Lane pair (2 lanes) per row of the warp's 16: row wr, columns [half * 32, half * 32 + 32) of S.
  const int wr = lane >> 1, half = lane & 1, row = warp * 16 + wr, qi = q0 + row;
  const int visible = qi < p.n_q ? min(p.kv_len, p.q_pos0 + qi + 1) : 0;
  float m = -INFINITY, l = 0.0f;
  const int kv_end = min(p.kv_len, p.q_pos0 + q0 + rows_here);  // keys the block's last row sees

  for (int t0 = 0; t0 < kv_end; t0 += kBc) {
    __syncthreads();  // the previous tile's K/V are no longer read
    const int n = min(kBc, kv_end - t0);
    load_tile<T, D>(sK, S::ld, kBc, [&](int r) -> const T* { return r < n ? p.k + kv_offset(p, t0 + r, kvh, D) : nullptr; });
    load_tile<T, D>(sV, S::ld, kBc, [&](int r) -> const T* { return r < n ? p.v + kv_offset(p, t0 + r, kvh, D) : nullptr; });
    __syncthreads();

    // S_w = Q_w K^T: 16 rows x 64 keys per warp.
    for (int j = 0; j < kBc / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a, sQ + warp * 16 * S::ld + kk * 16, S::ld);
        wmma::load_matrix_sync(b, sK + j * 16 * S::ld + kk * 16, S::ld);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sS + warp * 16 * S::lds + j * 16, acc, S::lds, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax for this lane's half row; masked keys give p = 0.
    float* srow = sS + row * S::lds + half * 32;
    T* prow = sP + row * S::ldp + half * 32;
    float mx = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int t = t0 + half * 32 + c;
      const float s = t < visible ? srow[c] * p.scale_log2 : -INFINITY;
      srow[c] = s;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float m_new = fmaxf(m, mx);
    float alpha = 1.0f, sum = 0.0f;
    if (m_new == -INFINITY) {
      for (int c = 0; c < 32; ++c) prow[c] = Half16<T>::from(0.0f);
    } else {
      alpha = exp2f(m - m_new);  // 0 while m = -inf
      for (int c = 0; c < 32; ++c) {
        const float e = exp2f(srow[c] - m_new);  // exp2(-inf) = 0
        const T pt = Half16<T>::from(e);
        prow[c] = pt;
        sum += Half16<T>::to(pt);  // the sum of what the PV product actually weights
      }
      m = m_new;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    float* orow = sO + row * S::ldo + half * (D / 2);
    if (alpha != 1.0f)
      for (int c = 0; c < D / 2; ++c) orow[c] *= alpha;
    __syncwarp();

    // O_w += P_w V.
    for (int j = 0; j < D / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, sO + warp * 16 * S::ldo + j * 16, S::ldo, wmma::mem_row_major);
      for (int kk = 0; kk < kBc / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(a, sP + warp * 16 * S::ldp + kk * 16, S::ldp);
        wmma::load_matrix_sync(b, sV + kk * 16 * S::ld + j * 16, S::ld);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(sO + warp * 16 * S::ldo + j * 16, acc, S::ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }

  if (qi < p.n_q) {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float* orow = sO + row * S::ldo + half * (D / 2);
    T* dst = p.out + std::size_t(qi) * p.out_stride + std::size_t(h) * D + half * (D / 2);
    for (int c = 0; c < D / 2; ++c) dst[c] = Half16<T>::from(orow[c] * inv);
  }
}

// ---- prefill version 2: mma.sync with the accumulators in registers --------------------------
// FlashAttention-2's structure on the PTX tensor-core instruction mma.m16n8k16 (bf16/fp16 in,
// fp32 accumulate), whose fragment layouts the PTX ISA documents: each of 4 warps owns 16 query
// rows; Q stays in registers as A fragments for the whole key loop; S = Q K^T lands in registers,
// the online softmax runs on them (a row lives in the 4 lanes of a quad), and the rounded
// probabilities are reused in place as the A fragments of O += P V, so neither S, P nor O touches
// shared memory (version 1 round-trips all three through it). K and V tiles are read from shared
// memory with ldmatrix (V transposed by ldmatrix.trans). Query tiles run last-first so that the
// longest causal rows start first.

constexpr int kBr2 = 64, kBc2 = 64, kPrefill2Threads = 128;

// Stages: K/V tile buffers. 1 (version 2): each tile loaded synchronously between two barriers.
// 2 (version 3): tile i+1 copied with cp.async while tile i is computed on.
template <int D, int Stages>
struct Prefill2Smem {
  static constexpr int ld = D + 8;  // elements per row: a 16-byte pad spreads ldmatrix rows over banks
  static constexpr std::size_t bytes = std::size_t(kBr2 + 2 * Stages * kBc2) * ld * 2;
};

__device__ __forceinline__ unsigned smem_addr(const void* p) { return static_cast<unsigned>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d (16x8, fp32) += a (16x16) b (16x8).
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without passing through registers (zeros when !valid; src is then
// not read but must be a valid address), committed and awaited in groups.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all_but_newest() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

// Versions 3-5's K and V tile of n <= kBc2 keys from t0 into shared memory by cp.async:
// Threads / kBc2 threads a row, each looking its row up in the block table once (version 2 looks
// it up per 16 bytes).
template <class T, int D, int Threads = kPrefill2Threads>
__device__ __forceinline__ void load_kv_async(T* sK, T* sV, int ld, const Prob<T>& p, int t0, int n, int kvh) {
  static_assert(Threads % kBc2 == 0, "whole threads a row");
  constexpr int tpr = Threads / kBc2, per_thread = D / 8 / tpr;  // 16-byte vectors of a row per thread
  const int r = threadIdx.x % kBc2, part = threadIdx.x / kBc2;
  const bool valid = r < n;
  const std::size_t off = valid ? kv_offset(p, t0 + r, kvh, D) : 0;
#pragma unroll
  for (int v = 0; v < per_thread; ++v) {
    const int col = (part * per_thread + v) * 8;
    cp_async16(sK + r * ld + col, p.k + off + col, valid);
    cp_async16(sV + r * ld + col, p.v + off + col, valid);
  }
}

// Two floats rounded to T, packed low (lo) / high (hi) into 32 bits; the rounded values back.
template <class T>
__device__ __forceinline__ unsigned pack2(float& lo, float& hi) {
  const T l = Half16<T>::from(lo), h = Half16<T>::from(hi);
  lo = Half16<T>::to(l);
  hi = Half16<T>::to(h);
  unsigned short ls, hs;
  memcpy(&ls, &l, 2);
  memcpy(&hs, &h, 2);
  return unsigned(ls) | (unsigned(hs) << 16);
}

// 2^x by the hardware approximation (2^-22 relative error).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The start of a warp's 16 query rows in versions 2-5: their A fragments (Q, from the shared
// tile sQ) and, for this lane's two rows (r = 0: row g of the 16, r = 1: row g + 8), how many keys
// each sees (causal; 0 past n_q).
template <class T, int KS>
__device__ __forceinline__ void warp_rows_setup(unsigned (&qf)[KS][4], int (&vis)[2], const T* sQ, int ld,
                                                const Prob<T>& p, int q0) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2;
#pragma unroll
  for (int kk = 0; kk < KS; ++kk)
    ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + kk * 16 + 8 * (lane >> 4));
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = q0 + warp * 16 + g + 8 * r;
    vis[r] = qi < p.n_q ? min(p.kv_len, p.q_pos0 + qi + 1) : 0;
  }
}

// The end of a warp's rows in versions 2-5: each row's sum gathered over its quad, the output
// normalised by it and written (rows past n_q skipped).
template <class T, int D>
__device__ __forceinline__ void store_warp_rows(float (&o)[D / 8][4], float (&l)[2], const Prob<T>& p, int q0, int h) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, c = (lane & 3) * 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int qi = q0 + warp * 16 + g + 8 * r;
    if (qi >= p.n_q) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    T* dst = p.out + std::size_t(qi) * p.out_stride + std::size_t(h) * D + c;
#pragma unroll
    for (int t = 0; t < D / 8; ++t) {
      dst[t * 8] = Half16<T>::from(o[t][2 * r] * inv);
      dst[t * 8 + 1] = Half16<T>::from(o[t][2 * r + 1] * inv);
    }
  }
}

// The online-softmax step of one 16 x 64 score tile held as mma.sync accumulators (this lane's two
// rows r = 0, 1, each spread over the 4 lanes of a quad): S scaled into the exp2 domain (and, when
// `mask`, keys at or past a row's vis set to -inf), the running max m and this lane's part of the
// row sum l updated, O rescaled, and P = exp2(S - m) rounded to T into pa, whose row j is exactly
// the A fragment of keys [16j, 16j + 16) of O += P V. FastExp: the hardware ex2.approx (versions
// 4-5) instead of exp2f (version 2-3).
template <class T, int NT, bool FastExp>
__device__ __forceinline__ void online_softmax_tile(float (&sc)[8][4], bool mask, int t0, int c, const int (&vis)[2],
                                                    float scale_log2, float (&m)[2], float (&l)[2], float (&o)[NT][4],
                                                    unsigned (&pa)[4][4]) {
  const auto ex2 = [](float x) { return FastExp ? fast_exp2(x) : exp2f(x); };
  float mx[2] = {-INFINITY, -INFINITY};
  if (mask) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = t0 + nt * 8 + c + (e & 1), r = e >> 1;
        sc[nt][e] = key < vis[r] ? sc[nt][e] * scale_log2 : -INFINITY;
        mx[r] = fmaxf(mx[r], sc[nt][e]);
      }
  } else {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sc[nt][e] *= scale_log2;
        mx[e >> 1] = fmaxf(mx[e >> 1], sc[nt][e]);
      }
  }
  float ref[2], alpha[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(m[r], mx[r]);
    ref[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: every p is 0, no NaN
    alpha[r] = ex2(m[r] - ref[r]);               // 0 while m = -inf
    m[r] = m_new;
    l[r] *= alpha[r];
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    o[t][0] *= alpha[0];
    o[t][1] *= alpha[0];
    o[t][2] *= alpha[1];
    o[t][3] *= alpha[1];
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float* v = sc[2 * j + half];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = ex2(v[e] - ref[e >> 1]);
      pa[j][2 * half] = pack2<T>(v[0], v[1]);
      pa[j][2 * half + 1] = pack2<T>(v[2], v[3]);
      l[0] += v[0] + v[1];  // the sum of what the PV product actually weights
      l[1] += v[2] + v[3];
    }
}

template <class T, int D, int Stages>
__global__ void __launch_bounds__(kPrefill2Threads) flash_prefill_v2_kernel(Prob<T> p) {
  using S = Prefill2Smem<D, Stages>;
  constexpr int ld = S::ld, KS = D / 16, NT = D / 8;  // k-steps over D; 8-wide output tiles
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK0 = sQ + kBr2 * ld;              // stage s: K at sK0 + s * 2 * kBc2 * ld, V kBc2 rows after it

  const int q0 = (gridDim.x - 1 - blockIdx.x) * kBr2, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int lane = threadIdx.x % 32, c = (lane & 3) * 2;
  const int rows_here = min(kBr2, p.n_q - q0);
  load_tile<T, D>(sQ, ld, kBr2, [&](int r) -> const T* {
    return r < rows_here ? p.q + std::size_t(q0 + r) * p.q_stride + std::size_t(h) * D : nullptr;
  });
  __syncthreads();

  unsigned qf[KS][4];  // A fragments of the warp's 16 rows
  int vis[2];          // keys this lane's two rows see
  warp_rows_setup<T, KS>(qf, vis, sQ, ld, p, q0);
  float o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the row sum
  const int kv_end = min(p.kv_len, p.q_pos0 + q0 + rows_here);
  const int tiles = (kv_end + kBc2 - 1) / kBc2;
  const auto stage_k = [&](int tile) { return sK0 + (Stages == 2 ? (tile & 1) : 0) * 2 * kBc2 * ld; };
  if constexpr (Stages == 2) {
    if (tiles > 0) load_kv_async<T, D>(stage_k(0), stage_k(0) + kBc2 * ld, ld, p, 0, min(kBc2, kv_end), kvh);
    cp_async_commit();
  }

  for (int tile = 0; tile < tiles; ++tile) {
    const int t0 = tile * kBc2;
    T* sK = stage_k(tile);
    T* sV = sK + kBc2 * ld;
    if constexpr (Stages == 2) {
      // The next tile goes into the other stage, which every warp finished reading before the
      // barrier that ended the previous iteration; then wait for this tile's copies.
      if (tile + 1 < tiles) {
        T* nK = stage_k(tile + 1);
        load_kv_async<T, D>(nK, nK + kBc2 * ld, ld, p, t0 + kBc2, min(kBc2, kv_end - t0 - kBc2), kvh);
      }
      cp_async_commit();  // possibly empty: the wait below then still covers this tile's group
      cp_async_wait_all_but_newest();
      __syncthreads();
    } else {
      __syncthreads();  // every warp is done with the previous tile
      const int n = min(kBc2, kv_end - t0);
      load_tile<T, D>(sK, ld, kBc2, [&](int r) -> const T* { return r < n ? p.k + kv_offset(p, t0 + r, kvh, D) : nullptr; });
      load_tile<T, D>(sV, ld, kBc2, [&](int r) -> const T* { return r < n ? p.v + kv_offset(p, t0 + r, kvh, D) : nullptr; });
      __syncthreads();
    }

    // S = Q K^T: 16 x 64, eight 16x8 tiles.
    float sc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
      for (int k2 = 0; k2 < KS / 2; ++k2) {
        unsigned b[4];
        ldmatrix_x4(b, sK + (nt * 8 + (lane & 7)) * ld + k2 * 32 + 8 * (lane >> 3));
        mma16816<T>(sc[nt], qf[2 * k2], b[0], b[1]);
        mma16816<T>(sc[nt], qf[2 * k2 + 1], b[2], b[3]);
      }
    }
    // Mask (causal, past kv_len), scale into the exp2 domain, and the online softmax per row.
    unsigned pa[4][4];
    online_softmax_tile<T, NT, false>(sc, true, t0, c, vis, p.scale_log2, m, l, o, pa);
    // O += P V: V's [key][d] tile read transposed by ldmatrix as B fragments.
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int j2 = 0; j2 < 2; ++j2) {
        unsigned b[4];
        ldmatrix_x4_trans(b, sV + (j2 * 32 + (lane & 7) + 8 * (lane >> 3)) * ld + t * 8);
        mma16816<T>(o[t], pa[2 * j2], b[0], b[1]);
        mma16816<T>(o[t], pa[2 * j2 + 1], b[2], b[3]);
      }
    if constexpr (Stages == 2) __syncthreads();  // this stage is read; the next iteration may refill it
  }

  store_warp_rows<T, D>(o, l, p, q0, h);
}

// ---- prefill versions 4 and 5: version 3 with FlashAttention-2's issue order -----------------
// Version 2/3 issue each 16x8 score tile's MMAs back to back (for each tile: for each k-step), so
// consecutive mma.sync instructions depend on each other and a warp waits out the tensor pipe's
// latency at every one. Here the k-step is the outer loop and the output tiles the inner one:
// eight (S) or sixteen (O) independent accumulators between two uses of the same one. One
// ldmatrix.x4 fetches the B fragments of two neighbouring tiles for one k-step. Also:
//  - the causal mask is applied only to the tiles that cross a row's last visible key, and a
//    warp skips the MMAs of a tile none of its rows sees (the diagonal of a 128-row block);
//  - exp2 is the hardware ex2.approx (2^-22 relative error; the probabilities are rounded to
//    16 bits right after);
//  - Q arrives by cp.async together with the first K/V stage.
// Version 4: 4 warps, 64 query rows a block. Version 5: 8 warps, 128 rows, so each K/V tile
// read from L2 serves twice the queries.
template <int D, int Warps>
struct Prefill4Smem {
  static constexpr int rows = 16 * Warps, ld = D + 8;
  static constexpr std::size_t bytes = std::size_t(rows + 2 * 2 * kBc2) * ld * 2;  // Q + 2 stages of K, V
};

template <class T, int D, int Warps>
__global__ void __launch_bounds__(Warps * 32) flash_prefill_v4_kernel(Prob<T> p) {
  using S = Prefill4Smem<D, Warps>;
  constexpr int Threads = Warps * 32, Br = S::rows, ld = S::ld, KS = D / 16, NT = D / 8, vecs = D / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK0 = sQ + Br * ld;  // stage s: K at sK0 + s * 2 * kBc2 * ld, V kBc2 rows after it
  const auto stage_k = [&](int tile) { return sK0 + (tile & 1) * 2 * kBc2 * ld; };

  const int q0 = (gridDim.x - 1 - blockIdx.x) * Br, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int lane = threadIdx.x % 32, c = (lane & 3) * 2;
  const int rows_here = min(Br, p.n_q - q0);
  const int kv_end = min(p.kv_len, p.q_pos0 + q0 + rows_here);
  const int tiles = (kv_end + kBc2 - 1) / kBc2;

  for (int e = threadIdx.x; e < Br * vecs; e += Threads) {
    const int r = e / vecs, col = (e % vecs) * 8;
    const bool valid = r < rows_here;
    cp_async16(sQ + r * ld + col, valid ? p.q + std::size_t(q0 + r) * p.q_stride + std::size_t(h) * D + col : p.q, valid);
  }
  if (tiles > 0) load_kv_async<T, D, Threads>(stage_k(0), stage_k(0) + kBc2 * ld, ld, p, 0, min(kBc2, kv_end), kvh);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  unsigned qf[KS][4];  // A fragments of the warp's 16 rows
  int vis[2];          // keys this lane's two rows see
  warp_rows_setup<T, KS>(qf, vis, sQ, ld, p, q0);
  int vis_min = min(vis[0], vis[1]), vis_max = max(vis[0], vis[1]);
#pragma unroll
  for (int s = 1; s < 32; s *= 2) {
    vis_min = min(vis_min, __shfl_xor_sync(0xffffffffu, vis_min, s));
    vis_max = max(vis_max, __shfl_xor_sync(0xffffffffu, vis_max, s));
  }
  float o[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // l: this lane's part of the row sum

  for (int tile = 0; tile < tiles; ++tile) {
    const int t0 = tile * kBc2;
    if (tile + 1 < tiles) {  // into the stage every warp finished reading before the last barrier
      T* nK = stage_k(tile + 1);
      load_kv_async<T, D, Threads>(nK, nK + kBc2 * ld, ld, p, t0 + kBc2, min(kBc2, kv_end - t0 - kBc2), kvh);
    }
    cp_async_commit();  // possibly empty: the wait below then still covers this tile's group
    cp_async_wait_all_but_newest();
    __syncthreads();
    const T* sK = stage_k(tile);
    const T* sV = sK + kBc2 * ld;

    if (t0 < vis_max) {  // warp-uniform: some row of this warp sees a key of this tile
      // S = Q K^T: 16 x 64, eight 16x8 tiles; k-step outer, tiles inner.
      float sc[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KS; ++kk)
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          unsigned b[4];
          ldmatrix_x4(b, sK + (np * 16 + (lane & 7) + 8 * (lane >> 4)) * ld + kk * 16 + 8 * ((lane >> 3) & 1));
          mma16816<T>(sc[2 * np], qf[kk], b[0], b[1]);
          mma16816<T>(sc[2 * np + 1], qf[kk], b[2], b[3]);
        }
      // Scale into the exp2 domain; mask only a tile that crosses some row's last visible key.
      unsigned pa[4][4];
      online_softmax_tile<T, NT, true>(sc, t0 + kBc2 > vis_min, t0, c, vis, p.scale_log2, m, l, o, pa);
      // O += P V: key k-step outer, output tiles inner; ldmatrix.trans gives two tiles' B.
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int tp = 0; tp < NT / 2; ++tp) {
          unsigned b[4];
          ldmatrix_x4_trans(b, sV + (j * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * ld + tp * 16 + 8 * (lane >> 4));
          mma16816<T>(o[2 * tp], pa[j], b[0], b[1]);
          mma16816<T>(o[2 * tp + 1], pa[j], b[2], b[3]);
        }
    }
    __syncthreads();  // this stage is read; the next iteration may refill it
  }

  store_warp_rows<T, D>(o, l, p, q0, h);
}

// ---- decode: paged, optionally split over the key range ---------------------------------------

constexpr int kDecodeThreads = 128;

// A decode thread's 8 query elements (its 16-byte slice li of query i, head h), pre-scaled into the
// exp2 domain, and a zeroed accumulator.
template <class T, class K>
__device__ __forceinline__ void load_q8(float (&q)[8], float (&acc)[8], const Prob<T, K>& p, int i, int h, int D, int li) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p.q + std::size_t(i) * p.q_stride + std::size_t(h) * D + li * 8);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    q[c] = Half16<T>::to(e[c]) * p.scale_log2;
    acc[c] = 0.0f;
  }
}

// The end of a decode block: each of its kpb key slots holds an online-softmax state (max m,
// sum l, accumulator acc); they are stashed in shared memory, merged per output dimension, and
// write(d, value, M, L) receives the normalised output of dimension d with the block's max M and
// sum L (for its log-sum-exp).
template <int D, int kpb, class Write>
__device__ __forceinline__ void merge_slots(float m, float l, const float (&acc)[8], int sub, int li, Write write) {
  __shared__ float sm_m[kpb], sm_l[kpb];
  __shared__ float sm_acc[kpb][D];
  if (li == 0) {
    sm_m[sub] = m;
    sm_l[sub] = l;
  }
#pragma unroll
  for (int c = 0; c < 8; ++c) sm_acc[sub][li * 8 + c] = acc[c];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float M = -INFINITY;
    for (int k = 0; k < kpb; ++k) M = fmaxf(M, sm_m[k]);
    float L = 0.0f, o = 0.0f;
    if (M != -INFINITY)
      for (int k = 0; k < kpb; ++k) {
        const float w = exp2f(sm_m[k] - M);  // 0 for slots that saw no key
        L += w * sm_l[k];
        o += w * sm_acc[k][d];
      }
    write(d, L > 0.0f ? o / L : 0.0f, M, L);
  }
}

// out[d] = sum_s 2^(lse_s - M) o_s[d] / sum_s 2^(lse_s - M) over one (query, head)'s `splits`
// partial outputs (part_o rows of D floats, part_lse their log2-sum-exps), by the block.
template <class T>
__device__ __forceinline__ void reduce_splits(T* out, int D, int splits, const float* part_o, const float* part_lse) {
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, part_lse[s]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.0f, den = 0.0f;
    if (M != -INFINITY)
      for (int s = 0; s < splits; ++s) {
        const float w = exp2f(part_lse[s] - M);
        num += w * part_o[std::size_t(s) * D + d];
        den += w;
      }
    out[d] = Half16<T>::from(den > 0.0f ? num / den : 0.0f);
  }
}

// Block (h, i, s): query i of head h over keys [s * chunk, (s+1) * chunk) clipped to what query i
// sees. part == nullptr: write the normalised output. Else write the normalised partial output to
// part_o[((i * n_heads + h) * splits + s) * D ...] and its log2-sum-exp to part_lse[...].
template <class T, class K, int D>
__global__ void __launch_bounds__(kDecodeThreads) flash_decode_kernel(Prob<T, K> p, int chunk, float* part_o, float* part_lse) {
  constexpr int tpk = D / 8, kpb = kDecodeThreads / tpk;  // threads per key, keys per block step

  const int h = blockIdx.x, i = blockIdx.y, s = blockIdx.z, splits = gridDim.z;
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int sub = threadIdx.x / tpk, li = threadIdx.x % tpk;
  const int visible = min(p.kv_len, p.q_pos0 + i + 1);
  const int k0 = s * chunk, k1 = min(visible, k0 + chunk);

  float q[8], acc[8];
  load_q8(q, acc, p, i, h, D, li);
  float m = -INFINITY, l = 0.0f;
  // The loop bound is uniform across the block so every lane reaches the shuffles.
#pragma unroll 4
  for (int tb = k0; tb < k1; tb += kpb) {
    const int t = tb + sub;
    const bool ok = t < k1;
    typename Kv8<K>::Raw kr = Kv8<K>::zero(), vr = Kv8<K>::zero();
    if (ok) {
      const std::size_t off = kv_offset(p, t, kvh, D) + li * 8;
      kr = Kv8<K>::load(p.k + off);
      vr = Kv8<K>::load(p.v + off);
    }
    float ke[8];
    Kv8<K>::widen(kr, ke);
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) dot += q[j] * ke[j];
#pragma unroll
    for (int o = tpk / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (ok) {
      const float m_new = fmaxf(m, dot);
      const float corr = exp2f(m - m_new), pr = exp2f(dot - m_new);
      l = l * corr + pr;
      float ve[8];
      Kv8<K>::widen(vr, ve);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = acc[j] * corr + pr * ve[j];
      m = m_new;
    }
  }
  merge_slots<D, kpb>(m, l, acc, sub, li, [&](int d, float val, float M, float L) {
    if (part_o == nullptr) {
      p.out[std::size_t(i) * p.out_stride + std::size_t(h) * D + d] = Half16<T>::from(val);
    } else {
      const std::size_t slot = (std::size_t(i) * p.n_heads + h) * splits + s;
      part_o[slot * D + d] = val;
      if (d == 0) part_lse[slot] = L > 0.0f ? M + log2f(L) : -INFINITY;
    }
  });
}

// Version 2: every problem of a batch in one launch (a launch per sequence serialises small
// grids on the stream: 16 sequences ran 16x slower than one), and each thread loads kDecodeKeys
// keys' K and V before using any of them, so a block has 4x the bytes in flight of version 1.
// Problems travel by value in the kernel's parameters, kDecodeGroup at a time (4 KB limit).
//
// Version 3: version 2 with the block's page-table entries staged in shared memory
// (kDecodePageWindow at a time) and 8 keys a thread. Why: in version 2 each step of the key
// loop waits for two loads in a row, the page index and then the K/V it locates, and at one
// sequence of a few hundred tokens (the batch-1 decode step) the kernel is that chain of
// latencies: 32 blocks, 4-12 steps. Staged, a step waits for one load, and there are half as many.
//
// Version 4 (the batch-1 default, kDecodeVersionFewBlocks): version 3 in blocks of 512 threads,
// 4x the keys a step (256 at head_dim 128): a few hundred keys are one or two steps. For few, short sequences (the batch-1
// step: 32 blocks on 132 SMs, so the SMs are there to fill); at large batches the 128-register
// threads leave one block an SM.
constexpr int kDecodeGroup = 32, kDecodeKeys = 4, kDecodePageWindow = 512;
template <int Version>
struct DecodeVersion {
  static_assert(Version >= 2 && Version <= 4, "decode versions 2 to 4 share decode_block");
  static constexpr int keys = Version >= 3 ? 8 : kDecodeKeys;  // per thread per step
  static constexpr bool stage_pages = Version >= 3;
  static constexpr int threads = Version == 4 ? 512 : kDecodeThreads;
};

template <class T, class K = T>
struct DecodeGroup {
  Prob<T, K> p[kDecodeGroup];
  int row0[kDecodeGroup + 1];  // prefix sums of n_q: grid row r belongs to problem j when row0[j] <= r < row0[j+1]
  int chunk[kDecodeGroup];     // keys per split
  int splits[kDecodeGroup];    // 1: write the output directly
  long long part[kDecodeGroup];  // float offset of problem j's partial outputs in the workspace (splits > 1)
  int n;
};
static_assert(sizeof(DecodeGroup<__half>) <= 4000, "kernel parameters are limited to 4 KB");

// Block (h, r, s): head h of grid row r (problem j, query i = r - row0[j]), key chunk s. K and V
// are read layer_delta elements past the problem's k_pool / v_pool (a plan made for layer 0
// serves every layer).
template <class T, class K, int D, int Version>
__device__ __forceinline__ void decode_block(const DecodeGroup<T, K>& g, float* workspace, long long layer_delta) {
  constexpr int tpk = D / 8, kpb = DecodeVersion<Version>::threads / tpk, U = DecodeVersion<Version>::keys;
  constexpr bool stage = DecodeVersion<Version>::stage_pages;
  static_assert(kpb * U <= kDecodePageWindow, "a step's keys span at most kDecodePageWindow pages");
  __shared__ int32_t pages[stage ? kDecodePageWindow : 1];  // stage: entries first_page .. of p.idx

  const int h = blockIdx.x, r = blockIdx.y, s = blockIdx.z;
  int j = 0;
  while (j + 1 < g.n && g.row0[j + 1] <= r) ++j;
  Prob<T, K> p = g.p[j];
  p.k += layer_delta;
  p.v += layer_delta;
  const int i = r - g.row0[j], splits = g.splits[j];
  if (s >= splits) return;  // uniform over the block: before any barrier
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const int sub = threadIdx.x / tpk, li = threadIdx.x % tpk;
  const int visible = min(p.kv_len, p.q_pos0 + i + 1);
  const int k0 = s * g.chunk[j], k1 = min(visible, k0 + g.chunk[j]);

  float q[8], acc[8];
  load_q8(q, acc, p, i, h, D, li);
  float m = -INFINITY, l = 0.0f;
  int first_page = -kDecodePageWindow;  // stage: the window's first page (block-uniform)
  // Uniform loop bound: every lane reaches the shuffles (and, staging, the barriers). Key u of a
  // step: tb + u * kpb + sub.
  for (int tb = k0; tb < k1; tb += kpb * U) {
    if constexpr (stage) {
      if (page_window::needs_stage(tb, kpb * U, k1, p.page_size, first_page, kDecodePageWindow)) {
        __syncthreads();  // every thread is done with the last window
        first_page = tb / p.page_size;
        const int n = page_window::stage_count(first_page, k1, p.page_size, kDecodePageWindow);
        for (int e = threadIdx.x; e < n; e += blockDim.x) pages[e] = p.idx[first_page + e];
        __syncthreads();
      }
    }
    typename Kv8<K>::Raw kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = tb + u * kpb + sub;
      kr[u] = vr[u] = Kv8<K>::zero();
      if (t < k1) {
        const std::size_t off =
            (stage ? kv_offset_in(p, pages[t / p.page_size - first_page], t, kvh, D) : kv_offset(p, t, kvh, D)) + li * 8;
        kr[u] = Kv8<K>::load(p.k + off);
        vr[u] = Kv8<K>::load(p.v + off);
      }
    }
    float dot[U];
    float mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float ke[8];
      Kv8<K>::widen(kr[u], ke);
      float d = 0.0f;
#pragma unroll
      for (int c = 0; c < 8; ++c) d += q[c] * ke[c];
#pragma unroll
      for (int o = tpk / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
      dot[u] = tb + u * kpb + sub < k1 ? d : -INFINITY;
      mx = fmaxf(mx, dot[u]);
    }
    const float m_new = fmaxf(m, mx);
    if (m_new != -INFINITY) {  // else no key yet for this slot: m, l, acc stay (no shuffles in here)
      const float corr = exp2f(m - m_new);  // 0 while m = -inf
      l *= corr;
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[c] *= corr;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const float pr = exp2f(dot[u] - m_new);  // 0 for a key past k1
        l += pr;
        float ve[8];
        Kv8<K>::widen(vr[u], ve);
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[c] += pr * ve[c];
      }
      m = m_new;
    }
  }
  merge_slots<D, kpb>(m, l, acc, sub, li, [&](int d, float val, float M, float L) {
    if (splits == 1) {
      p.out[std::size_t(i) * p.out_stride + std::size_t(h) * D + d] = Half16<T>::from(val);
    } else {
      const std::size_t slots = std::size_t(p.n_q) * p.n_heads * splits, slot = (std::size_t(i) * p.n_heads + h) * splits + s;
      float* part_o = workspace + g.part[j];
      part_o[slot * D + d] = val;
      if (d == 0) part_o[slots * D + slot] = L > 0.0f ? M + log2f(L) : -INFINITY;
    }
  });
}

template <class T, class K, int D, int Version>
__global__ void __launch_bounds__(DecodeVersion<Version>::threads) flash_decode_v2_kernel(DecodeGroup<T, K> g, float* workspace) {
  decode_block<T, K, D, Version>(g, workspace, 0);
}
template <class T, class K, int D, int Version>
__global__ void __launch_bounds__(DecodeVersion<Version>::threads)
    flash_decode_planned_kernel(const DecodeGroup<T, K>* g, float* workspace, long long layer_delta, L2Prefetch prefetch) {
  pdl_trigger();
  pdl_wait();
  l2_prefetch_grid(prefetch.base, prefetch.bytes);  // after the wait: HBM is ours
  decode_block<T, K, D, Version>(*g, workspace, layer_delta);
}

// Block (h, r): the split problems' reduction, as split_reduce_kernel, for a whole group.
template <class T, class K>
__device__ __forceinline__ void split_reduce_v2_block(const DecodeGroup<T, K>& g, int D, const float* workspace) {
  const int h = blockIdx.x, r = blockIdx.y;
  int j = 0;
  while (j + 1 < g.n && g.row0[j + 1] <= r) ++j;
  const int splits = g.splits[j];
  if (splits == 1) return;
  const Prob<T, K>& p = g.p[j];
  const int i = r - g.row0[j];
  const std::size_t slots = std::size_t(p.n_q) * p.n_heads * splits, base = (std::size_t(i) * p.n_heads + h) * splits;
  const float* part_o = workspace + g.part[j];
  reduce_splits<T>(p.out + std::size_t(i) * p.out_stride + std::size_t(h) * D, D, splits, part_o + base * D,
                   part_o + slots * D + base);
}

template <class T, class K>
__global__ void split_reduce_v2_kernel(DecodeGroup<T, K> g, int D, const float* workspace) {
  split_reduce_v2_block<T, K>(g, D, workspace);
}
template <class T, class K>
__global__ void split_reduce_planned_kernel(const DecodeGroup<T, K>* g, int D, const float* workspace) {
  pdl_trigger();
  pdl_wait();
  split_reduce_v2_block<T, K>(*g, D, workspace);
}

// Block (h, i): out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M).
template <class T, class K>
__global__ void split_reduce_kernel(Prob<T, K> p, int D, int splits, const float* part_o, const float* part_lse) {
  const int h = blockIdx.x, i = blockIdx.y;
  const std::size_t base = (std::size_t(i) * p.n_heads + h) * splits;
  reduce_splits<T>(p.out + std::size_t(i) * p.out_stride + std::size_t(h) * D, D, splits, part_o + base * D,
                   part_lse + base);
}

template <class T>
__global__ void cast_from_float_kernel(T* dst, const float* src, std::size_t n) {
  for (std::size_t e = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; e < n; e += std::size_t(gridDim.x) * blockDim.x)
    dst[e] = Half16<T>::from(src[e]);
}
template <class T>
__global__ void cast_to_float_kernel(float* dst, const T* src, std::size_t n) {
  pdl_trigger();
  pdl_wait();
  for (std::size_t e = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; e < n; e += std::size_t(gridDim.x) * blockDim.x)
    dst[e] = Half16<T>::to(src[e]);
}

// ---- host side ------------------------------------------------------------------------------

bool aligned16(const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15) == 0; }

// Shapes and layouts the kernels handle; throws std::invalid_argument naming the kernel otherwise.
void validate(const AttentionProblem& p, const char* who) {
  auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(who) + ": " + why); };
  if (p.head_dim != 64 && p.head_dim != 128) fail("head_dim must be 64 or 128, got " + std::to_string(p.head_dim));
  if (p.n_kv_heads <= 0 || p.n_heads % p.n_kv_heads != 0) fail("n_heads must be a multiple of n_kv_heads");
  if (p.q_stride % 8 || p.kv.token_stride % 8) fail("q_stride and token_stride must be multiples of 8 elements");
  if (!aligned16(p.q) || !aligned16(p.kv.k_pool) || !aligned16(p.kv.v_pool)) fail("q, k_pool, v_pool must be 16-byte aligned");
  if (p.kv.page_size <= 0 || p.kv.indices == nullptr) fail("the KV view needs page_size > 0 and a device page table");
  if (p.kv.length < p.kv_len()) fail("kv.length < q_pos0 + n_q");
  if (p.q_pos0 < 0 || p.kv.num_pages * std::size_t(p.kv.page_size) < std::size_t(p.kv_len())) fail("page table shorter than kv_len");
}

int sm_count() {
  int dev = 0, n = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute(SM count)");
  return std::max(n, 1);
}

// A prefill kernel with `bytes` of dynamic shared memory (over the default 48 KB), its limit raised
// on first use (the attribute belongs to the device function).
template <class T>
void launch_prefill_kernel(void (*kernel)(Prob<T>), dim3 grid, int threads, std::size_t bytes,
                           const AttentionProblem& p, cudaStream_t stream, const char* who) {
  static std::mutex mu;
  static std::set<const void*> configured;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (configured.insert(reinterpret_cast<const void*>(kernel)).second)
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), who);
  }
  kernel<<<grid, threads, bytes, stream>>>(prob_of<T>(p));
  check_launch(who);
}

template <class T, int D>
void launch_prefill(const AttentionProblem& p, cudaStream_t stream) {
  launch_prefill_kernel<T>(flash_prefill_kernel<T, D>, dim3((p.n_q + kBr - 1) / kBr, p.n_heads), kPrefillThreads,
                           PrefillSmem<D>::template bytes<T>(), p, stream, "attention_flash (prefill kernel)");
}

template <class T, int D, int Stages>
void launch_prefill_v2(const AttentionProblem& p, cudaStream_t stream) {
  launch_prefill_kernel<T>(flash_prefill_v2_kernel<T, D, Stages>, dim3((p.n_q + kBr2 - 1) / kBr2, p.n_heads),
                           kPrefill2Threads, Prefill2Smem<D, Stages>::bytes, p, stream,
                           Stages == 2 ? "attention_flash v3 (prefill kernel)" : "attention_flash v2 (prefill kernel)");
}

template <class T, int D, int Warps>
void launch_prefill_v4(const AttentionProblem& p, cudaStream_t stream) {
  constexpr int rows = Prefill4Smem<D, Warps>::rows;
  launch_prefill_kernel<T>(flash_prefill_v4_kernel<T, D, Warps>, dim3((p.n_q + rows - 1) / rows, p.n_heads), Warps * 32,
                           Prefill4Smem<D, Warps>::bytes, p, stream,
                           Warps == 8 ? "attention_flash v5 (prefill kernel)" : "attention_flash v4 (prefill kernel)");
}

template <class T>
void prefill_dispatch(const AttentionProblem& p, cudaStream_t stream, int version) {
  if (version == 4 || version == 5) {
    const bool wide = version == 5;
    if (p.head_dim == 64) wide ? launch_prefill_v4<T, 64, 8>(p, stream) : launch_prefill_v4<T, 64, 4>(p, stream);
    else wide ? launch_prefill_v4<T, 128, 8>(p, stream) : launch_prefill_v4<T, 128, 4>(p, stream);
  } else if (version == 2 || version == 3) {
    const int stages = version == 3 ? 2 : 1;
    if (p.head_dim == 64) stages == 2 ? launch_prefill_v2<T, 64, 2>(p, stream) : launch_prefill_v2<T, 64, 1>(p, stream);
    else stages == 2 ? launch_prefill_v2<T, 128, 2>(p, stream) : launch_prefill_v2<T, 128, 1>(p, stream);
  } else {
    if (p.head_dim == 64) launch_prefill<T, 64>(p, stream);
    else launch_prefill<T, 128>(p, stream);
  }
}

int chunk_for(int kv_len, int splits) {
  constexpr int kGranule = 16;  // a multiple of keys-per-step for both head dims
  const int c = (kv_len + splits - 1) / splits;
  return (c + kGranule - 1) / kGranule * kGranule;
}

template <class T, class K>
void decode_dispatch(const AttentionProblem& p, int splits, float* part_o, float* part_lse, cudaStream_t stream) {
  const int chunk = chunk_for(p.kv_len(), splits);
  splits = (p.kv_len() + chunk - 1) / chunk;
  const dim3 grid(p.n_heads, p.n_q, splits);
  const Prob<T, K> pk = prob_of<T, K>(p);
  if (p.head_dim == 64) flash_decode_kernel<T, K, 64><<<grid, kDecodeThreads, 0, stream>>>(pk, chunk, part_o, part_lse);
  else flash_decode_kernel<T, K, 128><<<grid, kDecodeThreads, 0, stream>>>(pk, chunk, part_o, part_lse);
  check_launch("attention_flash_decode/split (decode kernel)");
  if (part_o) {
    split_reduce_kernel<T, K><<<dim3(p.n_heads, p.n_q), p.head_dim, 0, stream>>>(pk, p.head_dim, splits, part_o, part_lse);
    check_launch("attention_flash_split (reduce kernel)");
  }
}

// The split count a problem actually runs with (after rounding the chunk).
int effective_splits(const AttentionProblem& p, int splits) {
  const int chunk = chunk_for(p.kv_len(), std::max(splits, 1));
  return (p.kv_len() + chunk - 1) / chunk;
}

// Version 2's groups: problems in groups of up to kDecodeGroup sharing (n_heads, head_dim), each
// launched as one grid (heads, the group's rows, its largest split count). splits[k] is problem
// k's split count (1 = direct); its partial outputs sit in the workspace where version 1 puts
// them.
template <class T, class K>
struct Grouped {
  std::vector<DecodeGroup<T, K>> groups;
  std::vector<DecodeGroupShape> shapes;
};

template <class T, class K>
Grouped<T, K> make_groups(std::span<const AttentionProblem> problems, std::span<const int> splits) {
  Grouped<T, K> out;
  std::size_t off = 0;
  for (std::size_t k = 0; k < problems.size(); ++k) {
    const AttentionProblem& p = problems[k];
    if (p.n_q <= 0) continue;
    if (p.n_q > 65535) throw std::invalid_argument("cuda::attention_flash_decode: n_q > 65535 (grid rows)");
    if (out.groups.empty() || out.groups.back().n == kDecodeGroup || p.n_heads != out.shapes.back().heads ||
        p.head_dim != out.shapes.back().head_dim || out.shapes.back().rows + p.n_q > 65535) {
      out.groups.emplace_back();
      out.shapes.push_back({0, p.n_heads, p.head_dim, 1, false});
    }
    DecodeGroup<T, K>& g = out.groups.back();
    DecodeGroupShape& sh = out.shapes.back();
    const int sp = splits[k];
    g.p[g.n] = prob_of<T, K>(p);
    g.chunk[g.n] = chunk_for(p.kv_len(), sp);
    g.splits[g.n] = sp;
    g.part[g.n] = static_cast<long long>(off);
    g.row0[g.n + 1] = g.row0[g.n] + p.n_q;
    ++g.n;
    sh.rows = g.row0[g.n];
    sh.max_splits = std::max(sh.max_splits, sp);
    sh.split = sh.split || sp > 1;
    off += std::size_t(p.n_q) * p.n_heads * sp * (p.head_dim + 1);
  }
  return out;
}

// A decode kernel of version 2, 3 or 4 (grouped) for head_dim D: func(kernel, threads a block)
// launches it.
template <class T, class K, template <class, class, int, int> class Kernel, int D, class F>
void with_decode_version(int version, F&& func) {
  if (version == 4) func(Kernel<T, K, D, 4>::get(), DecodeVersion<4>::threads);
  else if (version == 3) func(Kernel<T, K, D, 3>::get(), DecodeVersion<3>::threads);
  else func(Kernel<T, K, D, 2>::get(), DecodeVersion<2>::threads);
}
template <class T, class K, template <class, class, int, int> class Kernel, class F>
void with_decode_kernel(int head_dim, int version, F&& func) {
  if (head_dim == 64) with_decode_version<T, K, Kernel, 64>(version, func);
  else with_decode_version<T, K, Kernel, 128>(version, func);
}
template <class T, class K, int D, int V>
struct GroupedKernel {
  static auto get() { return flash_decode_v2_kernel<T, K, D, V>; }
};
template <class T, class K, int D, int V>
struct PlannedKernel {
  static auto get() { return flash_decode_planned_kernel<T, K, D, V>; }
};

// f(T{}, K{}) for the decode kernels' query type T (dtype) and K/V type K (kv, default dtype's
// own). fp32 pools are refused: a 16-bit kernel would read half of them (see kernels.cuh).
template <class F>
void with_decode_types(DType dtype, std::optional<KvElem> kv, const char* who, F&& f) {
  const auto with_t = [&](auto k) {
    if (dtype == DType::f16) f(__half{}, k);
    else f(__nv_bfloat16{}, k);
  };
  switch (kv.value_or(kv_elem_of(dtype))) {
    case KvElem::f16: return with_t(__half{});
    case KvElem::bf16: return with_t(__nv_bfloat16{});
    case KvElem::fp8_e4m3: return with_t(__nv_fp8_e4m3{});
    case KvElem::f32: break;
  }
  throw std::invalid_argument(std::string(who) + ": K/V of fp32; the decode kernels read bf16, fp16 or fp8_e4m3");
}

template <class T, class K>
void decode_v2(std::span<const AttentionProblem> problems, std::span<const int> splits, float* workspace,
               cudaStream_t stream, int version) {
  const Grouped<T, K> gr = make_groups<T, K>(problems, splits);
  for (std::size_t i = 0; i < gr.groups.size(); ++i) {
    const DecodeGroupShape& sh = gr.shapes[i];
    const dim3 grid(sh.heads, sh.rows, sh.max_splits);
    with_decode_kernel<T, K, GroupedKernel>(sh.head_dim, version, [&](auto kernel, int threads) {
      kernel<<<grid, threads, 0, stream>>>(gr.groups[i], workspace);
    });
    check_launch("attention_flash_decode/split v2-4 (decode kernel)");
    if (sh.split) {
      split_reduce_v2_kernel<T, K><<<dim3(sh.heads, sh.rows), sh.head_dim, 0, stream>>>(gr.groups[i], sh.head_dim, workspace);
      check_launch("attention_flash_split v2 (reduce kernel)");
    }
  }
}

}  // namespace

const char* dtype_name(DType t) { return t == DType::f16 ? "fp16" : "bf16"; }
std::size_t dtype_bytes(DType) { return 2; }

void cast_from_float(void* dst, const float* src, std::size_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = std::min<std::size_t>(grid_for(n), 65535);
  if (dtype == DType::f16) cast_from_float_kernel<<<blocks, kBlock, 0, stream>>>(static_cast<__half*>(dst), src, n);
  else cast_from_float_kernel<<<blocks, kBlock, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), src, n);
  check_launch("cast_from_float");
}

void cast_to_float(float* dst, const void* src, std::size_t n, DType dtype, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = std::min<std::size_t>(grid_for(n), 65535);
  if (dtype == DType::f16) launch_pdl(cast_to_float_kernel<__half>, blocks, kBlock, 0, stream, dst, static_cast<const __half*>(src), n);
  else launch_pdl(cast_to_float_kernel<__nv_bfloat16>, blocks, kBlock, 0, stream, dst, static_cast<const __nv_bfloat16*>(src), n);
  check_launch("cast_to_float");
}

void attention_flash(std::span<const AttentionProblem> problems, DType dtype, cudaStream_t stream, int version) {
  if (version < 1 || version > 5)
    throw std::invalid_argument("cuda::attention_flash: version " + std::to_string(version) + "; allowed: 1 .. 5");
  for (const AttentionProblem& p : problems) {
    if (p.n_q <= 0) continue;
    validate(p, "cuda::attention_flash");
    if (dtype == DType::f16) prefill_dispatch<__half>(p, stream, version);
    else prefill_dispatch<__nv_bfloat16>(p, stream, version);
  }
}

// lowest: 1, or 2 where only the grouped versions run (the planned form).
void check_decode_version(int version, const char* who, int lowest = 1) {
  if (version < lowest || version > kDecodeVersions)
    throw std::invalid_argument(std::string(who) + ": version " + std::to_string(version) + "; allowed: " +
                                std::to_string(lowest) + " .. " + std::to_string(kDecodeVersions));
}

void attention_flash_decode(std::span<const AttentionProblem> problems, DType dtype, cudaStream_t stream, int version,
                            std::optional<KvElem> kv) {
  check_decode_version(version, "cuda::attention_flash_decode");
  with_decode_types(dtype, kv, "cuda::attention_flash_decode", [&](auto t, auto k) {
    using T = decltype(t);
    using K = decltype(k);
    if (version >= 2) {
      std::vector<int> ones(problems.size(), 1);
      for (const AttentionProblem& p : problems)
        if (p.n_q > 0) validate(p, "cuda::attention_flash_decode");
      decode_v2<T, K>(problems, ones, nullptr, stream, version);
      return;
    }
    for (const AttentionProblem& p : problems) {
      if (p.n_q <= 0) continue;
      validate(p, "cuda::attention_flash_decode");
      decode_dispatch<T, K>(p, 1, nullptr, nullptr, stream);
    }
  });
}

int attention_flash_split_count(std::span<const AttentionProblem> problems, std::size_t i) {
  if (i >= problems.size()) return 1;
  std::size_t blocks = 0;  // unsplit decode blocks of the whole batch
  for (const AttentionProblem& p : problems) blocks += std::size_t(std::max(p.n_q, 0)) * p.n_heads;
  const std::size_t target = std::size_t(kSplitBlocksPerSm) * sm_count();
  const AttentionProblem& p = problems[i];
  if (blocks == 0 || blocks >= target) return 1;
  const int want = int((target + blocks - 1) / blocks);
  return effective_splits(p, std::clamp(std::min(want, p.kv_len() / kSplitMinKeys), 1, 1024));
}

std::size_t attention_flash_split_workspace_bytes(std::span<const AttentionProblem> problems, int splits) {
  std::size_t floats = 0;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const AttentionProblem& p = problems[i];
    if (p.n_q <= 0) continue;
    const int s = splits > 0 ? effective_splits(p, splits) : attention_flash_split_count(problems, i);
    floats += std::size_t(p.n_q) * p.n_heads * s * (p.head_dim + 1);
  }
  return floats * sizeof(float);
}

void attention_flash_split(std::span<const AttentionProblem> problems, DType dtype, float* workspace,
                           std::size_t workspace_bytes, cudaStream_t stream, int splits, int version,
                           std::optional<KvElem> kv) {
  check_decode_version(version, "cuda::attention_flash_split");
  if (attention_flash_split_workspace_bytes(problems, splits) > workspace_bytes)
    throw std::invalid_argument("cuda::attention_flash_split: workspace too small");
  std::vector<int> counts(problems.size(), 1);
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const AttentionProblem& p = problems[i];
    if (p.n_q <= 0) continue;
    validate(p, "cuda::attention_flash_split");
    counts[i] = splits > 0 ? effective_splits(p, splits) : attention_flash_split_count(problems, i);
  }
  with_decode_types(dtype, kv, "cuda::attention_flash_split", [&](auto t, auto k) {
    using T = decltype(t);
    using K = decltype(k);
    if (version >= 2) {
      decode_v2<T, K>(problems, counts, workspace, stream, version);
      return;
    }
    std::size_t off = 0;
    for (std::size_t i = 0; i < problems.size(); ++i) {
      const AttentionProblem& p = problems[i];
      if (p.n_q <= 0) continue;
      const int s = counts[i];
      const std::size_t slots = std::size_t(p.n_q) * p.n_heads * s;
      float* part_o = s > 1 ? workspace + off : nullptr;
      float* part_lse = s > 1 ? workspace + off + slots * p.head_dim : nullptr;
      decode_dispatch<T, K>(p, s, part_o, part_lse, stream);
      off += slots * (p.head_dim + 1);
    }
  });
}

DecodePlan make_decode_plan(std::span<const AttentionProblem> problems, std::span<const int> splits, DType dtype,
                            std::optional<KvElem> kv) {
  if (splits.size() != problems.size()) throw std::invalid_argument("cuda::make_decode_plan: one split count per problem");
  for (const AttentionProblem& p : problems)
    if (p.n_q > 0) validate(p, "cuda::make_decode_plan");
  DecodePlan plan;
  plan.dtype = dtype;
  plan.kv = kv.value_or(kv_elem_of(dtype));
  plan.group_bytes = sizeof(DecodeGroup<__half>);
  with_decode_types(dtype, plan.kv, "cuda::make_decode_plan", [&](auto t, auto k) {
    const auto gr = make_groups<decltype(t), decltype(k)>(problems, splits);
    static_assert(sizeof(gr.groups[0]) == sizeof(DecodeGroup<__half>), "one group size for every element type");
    plan.shapes = gr.shapes;
    plan.bytes.resize(gr.groups.size() * plan.group_bytes);
    if (!gr.groups.empty()) std::memcpy(plan.bytes.data(), gr.groups.data(), plan.bytes.size());
  });
  return plan;
}

void attention_decode_planned(const DecodePlan& plan, const void* device_plan, int max_splits, bool reduce,
                              long long layer_delta, float* workspace, cudaStream_t stream, int version,
                              L2Prefetch prefetch) {
  check_decode_version(version, "cuda::attention_decode_planned", 2);
  if (!aligned16(prefetch.base))
    throw std::invalid_argument("cuda::attention_decode_planned: the prefetch range must start 16-byte aligned");
  const auto* base = static_cast<const unsigned char*>(device_plan);
  for (std::size_t i = 0; i < plan.shapes.size(); ++i) {
    const DecodeGroupShape& sh = plan.shapes[i];
    const void* g = base + i * plan.group_bytes;
    const dim3 grid(sh.heads, sh.rows, std::max(max_splits, 1));
    with_decode_types(plan.dtype, plan.kv, "cuda::attention_decode_planned", [&](auto t, auto k) {
      using T = decltype(t);
      using K = decltype(k);
      const auto* gt = static_cast<const DecodeGroup<T, K>*>(g);
      with_decode_kernel<T, K, PlannedKernel>(sh.head_dim, version, [&](auto kernel, int threads) {
        launch_pdl(kernel, grid, threads, 0, stream, gt, workspace, layer_delta, i == 0 ? prefetch : L2Prefetch{});
      });
      if (reduce)
        launch_pdl(split_reduce_planned_kernel<T, K>, dim3(sh.heads, sh.rows), sh.head_dim, 0, stream, gt, sh.head_dim,
                   static_cast<const float*>(workspace));
    });
  }
}

int attention_decode_version(int rows, int heads) {
  return std::size_t(std::max(rows, 0)) * std::max(heads, 0) < std::size_t(sm_count()) ? kDecodeVersionFewBlocks : 2;
}

int attention_flash_split_bound(int rows, int heads) {
  const std::size_t blocks = std::size_t(std::max(rows, 0)) * std::max(heads, 0);
  const std::size_t target = std::size_t(kSplitBlocksPerSm) * sm_count();
  if (blocks == 0 || blocks >= target) return 1;
  return std::clamp(int((target + blocks - 1) / blocks), 1, 1024);
}

}  // namespace ablate::cuda
