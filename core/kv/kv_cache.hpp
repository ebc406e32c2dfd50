#pragma once
// The KV-cache axis. A cache owns the K and V storage of every layer and decides where each
// sequence's tokens live. Attention never sees the policy, only a KvSeqView: a CSR-style
// page list (FlashInfer's indptr/indices/last_page_len, one sequence at a time). A contiguous
// reservation is simply one page as long as the reservation, so both layouts share one reader.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/kv_view.hpp"

namespace ablate {

struct ModelShape;

// Memory accounting at one instant (shared/reference/metrics.md).
struct KvUsage {
  std::size_t capacity_bytes = 0;  // the budget given to the cache
  std::size_t reserved_bytes = 0;  // set aside for live sequences
  std::size_t used_bytes = 0;      // holding real token state
  int live_sequences = 0;
  int blocks_allocated = 0;        // paged: blocks held by live sequences, a shared block once (contiguous: 0)
  int blocks_shared = 0;           // prefix cache: blocks read by more than one live sequence
  int blocks_cached = 0;           // prefix cache: unreferenced blocks kept for reuse (free to evict)
  long long tokens_stored = 0;     // tokens holding real state (used_bytes / bytes per token)
};

// Where a cache's pools live and what one element costs. The default is the CPU backend's:
// fp32 pools in host memory; host pools may hold any KvDtype (kv.dtype; host() below). A backend
// that keeps K/V elsewhere (the CUDA backend's device pools: fp32, bf16, fp16 or fp8_e4m3) asks for no host pools
// and uses the offset API below; element_bytes (and int8's scales) make kv.memory_mb buy tokens
// at the KV precision, and every byte count follow it.
struct KvStorage {
  std::size_t element_bytes = sizeof(float);
  bool host_pools = true;
  KvDtype dtype = KvDtype::fp32;
  static KvStorage host(KvDtype d) { return {kv_dtype_bytes(d), true, d}; }
};

// A copy of `elements` pool elements from element offset `from` to `to` (KvCache::slot_offset's
// vocabulary), the same in the K and the V pool.
struct KvSlotCopy {
  std::size_t from = 0, to = 0, elements = 0;
  bool operator==(const KvSlotCopy&) const = default;
};

// kv.dtype's names: fp32, bf16, fp16, fp8_e4m3, int8 (std::invalid_argument otherwise).
KvDtype parse_kv_dtype(const std::string& name);
std::string kv_dtype_name(KvDtype d);

// Bytes one token takes in a cache of `shape` (K and V, every layer): 2 x layers x kv_heads x
// head_dim x element bytes, plus for int8 one fp32 scale per layer, K/V and KV head.
std::size_t kv_bytes_per_token(const ModelShape& shape, const KvStorage& storage);

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual std::string name() const = 0;

  // Admission: take whatever the policy reserves up front for a sequence that will hold
  // prompt_len + max_new tokens at most. False (and nothing taken) when it does not fit.
  virtual bool admit(int seq, int prompt_len, int max_new) = 0;
  // Make room for the sequence to hold `length` tokens (allocation on demand for paged layouts).
  // False when memory ran out: the caller preempts someone or waits. Never shrinks.
  virtual bool ensure(int seq, int length) = 0;
  // Record that tokens [0, length) now hold real state (after a forward pass wrote them).
  virtual void set_length(int seq, int length) = 0;
  // Roll back to `length` tokens (rejected speculative tokens); frees what the policy can.
  virtual void truncate(int seq, int length) = 0;
  // Give everything back (finish or preemption).
  virtual void release(int seq) = 0;

  // Prefix caching (paged with kv.prefix_cache on; the defaults are a cache without one).
  // Right after admit(): attach the cached blocks of the longest cached prefix of `tokens` (whole
  // blocks, matched by a hash chain over their token ids) and return how many leading tokens
  // therefore need no computing: never all of them, the last token is always computed.
  virtual int attach_prefix(int /*seq*/, std::span<const int> /*tokens*/) { return 0; }
  // Tokens [0, tokens.size()) hold real state computed from these ids: set_length, and a prefix
  // cache registers the full blocks for reuse.
  virtual void commit(int seq, std::span<const int> tokens) { set_length(seq, static_cast<int>(tokens.size())); }

  virtual int length(int seq) const = 0;
  virtual bool holds(int seq) const = 0;
  // The largest prompt_len + max_new a single sequence could ever be given (for validation).
  virtual int max_tokens_per_sequence() const = 0;

  // Storage: where the forward pass writes token `pos` of `seq` in `layer` (room must exist);
  // fp32 host pools only.
  virtual float* k_slot(int layer, int seq, int pos) = 0;
  virtual float* v_slot(int layer, int seq, int pos) = 0;
  // Write token `pos` of `seq` in `layer`: k and v hold `n` floats (n_kv_heads x head_dim each),
  // converted to the pools' dtype. This default copies fp32 through k_slot / v_slot.
  virtual void store(int layer, int seq, int pos, const float* k, const float* v, int n) {
    std::copy_n(k, n, k_slot(layer, seq, pos));
    std::copy_n(v, n, v_slot(layer, seq, pos));
  }
  // Read view for attention over the first `length` tokens. Without host pools its k_pool and
  // v_pool are null; the rest (pages, strides) still describes the layout.
  virtual KvSeqView view(int layer, int seq, int length) const = 0;
  // The same placement as offsets, in elements from the start of the K pool (the V pool is laid
  // out identically), for pools kept elsewhere: each pool holds pool_elements() elements, token
  // `pos` of `seq` in `layer` starts at slot_offset(), and view().k_pool corresponds to
  // view_offset().
  virtual std::size_t pool_elements() const = 0;
  virtual std::size_t slot_offset(int layer, int seq, int pos) const = 0;
  virtual std::size_t view_offset(int layer, int seq) const = 0;
  // Copies the cache decided on but could not do because its pools are not on the host (the
  // prefix cache's copy-on-write in ensure()), oldest first; taking them empties the list. The
  // backend keeping the pools applies them in this order before its next K/V write.
  virtual std::vector<KvSlotCopy> take_pending_copies() { return {}; }

  virtual KvUsage usage() const = 0;
};

}  // namespace ablate
