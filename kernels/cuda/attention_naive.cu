// Eager attention on the GPU: S = scale * Q K^T (cuBLAS), causal masked softmax (one block per
// score row), O = P V (cuBLAS). The score matrix S[n_heads][n_q][kv_len] is the workspace.
#include <algorithm>
#include <stdexcept>

#include "cuda/check.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

// Row r of S is query i = r % n_q of head r / n_q; it sees keys [0, q_pos0 + i]. Masked entries
// become exact zeros so the PV GEMM can run over the full rectangle.
__global__ void causal_softmax_kernel(float* s, int n_q, int kv_len, int q_pos0) {
  float* row = s + std::size_t(blockIdx.x) * kv_len;
  const int visible = q_pos0 + int(blockIdx.x % n_q) + 1;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < visible; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += row[j] = expf(row[j] - mx);
  const float inv = 1.0f / block_sum(sum);
  for (int j = threadIdx.x; j < kv_len; j += blockDim.x) row[j] = j < visible ? row[j] * inv : 0.0f;
}

}  // namespace

std::size_t attention_naive_workspace_bytes(const AttentionProblem& p) {
  return std::size_t(p.n_heads) * p.n_q * p.kv_len() * sizeof(float);
}

void attention_naive(const AttentionProblem& p, float* workspace, cublasHandle_t handle, cudaStream_t stream) {
  if (p.kv.num_pages != 1) throw std::invalid_argument("cuda::attention_naive needs a contiguous KV view (one page)");
  if (p.n_q <= 0) return;
  check(cublasSetStream(handle, stream), "cublasSetStream");
  const int G = p.n_heads / p.n_kv_heads, hd = p.head_dim, L = p.kv_len(), ts = p.kv.token_stride;
  const long long s_head = static_cast<long long>(p.n_q) * L;  // floats per head in S
  const float one = 1.0f, zero = 0.0f;

  // cuBLAS is column-major: a row-major [r][c] matrix with leading dimension ld is its transpose.
  // Per query head h = g*G + j (batch g over KV heads): S_h^T [L x n_q] = K_g [L x hd] * Q_h^T.
  for (int j = 0; j < G; ++j)
    check(cublasSgemmStridedBatched(handle, CUBLAS_OP_T, CUBLAS_OP_N, L, p.n_q, hd, &p.scale,
                                    p.kv.k_pool, ts, hd,                        // K_g, g-th at + g*hd
                                    p.q + std::size_t(j) * hd, p.q_stride, static_cast<long long>(G) * hd,
                                    &zero, workspace + j * s_head, L, G * s_head, p.n_kv_heads),
          "attention_naive QK^T");

  causal_softmax_kernel<<<p.n_heads * p.n_q, kBlock, 0, stream>>>(workspace, p.n_q, L, p.q_pos0);
  check_launch("attention_naive softmax");

  // O_h^T [hd x n_q] = V_g^T [hd x L] * P_h^T [L x n_q].
  for (int j = 0; j < G; ++j)
    check(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, hd, p.n_q, L, &one,
                                    p.kv.v_pool, ts, hd,
                                    workspace + j * s_head, L, G * s_head,
                                    &zero, p.out + std::size_t(j) * hd, p.out_stride, static_cast<long long>(G) * hd,
                                    p.n_kv_heads),
          "attention_naive PV");
}

void attention_naive(std::span<const AttentionProblem> problems, float* workspace, std::size_t workspace_bytes,
                     cublasHandle_t handle, cudaStream_t stream) {
  for (const AttentionProblem& p : problems) {
    if (attention_naive_workspace_bytes(p) > workspace_bytes)
      throw std::invalid_argument("cuda::attention_naive: workspace too small");
    attention_naive(p, workspace, handle, stream);
  }
}

}  // namespace ablate::cuda
