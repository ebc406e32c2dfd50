#pragma once
// CUDA kernels of the forward pass: host-callable launchers taking device pointers and a stream.
// Plain C++ (no CUDA-only syntax), so .cpp files compiled by g++ may include it; the CUDA
// runtime and cuBLAS headers come with the ablate_kernels_cuda target. Each launcher mirrors
// the CPU kernel of the same name (cpu/kernels.hpp) and throws std::runtime_error on a CUDA
// or cuBLAS error.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <span>
#include <string>

#include "common/attention_problem.hpp"

namespace ablate::cuda {

// True when a CUDA device can be used; otherwise *why (if given) says why not.
bool cuda_device_available(std::string* why);

// y[rows][out] = x[rows][in] * w[out][in]^T (cuBLAS SGEMM, fp32). Sets `handle`'s stream.
void matmul(float* y, const float* x, const float* w, int rows, int in, int out, cublasHandle_t handle,
            cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * weight, row by row; out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps, cudaStream_t stream);

// In place, llama2.c convention (adjacent pairs); `positions` is a device array of `rows` ints.
void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, float theta,
          cudaStream_t stream);

// Row-wise numerically stable softmax in place, x is [rows][n].
void softmax(float* x, int rows, int n, cudaStream_t stream);

// gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, std::size_t n, cudaStream_t stream);

// x[i] += y[i].
void add(float* x, const float* y, std::size_t n, cudaStream_t stream);

// Naive attention: scores S[n_heads][n_q][kv_len] = scale * Q K^T by cuBLAS strided-batched
// GEMMs (one call per query head within a GQA group, batched over KV heads), a causal masked
// softmax kernel, then O = P V the same way. fp32 throughout (cuBLAS default math, no TF32).
// The KV view must be contiguous: num_pages == 1 and indices == {0}, i.e. kv.k_pool/v_pool
// point at the sequence's reservation (token t at k_pool + t * token_stride); indices are not
// read, since they may live on the device. All pointers are device pointers.
std::size_t attention_naive_workspace_bytes(const AttentionProblem& p);  // the score matrix
void attention_naive(const AttentionProblem& p, float* workspace, cublasHandle_t handle, cudaStream_t stream);
// Problems one after another, sharing a workspace of at least the largest problem's bytes.
void attention_naive(std::span<const AttentionProblem> problems, float* workspace, std::size_t workspace_bytes,
                     cublasHandle_t handle, cudaStream_t stream);

}  // namespace ablate::cuda
