// GCC 12 reports a false -Wmaybe-uninitialized inside avx512fintrin.h's widening conversions
// (their __Y is an intentionally undefined vector), as in matmul.cpp; only for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "cpu/kv_format.hpp"

#include <cstdint>
#include <cstring>
#include <stdexcept>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ABLATE_SIMD_KV 1
#elif defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define ABLATE_SIMD_KV8 1
#endif

#include "cpu/half.hpp"
#include "cpu/quant.hpp"

namespace ablate::cpu {

void kv_encode(KvDtype dtype, const float* src, int n_heads, int head_dim, void* dst, float* scales) {
  const std::size_t n = std::size_t(n_heads) * head_dim;
  switch (dtype) {
    case KvDtype::fp32: std::memcpy(dst, src, n * sizeof(float)); return;
    case KvDtype::bf16: {
      auto* d = static_cast<Bf16*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = to_bf16(src[i]);
      return;
    }
    case KvDtype::fp16: {
      auto* d = static_cast<Half*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = to_half(src[i]);
      return;
    }
    case KvDtype::fp8_e4m3: {
      auto* d = static_cast<Fp8E4M3*>(dst);
      for (std::size_t i = 0; i < n; ++i) d[i] = to_fp8_e4m3(src[i]);
      return;
    }
    case KvDtype::int8: {
      auto* d = static_cast<std::int8_t*>(dst);
      for (int h = 0; h < n_heads; ++h)
        scales[h] = quantize_int8(src + std::size_t(h) * head_dim, head_dim, d + std::size_t(h) * head_dim);
      return;
    }
  }
  throw std::logic_error("kv_encode: unknown KV dtype");
}

float kv_decode_one(KvDtype dtype, const void* pool, std::size_t elem, const float* scales, std::size_t scale_index) {
  switch (dtype) {
    case KvDtype::fp32: return static_cast<const float*>(pool)[elem];
    case KvDtype::bf16: return to_float(static_cast<const Bf16*>(pool)[elem]);
    case KvDtype::fp16: return to_float(static_cast<const Half*>(pool)[elem]);
    case KvDtype::fp8_e4m3: return to_float(static_cast<const Fp8E4M3*>(pool)[elem]);
    case KvDtype::int8: return static_cast<float>(static_cast<const std::int8_t*>(pool)[elem]) * scales[scale_index];
  }
  throw std::logic_error("kv_decode_one: unknown KV dtype");
}

namespace {

// One row of hd elements at element `e` of pool, into out.
#if defined(ABLATE_SIMD_KV)
// 16 lanes at a time (masked tail). fp8 e4m3 -> fp16 is a shift: the same sign, exponent and
// mantissa bits land in fp16's fields, and fp16's bias (15) exceeds e4m3's (7) by 8, so the fp16
// value times 2^8 is exact (subnormals included). The NaN code S.1111.111 (never written: the
// encoder saturates) would read as +-480.
void decode_row(KvDtype dt, const void* pool, std::size_t e, int hd, float scale, float* out) {
  for (int i = 0; i < hd; i += 16) {
    const __mmask16 m = hd - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (hd - i)) - 1u);
    __m512 x;
    switch (dt) {
      case KvDtype::bf16: {
        const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(pool) + e + i);
        x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        break;
      }
      case KvDtype::fp16:
        x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const std::uint16_t*>(pool) + e + i));
        break;
      case KvDtype::fp8_e4m3: {
        const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const std::uint8_t*>(pool) + e + i);
        const __m256i w = _mm256_cvtepu8_epi16(b);
        const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8),
                                          _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7));
        x = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
        break;
      }
      default: {  // int8
        const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const std::int8_t*>(pool) + e + i);
        x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), _mm512_set1_ps(scale));
        break;
      }
    }
    _mm512_mask_storeu_ps(out + i, m, x);
  }
}
#elif defined(ABLATE_SIMD_KV8)
// AVX2: 8 lanes at a time, the same conversions as the AVX-512 path; the last hd % 8 scalar.
void decode_row(KvDtype dt, const void* pool, std::size_t e, int hd, float scale, float* out) {
  int i = 0;
  for (; i + 8 <= hd; i += 8) {
    __m256 x;
    switch (dt) {
      case KvDtype::bf16: {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(pool) + e + i));
        x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
        break;
      }
      case KvDtype::fp16:
        x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(pool) + e + i)));
        break;
      case KvDtype::fp8_e4m3: {
        const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const std::uint8_t*>(pool) + e + i)));
        const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8),
                                       _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7));
        x = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
        break;
      }
      default: {  // int8
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const std::int8_t*>(pool) + e + i));
        x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_set1_ps(scale));
        break;
      }
    }
    _mm256_storeu_ps(out + i, x);
  }
  for (; i < hd; ++i) out[i] = dt == KvDtype::int8 ? static_cast<const std::int8_t*>(pool)[e + i] * scale
                                                   : kv_decode_one(dt, pool, e + i, nullptr, 0);
}
#else
void decode_row(KvDtype dt, const void* pool, std::size_t e, int hd, float scale, float* out) {
  for (int i = 0; i < hd; ++i) out[i] = dt == KvDtype::int8 ? static_cast<const std::int8_t*>(pool)[e + i] * scale
                                                             : kv_decode_one(dt, pool, e + i, nullptr, 0);
}
#endif

}  // namespace

const float* kv_rows(const KvSeqView& kv, bool v, int g, int hd, int t0, int n, float* buf, int* stride) {
  const std::size_t s0 = kv.slot(t0), off = std::size_t(g) * hd;
  if (kv.dtype == KvDtype::fp32) {
    const float* pool = v ? (kv.v_pool ? kv.v_pool : static_cast<const float*>(kv.v_data))
                          : (kv.k_pool ? kv.k_pool : static_cast<const float*>(kv.k_data));
    *stride = kv.token_stride;
    return pool + s0 * kv.token_stride + off;
  }
  const void* pool = v ? kv.v_data : kv.k_data;
  const float* scales = v ? kv.v_scale : kv.k_scale;
  const int heads = kv.token_stride / hd;
  for (int i = 0; i < n; ++i) {
    const std::size_t slot = s0 + std::size_t(i);  // one page: consecutive slots
    decode_row(kv.dtype, pool, slot * kv.token_stride + off, hd,
               kv.dtype == KvDtype::int8 ? scales[slot * heads + std::size_t(g)] : 0.0f, buf + std::size_t(i) * hd);
  }
  *stride = hd;
  return buf;
}

}  // namespace ablate::cpu
