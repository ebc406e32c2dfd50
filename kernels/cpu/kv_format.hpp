#pragma once
// KV-cache element formats on the CPU: writing one token (fp32 -> the cache's dtype) and reading
// runs of keys or values back as fp32 for the attention kernels, which then accumulate in fp32.
#include <cstddef>

#include "common/kv_view.hpp"

namespace ablate::cpu {

// One token's K (or V) of n_heads heads x head_dim values, from fp32 into `dtype` at dst; int8
// also writes its n_heads scales (max|x| / 127 per head). Rounding: to nearest even (bf16, fp16,
// fp8 e4m3, which saturates at +-448), to nearest (int8).
void kv_encode(KvDtype dtype, const float* src, int n_heads, int head_dim, void* dst, float* scales);

// Element `elem` of a pool of `dtype` as fp32; int8 multiplies by scales[scale_index]. Scalar, for
// references and tests.
float kv_decode_one(KvDtype dtype, const void* pool, std::size_t elem, const float* scales, std::size_t scale_index);

// Keys (v = false) or values of KV head g for tokens [t0, t0 + n), all in one page of the view, as
// fp32 rows `*stride` floats apart. fp32 pools are returned in place (stride token_stride); other
// types are widened into buf (n x head_dim floats, n <= kKvDecodeRows; stride head_dim).
const float* kv_rows(const KvSeqView& kv, bool v, int g, int head_dim, int t0, int n, float* buf, int* stride);
inline constexpr int kKvDecodeRows = 256;

// The longest run of keys from t0 (at most `limit`) that kv_rows can take in one call: to the end
// of t0's page, and at most kKvDecodeRows when the pool is not fp32.
inline int kv_run(const KvSeqView& kv, int t0, int limit) {
  int n = kv.page_size - t0 % kv.page_size;
  if (kv.dtype != KvDtype::fp32 && n > kKvDecodeRows) n = kKvDecodeRows;
  return n < limit ? n : limit;
}

}  // namespace ablate::cpu
