#pragma once
// One sequence's attention in one layer: the unit every attention kernel (naive, flash,
// flash_split; CPU and CUDA) computes.
#include <cstddef>

#include "common/kv_view.hpp"

namespace ablate {

struct AttentionProblem {
  const float* q = nullptr;  // [n_q][n_heads * head_dim], rows q_stride floats apart, RoPE applied
  float* out = nullptr;      // [n_q][n_heads * head_dim], rows out_stride floats apart
  int q_stride = 0;
  int out_stride = 0;
  int n_q = 0;               // queries: a whole prompt, a prefill chunk, 1 decode token, or k+1 to verify
  int q_pos0 = 0;            // absolute position of query 0; query i attends to keys [0, q_pos0 + i] (causal)
  KvSeqView kv;              // kv.length >= q_pos0 + n_q; keys/values already hold this step's tokens
  int n_heads = 0;
  int n_kv_heads = 0;        // query head h reads KV head h / (n_heads / n_kv_heads) (GQA)
  int head_dim = 0;
  float scale = 0.0f;        // 1 / sqrt(head_dim)

  int kv_len() const { return q_pos0 + n_q; }
};

}  // namespace ablate
