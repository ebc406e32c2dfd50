#include "kv/paged_kv.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

namespace ablate {

namespace {
int blocks_for(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

constexpr uint64_t kRootHash = 0x9E3779B97F4A7C15ull;

uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The block's identity: its parent's hash and its token ids.
uint64_t chain_hash(uint64_t parent, std::span<const int> tokens) {
  uint64_t h = mix(parent + 0x632BE59BD9B4E019ull);
  for (int t : tokens) h = mix(h ^ static_cast<uint32_t>(t)) + 0x9E3779B97F4A7C15ull;
  return h;
}
}  // namespace

PagedKvCache::PagedKvCache(const ModelShape& shape, std::size_t capacity_bytes, int block_size, int max_seq_len,
                           Admission admission, KvStorage storage, bool prefix_cache)
    : block_size_(block_size),
      token_floats_(shape.kv_dim()),
      n_layers_(shape.n_layers),
      max_seq_len_(max_seq_len),
      admission_(admission),
      bytes_per_token_(kv_bytes_per_token(shape, storage)),
      allocator_(block_size > 0 ? static_cast<int>(capacity_bytes / (bytes_per_token_ * block_size)) : 0),
      prefix_(prefix_cache) {
  if (block_size < 1) throw std::invalid_argument("paged KV: block_size must be >= 1");
  const auto n = static_cast<std::size_t>(allocator_.num_blocks());
  ref_.assign(n, 0);
  if (prefix_) {
    registered_.assign(n, 0);
    hash_.assign(n, 0);
    parent_.assign(n, 0);
    block_tokens_.assign(n * static_cast<std::size_t>(block_size_), 0);
    lru_pos_.resize(n);
    in_lru_.assign(n, 0);
  } else {
    registered_.assign(n, 0);
  }
  if (storage.host_pools)
    pools_ = KvPools(storage.dtype, pool_elements() / static_cast<std::size_t>(token_floats_), shape.n_kv_heads,
                     shape.head_dim());
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
  const int have = static_cast<int>(t.blocks.size());
  const int want = blocks_for(length, block_size_);
  const int need = std::max(0, want - have);
  // Copy-on-write: the blocks the writes [t.length, length) land in that another sequence reads.
  int copies = 0;
  const int first_written = t.length / block_size_;
  if (prefix_)
    for (int i = first_written; i < std::min(have, want); ++i) copies += ref_[static_cast<std::size_t>(t.blocks[i])] > 1;
  if (need == 0 && copies == 0 && !prefix_) return true;
  if (admission_ == Admission::Guaranteed && have + need > t.promised) return false;
  if (need + copies > num_free_blocks()) return false;  // all or nothing
  if (prefix_ && first_written < std::min(have, want)) {
    for (int i = first_written; i < std::min(have, want); ++i) {
      int32_t& b = t.blocks[static_cast<std::size_t>(i)];
      if (ref_[static_cast<std::size_t>(b)] > 1) {
        const int32_t copy = take_block();
        copy_block(b, copy);
        drop_ref(b);
        b = copy;
        ++copies_;
      } else {
        unregister(b);  // about to change: the cache must not hand it out as it was
      }
    }
    if (static_cast<int>(t.hashes.size()) > first_written) t.hashes.resize(static_cast<std::size_t>(first_written));
  }
  for (int i = 0; i < need; ++i) t.blocks.push_back(take_block());
  return true;
}

int32_t PagedKvCache::take_block() {
  int32_t b = allocator_.allocate();
  if (b < 0) {
    if (lru_.empty()) throw std::logic_error("paged KV: no block to take");
    b = lru_.front();  // evict the least recently released cached block
    lru_.pop_front();
    in_lru_[static_cast<std::size_t>(b)] = 0;
    unregister(b);
  }
  ref_[static_cast<std::size_t>(b)] = 1;
  return b;
}

void PagedKvCache::add_ref(int32_t b) {
  const auto i = static_cast<std::size_t>(b);
  if (in_lru_[i]) {
    lru_.erase(lru_pos_[i]);
    in_lru_[i] = 0;
  }
  if (++ref_[i] == 2) ++shared_;
}

void PagedKvCache::drop_ref(int32_t b) {
  const auto i = static_cast<std::size_t>(b);
  if (ref_[i] <= 0) throw std::logic_error(fmt::format("paged KV: block {} released with no reference", b));
  if (ref_[i]-- == 2) --shared_;
  if (ref_[i] > 0) return;
  if (registered_[i]) {  // keep its prefix until the pool needs the block
    lru_pos_[i] = lru_.insert(lru_.end(), b);
    in_lru_[i] = 1;
  } else {
    allocator_.free(b);
  }
}

void PagedKvCache::unregister(int32_t b) {
  const auto i = static_cast<std::size_t>(b);
  if (!registered_[i]) return;
  registered_[i] = 0;
  if (auto it = cached_.find(hash_[i]); it != cached_.end() && it->second == b) cached_.erase(it);
}

void PagedKvCache::copy_block(int32_t from, int32_t to) {
  const auto bs = static_cast<std::size_t>(block_size_), tf = static_cast<std::size_t>(token_floats_);
  for (int layer = 0; layer < n_layers_; ++layer) {  // slots, whatever the dtype (int8 scales too)
    const std::size_t base = static_cast<std::size_t>(layer) * allocator_.num_blocks() * bs;
    const std::size_t src = base + static_cast<std::size_t>(from) * bs, dst = base + static_cast<std::size_t>(to) * bs;
    if (pools_) pools_.copy(src, dst, bs);
    else pending_.push_back({src * tf, dst * tf, bs * tf});
  }
}

std::vector<KvSlotCopy> PagedKvCache::take_pending_copies() { return std::exchange(pending_, {}); }

int PagedKvCache::attach_prefix(int seq, std::span<const int> tokens) {
  if (!prefix_ || tokens.empty()) return 0;
  Table& t = seqs_.at(seq);
  if (!t.blocks.empty()) throw std::logic_error(fmt::format("paged KV: sequence {} attaches a prefix to blocks it holds", seq));
  const auto bs = static_cast<std::size_t>(block_size_);
  uint64_t h = kRootHash;
  for (std::size_t i = 0; (i + 1) * bs <= tokens.size(); ++i) {
    if (admission_ == Admission::Guaranteed && static_cast<int>(t.blocks.size()) >= t.promised) break;
    const std::span<const int> blk = tokens.subspan(i * bs, bs);
    const uint64_t parent = h;
    h = chain_hash(parent, blk);
    const auto it = cached_.find(h);
    if (it == cached_.end()) break;
    const int32_t b = it->second;
    const auto bi = static_cast<std::size_t>(b);
    if (parent_[bi] != parent || !std::equal(blk.begin(), blk.end(), block_tokens_.begin() + static_cast<std::ptrdiff_t>(bi * bs)))
      break;  // a hash collision: not this prefix
    add_ref(b);
    t.blocks.push_back(b);
    t.hashes.push_back(h);
  }
  // The last token always runs, so that there are logits to sample from.
  t.length = std::min(static_cast<int>(t.blocks.size()) * block_size_, static_cast<int>(tokens.size()) - 1);
  return t.length;
}

void PagedKvCache::commit(int seq, std::span<const int> tokens) {
  set_length(seq, static_cast<int>(tokens.size()));
  if (!prefix_) return;
  Table& t = seqs_.at(seq);
  const auto bs = static_cast<std::size_t>(block_size_);
  uint64_t h = t.hashes.empty() ? kRootHash : t.hashes.back();
  for (std::size_t i = t.hashes.size(); (i + 1) * bs <= tokens.size(); ++i) {
    const std::span<const int> blk = tokens.subspan(i * bs, bs);
    const uint64_t parent = h;
    h = chain_hash(parent, blk);
    t.hashes.push_back(h);
    const int32_t b = t.blocks[i];
    const auto bi = static_cast<std::size_t>(b);
    if (registered_[bi] || cached_.count(h)) continue;  // another block holds this prefix already
    registered_[bi] = 1;
    hash_[bi] = h;
    parent_[bi] = parent;
    std::copy(blk.begin(), blk.end(), block_tokens_.begin() + static_cast<std::ptrdiff_t>(bi * bs));
    cached_.emplace(h, b);
  }
}

void PagedKvCache::set_length(int seq, int length) {
  Table& t = seqs_.at(seq);
  if (length > static_cast<int>(t.blocks.size()) * block_size_)
    throw std::logic_error("paged KV: length beyond the allocated blocks");
  t.length = length;
}

void PagedKvCache::free_blocks_from(Table& t, std::size_t keep) {
  // Last block first: a released sequence's tail is evicted before its head (the shared prefix).
  for (std::size_t i = t.blocks.size(); i > keep; --i) drop_ref(t.blocks[i - 1]);
  t.blocks.resize(std::min(keep, t.blocks.size()));
}

void PagedKvCache::truncate(int seq, int length) {
  Table& t = seqs_.at(seq);
  t.length = std::min(t.length, length);
  const auto full = static_cast<std::size_t>(std::max(0, length) / block_size_);
  if (t.hashes.size() > full) t.hashes.resize(full);
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
  if (!pools_) throw std::logic_error("paged KV: no host pools (the backend keeps K/V)");
  return pools_.k_f32(slot_offset(layer, seq, pos) / static_cast<std::size_t>(token_floats_));
}
float* PagedKvCache::v_slot(int layer, int seq, int pos) {
  if (!pools_) throw std::logic_error("paged KV: no host pools (the backend keeps K/V)");
  return pools_.v_f32(slot_offset(layer, seq, pos) / static_cast<std::size_t>(token_floats_));
}
void PagedKvCache::store(int layer, int seq, int pos, const float* k, const float* v, int n) {
  if (!pools_) throw std::logic_error("paged KV: no host pools (the backend keeps K/V)");
  if (n != token_floats_) throw std::logic_error("paged KV: a token is n_kv_heads x head_dim floats");
  pools_.store(slot_offset(layer, seq, pos) / static_cast<std::size_t>(token_floats_), k, v);
}

KvSeqView PagedKvCache::view(int layer, int seq, int length) const {
  const Table& t = seqs_.at(seq);
  KvSeqView v;
  pools_.point(v, view_offset(layer, seq) / static_cast<std::size_t>(token_floats_));  // the layer's pool: indices address blocks inside it
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
  u.blocks_cached = static_cast<int>(lru_.size());
  u.blocks_allocated = allocator_.num_allocated() - u.blocks_cached;
  u.blocks_shared = shared_;
  u.reserved_bytes = static_cast<std::size_t>(u.blocks_allocated) * block_size_ * bytes_per_token_;
  if (shared_ == 0) {
    for (const auto& [id, t] : seqs_) u.tokens_stored += t.length;
  } else {  // a shared block's tokens count once: each block's fullest reader
    std::unordered_map<int32_t, int> fill;
    for (const auto& [id, t] : seqs_)
      for (std::size_t i = 0; i < t.blocks.size(); ++i) {
        const int f = std::clamp(t.length - static_cast<int>(i) * block_size_, 0, block_size_);
        int& m = fill[t.blocks[i]];
        m = std::max(m, f);
      }
    for (const auto& [b, f] : fill) u.tokens_stored += f;
  }
  u.used_bytes = static_cast<std::size_t>(u.tokens_stored) * bytes_per_token_;
  u.live_sequences = static_cast<int>(seqs_.size());
  return u;
}

}  // namespace ablate
