#pragma once
// KV storage as attention kernels read it, on the CPU and (with device pointers) in CUDA.
// A CSR-style page list for one sequence in one layer (FlashInfer's indices/last_page_len),
// so a contiguous reservation is one page as long as the reservation and a paged cache is
// many small pages: every attention kernel reads both layouts through this one struct.
#include <cstddef>
#include <cstdint>

namespace ablate {

// Where one sequence's keys and values sit in one layer's pools.
// Token t of the sequence is at page indices[t / page_size], slot t % page_size; its K vector
// for KV head h starts at k_pool + (indices[p] * page_size + slot) * token_stride + h * head_dim.
struct KvSeqView {
  const float* k_pool = nullptr;
  const float* v_pool = nullptr;
  const int32_t* indices = nullptr;  // pages of this sequence, in token order
  int num_pages = 0;
  int page_size = 0;         // tokens per page
  int length = 0;            // tokens stored (the last page holds length - (num_pages-1)*page_size)
  int token_stride = 0;      // floats between consecutive tokens (n_kv_heads * head_dim)

  const float* k(int t, int kv_head, int head_dim) const {
    return k_pool + (static_cast<std::size_t>(indices[t / page_size]) * page_size + t % page_size) * token_stride +
           static_cast<std::size_t>(kv_head) * head_dim;
  }
  const float* v(int t, int kv_head, int head_dim) const {
    return v_pool + (static_cast<std::size_t>(indices[t / page_size]) * page_size + t % page_size) * token_stride +
           static_cast<std::size_t>(kv_head) * head_dim;
  }
};

}  // namespace ablate
