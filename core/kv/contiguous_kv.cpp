#include "kv/contiguous_kv.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

ContiguousKvCache::ContiguousKvCache(const ModelShape& shape, std::size_t capacity_bytes, int max_seq_len,
                                     Reserve reserve, KvStorage storage)
    : token_floats_(shape.kv_dim()),
      n_layers_(shape.n_layers),
      max_seq_len_(max_seq_len),
      reserve_(reserve),
      bytes_per_token_(kv_bytes_per_token(shape, storage)) {
  capacity_tokens_ = static_cast<int>(capacity_bytes / bytes_per_token_);
  if (storage.host_pools)
    pools_ = KvPools(storage.dtype, static_cast<std::size_t>(n_layers_) * capacity_tokens_, shape.n_kv_heads, shape.head_dim());
  if (capacity_tokens_ > 0) free_[0] = capacity_tokens_;
}

int ContiguousKvCache::max_tokens_per_sequence() const { return std::min(capacity_tokens_, max_seq_len_); }

bool ContiguousKvCache::admit(int seq, int prompt_len, int max_new) {
  if (seqs_.count(seq)) throw std::logic_error(fmt::format("contiguous KV: sequence {} admitted twice", seq));
  const int want = reserve_ == Reserve::MaxSeqLen ? max_seq_len_ : std::min(prompt_len + max_new, max_seq_len_);
  for (auto it = free_.begin(); it != free_.end(); ++it) {  // first fit
    if (it->second < want) continue;
    const int start = it->first, len = it->second;
    free_.erase(it);
    if (len > want) free_[start + want] = len - want;
    seqs_[seq] = Range{start, want, 0};
    return true;
  }
  return false;
}

bool ContiguousKvCache::ensure(int seq, int length) { return length <= seqs_.at(seq).reserved; }

void ContiguousKvCache::set_length(int seq, int length) {
  Range& r = seqs_.at(seq);
  if (length > r.reserved) throw std::logic_error("contiguous KV: length beyond the reservation");
  r.length = length;
}

void ContiguousKvCache::free_range(int start, int len) {
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == start + len) {  // merge with the following hole
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // merge with the preceding hole
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      prev->second += len;
      return;
    }
  }
  free_[start] = len;
}

void ContiguousKvCache::release(int seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  free_range(it->second.start, it->second.reserved);
  seqs_.erase(it);
}

std::size_t ContiguousKvCache::pool_elements() const {
  return static_cast<std::size_t>(n_layers_) * capacity_tokens_ * token_floats_;
}
std::size_t ContiguousKvCache::slot_offset(int layer, int seq, int pos) const {
  const Range& r = seqs_.at(seq);
  return (static_cast<std::size_t>(layer) * capacity_tokens_ + r.start + pos) * token_floats_;
}
float* ContiguousKvCache::k_slot(int layer, int seq, int pos) {
  if (!pools_) throw std::logic_error("contiguous KV: no host pools (the backend keeps K/V)");
  return pools_.k_f32(slot_offset(layer, seq, pos) / token_floats_);
}
float* ContiguousKvCache::v_slot(int layer, int seq, int pos) {
  if (!pools_) throw std::logic_error("contiguous KV: no host pools (the backend keeps K/V)");
  return pools_.v_f32(slot_offset(layer, seq, pos) / token_floats_);
}
void ContiguousKvCache::store(int layer, int seq, int pos, const float* k, const float* v, int n) {
  if (!pools_) throw std::logic_error("contiguous KV: no host pools (the backend keeps K/V)");
  if (n != token_floats_) throw std::logic_error("contiguous KV: a token is n_kv_heads x head_dim floats");
  pools_.store(slot_offset(layer, seq, pos) / token_floats_, k, v);
}

KvSeqView ContiguousKvCache::view(int layer, int seq, int length) const {
  const Range& r = seqs_.at(seq);
  KvSeqView v;
  pools_.point(v, view_offset(layer, seq) / token_floats_);
  v.indices = kOnePage;
  v.num_pages = 1;
  v.page_size = r.reserved;
  v.length = length;
  v.token_stride = token_floats_;
  return v;
}

KvUsage ContiguousKvCache::usage() const {
  KvUsage u;
  u.capacity_bytes = static_cast<std::size_t>(capacity_tokens_) * bytes_per_token_;
  for (const auto& [id, r] : seqs_) {
    u.reserved_bytes += static_cast<std::size_t>(r.reserved) * bytes_per_token_;
    u.used_bytes += static_cast<std::size_t>(r.length) * bytes_per_token_;
    u.tokens_stored += r.length;
  }
  u.live_sequences = static_cast<int>(seqs_.size());
  return u;
}

}  // namespace ablate
