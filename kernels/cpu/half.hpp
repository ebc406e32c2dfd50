#pragma once
// 16-bit weight formats for the CPU kernels: bf16 (the top half of an fp32) and IEEE fp16, each a
// distinct type so a matmul overload knows what it reads. Conversions are scalar, portable and
// round to nearest even (the format's own rounding); the kernels widen 16 values at a time with
// AVX-512 where the build has it.
#include <bit>
#include <cmath>
#include <cstdint>

namespace ablate::cpu {

struct Bf16 {
  std::uint16_t bits;
};
struct Half {
  std::uint16_t bits;
};

inline float to_float(Bf16 h) { return std::bit_cast<float>(std::uint32_t{h.bits} << 16); }

inline Bf16 to_bf16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return {static_cast<std::uint16_t>((x >> 16) | 0x40)};  // quiet, keeps the sign
  return {static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

inline float to_float(Half h) {
  const std::uint32_t sign = std::uint32_t{h.bits & 0x8000u} << 16, exp = (h.bits >> 10) & 0x1fu, mant = h.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline Half to_half(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
  const int exp = static_cast<int>((x >> 23) & 0xffu);
  if (exp == 0xff) return {static_cast<std::uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u))};
  const int e = exp - 127 + 15;
  if (e >= 31) return {static_cast<std::uint16_t>(sign | 0x7c00u)};  // too large: infinity
  if (e <= 0) {                                                      // subnormal in fp16
    if (e < -10) return {static_cast<std::uint16_t>(sign)};
    const std::uint32_t m = mant | 0x800000u;
    const int shift = 14 - e;
    std::uint32_t h = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (h & 1u))) ++h;
    return {static_cast<std::uint16_t>(sign | h)};
  }
  std::uint32_t h = sign | (static_cast<std::uint32_t>(e) << 10) | (mant >> 13);
  const std::uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return {static_cast<std::uint16_t>(h)};
}

}  // namespace ablate::cpu
