#pragma once
// What the CUDA backend tests share: an Attention by name, a KV cache of either layout at the
// backend's KV storage, and the ragged three-step batch whose logits they compare across backends.
#include <catch2/catch.hpp>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/backend.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"

namespace ablate::test {

inline std::unique_ptr<Attention> attention_named(const std::string& name) {
  if (name == "naive") return std::make_unique<NaiveAttention>();
  if (name == "flash") return std::make_unique<FlashAttention>();
  return std::make_unique<FlashSplitAttention>();
}

inline std::unique_ptr<KvCache> cache_for(const Backend& b, const std::string& layout, int max_len) {
  const std::size_t bytes = 64u << 20;
  if (layout == "paged")
    return std::make_unique<PagedKvCache>(b.shape(), bytes, 16, max_len, PagedKvCache::Admission::OnDemand,
                                          b.kv_storage());
  return std::make_unique<ContiguousKvCache>(b.shape(), bytes, max_len, ContiguousKvCache::Reserve::MaxSeqLen,
                                             b.kv_storage());
}

// Logits of every row of three steps of a ragged batch: p0's first 40 tokens beside p1's first
// 20 (prefill), then p0's 41st token decoded beside a 3-token verification chunk of p1, then
// p0's 42nd alone (batch 1: the fused batch-1 kernels). p0 holds 42 tokens, p1 23.
inline std::vector<float> ragged_steps_logits(Backend& b, const std::string& layout, const std::string& attention,
                                       const std::vector<int>& p0, const std::vector<int>& p1) {
  auto kv = cache_for(b, layout, 256);
  auto att = attention_named(attention);
  REQUIRE(kv->admit(0, 41, 8));
  REQUIRE(kv->admit(1, 23, 8));
  REQUIRE(kv->ensure(0, 41));
  REQUIRE(kv->ensure(1, 23));
  ForwardBatch prefill;
  prefill.chunks.push_back({0, 0, std::span<const int>(p0).first(40), false});
  prefill.chunks.push_back({1, 0, std::span<const int>(p1).first(20), false});
  std::vector<float> first = b.forward(prefill, *kv, *att);
  kv->set_length(0, 40);
  kv->set_length(1, 20);
  ForwardBatch mixed;
  mixed.chunks.push_back({0, 40, std::span<const int>(p0).subspan(40, 1), false});
  mixed.chunks.push_back({1, 20, std::span<const int>(p1).subspan(20, 3), true});
  std::vector<float> second = b.forward(mixed, *kv, *att);
  first.insert(first.end(), second.begin(), second.end());
  kv->set_length(0, 41);
  kv->set_length(1, 23);
  REQUIRE(kv->ensure(0, 42));
  ForwardBatch single;
  single.chunks.push_back({0, 41, std::span<const int>(p0).subspan(41, 1), false});
  std::vector<float> third = b.forward(single, *kv, *att);
  first.insert(first.end(), third.begin(), third.end());
  return first;
}

}  // namespace ablate::test
