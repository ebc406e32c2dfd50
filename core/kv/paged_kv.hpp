#pragma once
// The paged KV cache (vLLM's PagedAttention): the kv.memory_mb budget is cut into fixed-size
// blocks of kv.block_size tokens; a sequence holds a block table (its blocks in token order) and
// gets a new block only when a token needs one (ensure), so at most one partly filled block per
// sequence is ever wasted. Attention reads the blocks in place through KvSeqView (indices = the
// block table): no gather. The tables of a batch can also be laid out CSR-style for kernels that
// take the whole batch at once (FlashInfer's indptr / indices / last_page_len).
//
// Prefix caching (kv.prefix_cache on; vLLM's automatic prefix caching): every full block a
// sequence has computed is registered under a hash of (its parent block's hash, its token ids),
// so a block is found only when the whole prefix up to it matches. A sequence admitted later
// attaches the matching blocks (attach_prefix) and skips computing them; blocks carry reference
// counts, and every sequence reads a shared block in place through its block table. Before a
// sequence writes into a block another sequence reads (the last prompt token of a fully cached
// prompt, a rollback into a shared block) it gets its own copy (copy-on-write, inside ensure()):
// in the host pools at once, or, when a backend keeps the pools (no host pools), recorded for it
// to apply before its next forward pass writes K/V (take_pending_copies).
// A released block that holds a registered prefix stays cached, unreferenced, until the pool
// needs it: allocation takes free blocks first, then evicts the least recently released cached
// block. Counts: a shared block is one block; cached unreferenced blocks count as free.
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "kv/block_allocator.hpp"
#include "kv/kv_cache.hpp"
#include "kv/kv_pools.hpp"
#include "model/shape.hpp"

namespace ablate {

// Block tables of several sequences as one CSR structure: sequence i's blocks are
// indices[indptr[i] .. indptr[i+1]), its last block holds last_page_len[i] tokens (1..block_size).
struct PagedLayout {
  std::vector<int32_t> indptr{0};
  std::vector<int32_t> indices;
  std::vector<int32_t> last_page_len;
};

class PagedKvCache final : public KvCache {
 public:
  // OnDemand: admission takes nothing; ensure() fails when the pool is empty and the scheduler
  // preempts (continuous batching). Guaranteed: admission promises the blocks of the sequence's
  // maximum length (prompt + max new) and fails when unpromised blocks are too few, so ensure()
  // never fails; for schedulers that cannot preempt (static batching). Blocks are still
  // allocated only as tokens need them, so memory held (reserved bytes) is the same.
  enum class Admission { OnDemand, Guaranteed };
  // capacity_bytes is the budget (kv.memory_mb): floor(capacity / (block_size * bytes per token))
  // blocks; max_seq_len caps a sequence (for validation, as the contiguous cache does).
  PagedKvCache(const ModelShape& shape, std::size_t capacity_bytes, int block_size, int max_seq_len,
               Admission admission = Admission::OnDemand, KvStorage storage = {}, bool prefix_cache = false);

  std::string name() const override { return "paged"; }
  bool admit(int seq, int prompt_len, int max_new) override;  // takes nothing up front
  bool ensure(int seq, int length) override;                  // all the blocks needed (copies included), or none
  void set_length(int seq, int length) override;
  void truncate(int seq, int length) override;                // frees blocks past the new length
  void release(int seq) override;
  int attach_prefix(int seq, std::span<const int> tokens) override;
  void commit(int seq, std::span<const int> tokens) override;
  int length(int seq) const override { return seqs_.at(seq).length; }
  bool holds(int seq) const override { return seqs_.count(seq) != 0; }
  int max_tokens_per_sequence() const override;
  float* k_slot(int layer, int seq, int pos) override;
  float* v_slot(int layer, int seq, int pos) override;
  void store(int layer, int seq, int pos, const float* k, const float* v, int n) override;
  KvSeqView view(int layer, int seq, int length) const override;
  KvUsage usage() const override;
  std::size_t pool_elements() const override;
  std::size_t slot_offset(int layer, int seq, int pos) const override;
  std::size_t view_offset(int layer, int seq) const override;  // the layer's pool: indices address blocks in it
  std::vector<KvSlotCopy> take_pending_copies() override;

  int block_size() const { return block_size_; }
  int num_blocks() const { return allocator_.num_blocks(); }
  // Blocks an allocation may take: free ones and cached unreferenced ones (evictable).
  int num_free_blocks() const { return allocator_.num_free() + static_cast<int>(lru_.size()); }
  bool prefix_cache() const { return prefix_; }
  // Prefix cache bookkeeping, for tests: live references to a block, and whether it is registered.
  int ref_count(int32_t block) const { return ref_.at(static_cast<std::size_t>(block)); }
  bool is_cached(int32_t block) const { return registered_.at(static_cast<std::size_t>(block)) != 0; }
  int num_cached_unreferenced() const { return static_cast<int>(lru_.size()); }
  long long copies_on_write() const { return copies_; }
  // One block's K (or V) in `layer`, all its slots (fp32 host pools only): for tests that watch content.
  std::span<const float> block_data(int layer, int32_t block, bool v) const {
    const std::size_t n = static_cast<std::size_t>(block_size_) * token_floats_;
    const std::size_t slot = (view_offset(layer, 0) + static_cast<std::size_t>(block) * n) / token_floats_;
    return {v ? pools_.v_f32(slot) : pools_.k_f32(slot), n};
  }
  const BlockAllocator& allocator() const { return allocator_; }
  std::span<const int32_t> block_table(int seq) const { return seqs_.at(seq).blocks; }
  // The block tables of `seqs`, in that order, as CSR arrays.
  PagedLayout layout(std::span<const int> seqs) const;

 private:
  struct Table {
    std::vector<int32_t> blocks;  // in token order
    int length = 0;               // tokens holding real state
    int promised = 0;             // Guaranteed admission: blocks this sequence may take
    std::vector<uint64_t> hashes; // prefix cache: the chain hashes of blocks [0, hashes.size()), all full and computed
  };
  void free_blocks_from(Table& t, std::size_t keep);
  int32_t take_block();          // a free block, else the least recently released cached one (evicted)
  void add_ref(int32_t b);
  void drop_ref(int32_t b);      // at zero: cached if registered, else back to the allocator
  void unregister(int32_t b);
  void copy_block(int32_t from, int32_t to);

  int block_size_;
  int token_floats_;  // n_kv_heads * head_dim
  int n_layers_;
  int max_seq_len_;
  Admission admission_;
  int promised_ = 0;  // Guaranteed admission: blocks promised to live sequences
  std::size_t bytes_per_token_;  // all layers, K and V
  BlockAllocator allocator_;
  KvPools pools_;  // slots [layer][block][slot]; empty without host pools
  std::unordered_map<int, Table> seqs_;

  // Per block (prefix cache): references from block tables, registration and the registered
  // content (parent hash, token ids) that a hash hit is checked against.
  bool prefix_;
  std::vector<int> ref_;
  std::vector<char> registered_;
  std::vector<uint64_t> hash_, parent_;
  std::vector<int32_t> block_tokens_;  // [block][block_size]
  std::unordered_map<uint64_t, int32_t> cached_;  // hash -> registered block
  std::list<int32_t> lru_;                        // unreferenced registered blocks, least recently released first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
  std::vector<char> in_lru_;
  int shared_ = 0;                                // blocks with ref > 1
  long long copies_ = 0;
  std::vector<KvSlotCopy> pending_;  // no host pools: copy_block's copies, for the backend
};

}  // namespace ablate
