#pragma once
// Internal to kernels/cuda: the rotation of one RoPE pair (llama2.c convention: adjacent pairs),
// shared by rope() and rope_store_qkv() so that both give the same bits.
#include <cuda_runtime.h>

namespace ablate::cuda::detail {

// (v0, v1) at element i (even) of a head of head_dim, token position pos; the pair's frequency is
// freq_table[i / 2] when given (scaled RoPE), else computed from theta (llama2.c's expression: a
// table of the host's powf could differ from the device's in the last bit).
__device__ inline void rope_rotate(float& v0, float& v1, int pos, int i, int head_dim, float theta,
                                   const float* freq_table) {
  const float freq = freq_table ? freq_table[i / 2] : 1.0f / powf(theta, i / (float)head_dim);
  const float val = pos * freq;
  float fci, fcr;
  sincosf(val, &fci, &fcr);
  const float a = v0, b = v1;
  v0 = a * fcr - b * fci;
  v1 = a * fci + b * fcr;
}

}  // namespace ablate::cuda::detail
