#pragma once
// The baseline KV cache: at admission each sequence reserves one contiguous token range for
// its maximum length (max_seq_len, or prompt + max new tokens), first fit from a fixed budget.
// What the range holds beyond the sequence's current length is waste (vLLM paper, section 3).
#include <map>
#include <memory>
#include <unordered_map>

#include "kv/kv_cache.hpp"
#include "kv/kv_pools.hpp"
#include "model/shape.hpp"

namespace ablate {

class ContiguousKvCache final : public KvCache {
 public:
  enum class Reserve { MaxSeqLen, PromptPlusMaxNew };
  // capacity_bytes is the budget (kv.memory_mb); max_seq_len caps every reservation.
  ContiguousKvCache(const ModelShape& shape, std::size_t capacity_bytes, int max_seq_len, Reserve reserve,
                    KvStorage storage = {});

  std::string name() const override { return "contiguous"; }
  bool admit(int seq, int prompt_len, int max_new) override;
  bool ensure(int seq, int length) override;
  void set_length(int seq, int length) override;
  void truncate(int seq, int length) override { set_length(seq, length); }
  void release(int seq) override;
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
  std::size_t view_offset(int layer, int seq) const override { return slot_offset(layer, seq, 0); }

  int capacity_tokens() const { return capacity_tokens_; }

 private:
  struct Range {
    int start = 0;     // first token slot of the reservation
    int reserved = 0;  // tokens reserved
    int length = 0;    // tokens holding real state
  };
  void free_range(int start, int len);

  int token_floats_;  // n_kv_heads * head_dim
  int n_layers_;
  int capacity_tokens_;
  int max_seq_len_;
  Reserve reserve_;
  std::size_t bytes_per_token_;
  KvPools pools_;                              // slots [layer][capacity_tokens]; empty without host pools
  std::map<int, int> free_;                    // start -> length of each free range, coalesced
  std::unordered_map<int, Range> seqs_;
  static constexpr int32_t kOnePage[1] = {0};  // a reservation is one page: the view's index list
};

}  // namespace ablate
