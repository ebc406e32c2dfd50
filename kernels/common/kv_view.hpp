#pragma once
// KV storage as attention kernels read it, on the CPU and (with device pointers) in CUDA.
// A CSR-style page list for one sequence in one layer (FlashInfer's indices/last_page_len),
// so a contiguous reservation is one page as long as the reservation and a paged cache is
// many small pages: every attention kernel reads both layouts through this one struct.
#include <cstddef>
#include <cstdint>

namespace ablate {

// How K/V elements are stored. int8 carries one fp32 scale per token and KV head (value = q * scale).
enum class KvDtype : std::uint8_t { fp32, bf16, fp16, fp8_e4m3, int8 };
inline constexpr std::size_t kv_dtype_bytes(KvDtype d) {
  return d == KvDtype::fp32 ? 4 : (d == KvDtype::bf16 || d == KvDtype::fp16) ? 2 : 1;
}

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
  int token_stride = 0;      // elements between consecutive tokens (n_kv_heads * head_dim)
  // Element type. k_pool / v_pool are set for fp32 only; every type (fp32 included, on the CPU
  // caches) has k_data / v_data at the same element offsets, and int8 has k_scale / v_scale, one
  // float per token slot and KV head at (slot * n_kv_heads + kv_head).
  KvDtype dtype = KvDtype::fp32;
  const void* k_data = nullptr;
  const void* v_data = nullptr;
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  // Token t's slot in the pool (page and place in it).
  std::size_t slot(int t) const { return static_cast<std::size_t>(indices[t / page_size]) * page_size + t % page_size; }

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
