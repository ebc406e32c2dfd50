// Decode attention in fp32 for one query token over a contiguous KV reservation: one block per
// query head computes its scores into shared memory, the softmax, then the weighted sum of V.
// Version 1, the simple one: correct (tests/cuda) but slow. In the llama2-7b decode step on an
// H100 (experiments/bench_cuda_decode, attn=1) it lost to naive attention: 6.79 vs 6.35 ms a step
// at context 128, 16.9 vs 7.31 ms at 2048. 32 heads use 32 of 132 SMs, and each output thread
// walks every key in turn. A faster version splits keys across blocks (as flash_split does).
#include <stdexcept>

#include "cuda/check.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

constexpr int kDecodeBlock = 256;

__global__ void attention_decode_f32_kernel(AttentionProblem p) {
  extern __shared__ float scores[];  // [kv_len]
  const int h = blockIdx.x, hd = p.head_dim, L = p.q_pos0 + 1;  // n_q == 1: keys [0, q_pos0]
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const float* q = p.q + std::size_t(h) * hd;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  // Scores: a warp per key, lanes across head_dim.
  for (int t = warp; t < L; t += warps) {
    const float* k = p.kv.k_pool + std::size_t(t) * p.kv.token_stride + std::size_t(kvh) * hd;
    float dot = 0.0f;
    for (int d = lane; d < hd; d += 32) dot += q[d] * k[d];
    dot = warp_sum(dot);
    if (lane == 0) scores[t] = dot * p.scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < L; t += blockDim.x) mx = fmaxf(mx, scores[t]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int t = threadIdx.x; t < L; t += blockDim.x) sum += scores[t] = expf(scores[t] - mx);
  const float inv = 1.0f / block_sum(sum);  // block_sum's barrier also publishes the exps
  // Output: threads across head_dim, each summing over all keys (coalesced V rows).
  float* out = p.out + std::size_t(h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    const float* v = p.kv.v_pool + std::size_t(kvh) * hd + d;
    float acc = 0.0f;
    for (int t = 0; t < L; ++t) acc += scores[t] * v[std::size_t(t) * p.kv.token_stride];
    out[d] = acc * inv;
  }
}

}  // namespace

void attention_decode_f32(const AttentionProblem& p, cudaStream_t stream) {
  if (p.kv.num_pages != 1) throw std::invalid_argument("cuda::attention_decode_f32 needs a contiguous KV view (one page)");
  if (p.n_q != 1) throw std::invalid_argument("cuda::attention_decode_f32 takes one query token (decode)");
  const std::size_t smem = std::size_t(p.kv_len()) * sizeof(float);
  if (smem > 48 * 1024)
    throw std::invalid_argument("cuda::attention_decode_f32: context above 12288 tokens (scores exceed 48 KB of shared memory)");
  attention_decode_f32_kernel<<<unsigned(p.n_heads), kDecodeBlock, smem, stream>>>(p);
  check_launch("attention_decode_f32");
}

}  // namespace ablate::cuda
