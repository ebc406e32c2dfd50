#include "kv/paged_kv.hpp"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

namespace {
int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }
}  // namespace

PagedKvCache::PagedKvCache(const ModelShape& shape, std::size_t capacity_bytes, int block_size, int max_seq_len,
                           Admission admission, KvStorage storage)
    : block_size_(block_size),
      token_floats_(shape.kv_dim()),
      n_layers_(shape.n_layers),
      max_seq_len_(max_seq_len),
      admission_(admission),
      bytes_per_token_(static_cast<std::size_t>(shape.kv_floats_per_token()) * storage.element_bytes),
      allocator_(block_size > 0 ? static_cast<int>(capacity_bytes / (bytes_per_token_ * block_size)) : 0) {
  if (block_size < 1) throw std::invalid_argument("paged KV: block_size must be >= 1");
  if (storage.host_pools) {
    k_.reset(new float[pool_elements()]);  // not zeroed: pages are touched only as tokens are written
    v_.reset(new float[pool_elements()]);
  }
}

int PagedKvCache::max_tokens_per_sequence() const {
  return std::min(allocator_.num_blocks() * block_size_, max_seq_len_);
}

bool PagedKvCache::admit(int seq, int prompt_len, int max_new) {
  if (seqs_.count(seq)) throw std::logic_error(fmt::format("paged KV: sequence {} admitted twice", seq));
  Table t;
  if (admission_ == Admission::Guaranteed) {
    t.promised = blocks_for(std::min(prompt_len + max_new, max_seq_len_), block_size_);
    if (promised_ + t.promised > allocator_.num_blocks()) return false;
    promised_ += t.promised;
  }
  seqs_.emplace(seq, std::move(t));
  return true;
}

bool PagedKvCache::ensure(int seq, int length) {
  Table& t = seqs_.at(seq);
  const int need = blocks_for(length, block_size_) - static_cast<int>(t.blocks.size());
  if (need <= 0) return true;
  if (admission_ == Admission::Guaranteed && static_cast<int>(t.blocks.size()) + need > t.promised) return false;
  if (need > allocator_.num_free()) return false;  // all or nothing
  for (int i = 0; i < need; ++i) t.blocks.push_back(allocator_.allocate());
  return true;
}

void PagedKvCache::set_length(int seq, int length) {
  Table& t = seqs_.at(seq);
  if (length > static_cast<int>(t.blocks.size()) * block_size_)
    throw std::logic_error("paged KV: length beyond the allocated blocks");
  t.length = length;
}

void PagedKvCache::free_blocks_from(Table& t, std::size_t keep) {
  for (std::size_t i = keep; i < t.blocks.size(); ++i) allocator_.free(t.blocks[i]);
  t.blocks.resize(std::min(keep, t.blocks.size()));
}

void PagedKvCache::truncate(int seq, int length) {
  Table& t = seqs_.at(seq);
  t.length = std::min(t.length, length);
  free_blocks_from(t, static_cast<std::size_t>(blocks_for(length, block_size_)));
}

void PagedKvCache::release(int seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  free_blocks_from(it->second, 0);
  promised_ -= it->second.promised;
  seqs_.erase(it);
}

std::size_t PagedKvCache::pool_elements() const {
  return static_cast<std::size_t>(n_layers_) * allocator_.num_blocks() * block_size_ * token_floats_;
}
std::size_t PagedKvCache::view_offset(int layer, int /*seq*/) const {
  return static_cast<std::size_t>(layer) * allocator_.num_blocks() * block_size_ * token_floats_;
}
std::size_t PagedKvCache::slot_offset(int layer, int seq, int pos) const {
  const Table& t = seqs_.at(seq);
  const auto page = static_cast<std::size_t>(pos / block_size_);
  if (pos < 0 || page >= t.blocks.size())
    throw std::logic_error(fmt::format("paged KV: sequence {} has no block for position {}", seq, pos));
  const std::size_t token = (static_cast<std::size_t>(layer) * allocator_.num_blocks() + t.blocks[page]) * block_size_ +
                            static_cast<std::size_t>(pos % block_size_);
  return token * token_floats_;
}
float* PagedKvCache::k_slot(int layer, int seq, int pos) {
  if (!k_) throw std::logic_error("paged KV: no host pools (the backend keeps K/V)");
  return k_.get() + slot_offset(layer, seq, pos);
}
float* PagedKvCache::v_slot(int layer, int seq, int pos) {
  if (!v_) throw std::logic_error("paged KV: no host pools (the backend keeps K/V)");
  return v_.get() + slot_offset(layer, seq, pos);
}

KvSeqView PagedKvCache::view(int layer, int seq, int length) const {
  const Table& t = seqs_.at(seq);
  KvSeqView v;
  if (k_) {
    v.k_pool = k_.get() + view_offset(layer, seq);  // the layer's pool: indices address blocks inside it
    v.v_pool = v_.get() + view_offset(layer, seq);
  }
  v.indices = t.blocks.data();
  v.num_pages = blocks_for(length, block_size_);
  v.page_size = block_size_;
  v.length = length;
  v.token_stride = token_floats_;
  if (v.num_pages > static_cast<int>(t.blocks.size()))
    throw std::logic_error(fmt::format("paged KV: view of {} tokens past sequence {}'s blocks", length, seq));
  return v;
}

PagedLayout PagedKvCache::layout(std::span<const int> seqs) const {
  PagedLayout l;
  for (int s : seqs) {
    const Table& t = seqs_.at(s);
    const int pages = blocks_for(t.length, block_size_);
    l.indices.insert(l.indices.end(), t.blocks.begin(), t.blocks.begin() + pages);
    l.indptr.push_back(static_cast<int32_t>(l.indices.size()));
    l.last_page_len.push_back(pages == 0 ? 0 : t.length - (pages - 1) * block_size_);
  }
  return l;
}

KvUsage PagedKvCache::usage() const {
  KvUsage u;
  u.capacity_bytes = static_cast<std::size_t>(allocator_.num_blocks()) * block_size_ * bytes_per_token_;
  u.blocks_allocated = allocator_.num_allocated();
  u.reserved_bytes = static_cast<std::size_t>(u.blocks_allocated) * block_size_ * bytes_per_token_;
  for (const auto& [id, t] : seqs_) u.tokens_stored += t.length;
  u.used_bytes = static_cast<std::size_t>(u.tokens_stored) * bytes_per_token_;
  u.live_sequences = static_cast<int>(seqs_.size());
  return u;
}

}  // namespace ablate
