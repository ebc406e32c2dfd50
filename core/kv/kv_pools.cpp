#include "kv/kv_pools.hpp"

#include <cstring>
#include <stdexcept>

#include "cpu/kv_format.hpp"
#include "model/shape.hpp"

namespace ablate {

KvDtype parse_kv_dtype(const std::string& name) {
  for (KvDtype d : {KvDtype::fp32, KvDtype::bf16, KvDtype::fp16, KvDtype::fp8_e4m3, KvDtype::int8})
    if (kv_dtype_name(d) == name) return d;
  throw std::invalid_argument("kv.dtype \"" + name + "\" is not one of fp32, bf16, fp16, fp8_e4m3, int8");
}

std::string kv_dtype_name(KvDtype d) {
  switch (d) {
    case KvDtype::fp32: return "fp32";
    case KvDtype::bf16: return "bf16";
    case KvDtype::fp16: return "fp16";
    case KvDtype::fp8_e4m3: return "fp8_e4m3";
    case KvDtype::int8: return "int8";
  }
  return "?";
}

std::size_t kv_bytes_per_token(const ModelShape& shape, const KvStorage& storage) {
  std::size_t n = static_cast<std::size_t>(shape.kv_floats_per_token()) * storage.element_bytes;
  if (storage.dtype == KvDtype::int8) n += 2 * static_cast<std::size_t>(shape.n_layers) * shape.n_kv_heads * sizeof(float);
  return n;
}

KvPools::KvPools(KvDtype dtype, std::size_t slots, int n_kv_heads, int head_dim)
    : dtype_(dtype),
      heads_(n_kv_heads),
      token_elems_(static_cast<std::size_t>(n_kv_heads) * head_dim),
      elem_bytes_(kv_dtype_bytes(dtype)) {
  const std::size_t bytes = slots * token_elems_ * elem_bytes_;
  k_.reset(new std::byte[bytes]);
  v_.reset(new std::byte[bytes]);
  if (dtype == KvDtype::int8) {
    ks_.reset(new float[slots * static_cast<std::size_t>(heads_)]);
    vs_.reset(new float[slots * static_cast<std::size_t>(heads_)]);
  }
}

float* KvPools::k_f32(std::size_t slot) const {
  if (dtype_ != KvDtype::fp32) throw std::logic_error("KV pools: " + kv_dtype_name(dtype_) + " elements are not floats; use store()");
  return reinterpret_cast<float*>(k_.get()) + slot * token_elems_;
}
float* KvPools::v_f32(std::size_t slot) const {
  if (dtype_ != KvDtype::fp32) throw std::logic_error("KV pools: " + kv_dtype_name(dtype_) + " elements are not floats; use store()");
  return reinterpret_cast<float*>(v_.get()) + slot * token_elems_;
}

void KvPools::store(std::size_t slot, const float* k, const float* v) {
  const int hd = static_cast<int>(token_elems_ / static_cast<std::size_t>(heads_));
  const std::size_t at = slot * token_elems_ * elem_bytes_, s = slot * static_cast<std::size_t>(heads_);
  cpu::kv_encode(dtype_, k, heads_, hd, k_.get() + at, ks_ ? ks_.get() + s : nullptr);
  cpu::kv_encode(dtype_, v, heads_, hd, v_.get() + at, vs_ ? vs_.get() + s : nullptr);
}

void KvPools::copy(std::size_t from, std::size_t to, std::size_t n) {
  const std::size_t b = token_elems_ * elem_bytes_;
  std::memcpy(k_.get() + to * b, k_.get() + from * b, n * b);
  std::memcpy(v_.get() + to * b, v_.get() + from * b, n * b);
  if (ks_) {
    const auto h = static_cast<std::size_t>(heads_);
    std::memcpy(ks_.get() + to * h, ks_.get() + from * h, n * h * sizeof(float));
    std::memcpy(vs_.get() + to * h, vs_.get() + from * h, n * h * sizeof(float));
  }
}

void KvPools::point(KvSeqView& view, std::size_t slot0) const {
  view.dtype = dtype_;
  if (!k_) return;
  const std::size_t at = slot0 * token_elems_ * elem_bytes_;
  view.k_data = k_.get() + at;
  view.v_data = v_.get() + at;
  if (dtype_ == KvDtype::fp32) {
    view.k_pool = static_cast<const float*>(view.k_data);
    view.v_pool = static_cast<const float*>(view.v_data);
  }
  if (ks_) {
    view.k_scale = ks_.get() + slot0 * static_cast<std::size_t>(heads_);
    view.v_scale = vs_.get() + slot0 * static_cast<std::size_t>(heads_);
  }
}

}  // namespace ablate
