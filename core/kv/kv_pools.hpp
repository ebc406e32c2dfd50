#pragma once
// The host K and V pools both KV layouts keep: `slots` token slots of n_kv_heads x head_dim
// elements each, in one KvDtype, plus (int8) one fp32 scale per slot and KV head. The layouts
// decide which slot a token gets; this class owns the bytes, the conversion on write and the
// pointers a KvSeqView reads through.
#include <cstddef>
#include <memory>

#include "kv/kv_cache.hpp"

namespace ablate {

class KvPools {
 public:
  KvPools() = default;  // no host pools (the backend keeps K/V)
  KvPools(KvDtype dtype, std::size_t slots, int n_kv_heads, int head_dim);

  explicit operator bool() const { return k_ != nullptr; }
  KvDtype dtype() const { return dtype_; }
  // fp32 pools: the floats of slot `slot` (throws for another dtype: there are no floats to hand out).
  float* k_f32(std::size_t slot) const;
  float* v_f32(std::size_t slot) const;
  // One token's K and V (n_kv_heads x head_dim floats each) into slot `slot`, converted.
  void store(std::size_t slot, const float* k, const float* v);
  // Slots [from, from + n) copied to [to, to + n), values and scales (copy-on-write of a block).
  void copy(std::size_t from, std::size_t to, std::size_t n);
  // Point `view` at the pools as if they started at slot `slot0` (pages index slots from there).
  void point(KvSeqView& view, std::size_t slot0) const;

 private:
  KvDtype dtype_ = KvDtype::fp32;
  int heads_ = 0;
  std::size_t token_elems_ = 0, elem_bytes_ = 4;
  std::unique_ptr<std::byte[]> k_, v_;   // left uninitialised: pages are touched only as tokens are written
  std::unique_ptr<float[]> ks_, vs_;     // int8 scales [slot][head]
};

}  // namespace ablate
