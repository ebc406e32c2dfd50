// The paged KV cache and its block allocator: no double allocation, no leak (allocated + free ==
// pool at every step, in random operation sequences and inside real engine runs), block tables
// as CSR arrays, on-demand allocation and its byte accounting, guaranteed admission.
#include <catch2/catch.hpp>

#include <array>
#include <map>
#include <random>
#include <set>

#include <omp.h>

#include "support.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "engine/engine.hpp"
#include "kv/block_allocator.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "sched/continuous_scheduler.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

using namespace ablate;

namespace {

const ModelShape& tiny() {
  static const ModelShape s = *find_preset("tiny");
  return s;
}
std::size_t per_token() { return static_cast<std::size_t>(tiny().kv_floats_per_token()) * sizeof(float); }

// Every block is free or in exactly one live table; counts agree.
void check_invariants(const PagedKvCache& kv, const std::set<int>& live) {
  const BlockAllocator& a = kv.allocator();
  REQUIRE(a.num_allocated() + a.num_free() == a.num_blocks());
  std::set<int32_t> seen;
  std::size_t in_tables = 0;
  long long tokens = 0;
  for (int s : live) {
    REQUIRE(kv.holds(s));
    const auto t = kv.block_table(s);
    for (int32_t b : t) {
      REQUIRE(a.is_allocated(b));
      REQUIRE(seen.insert(b).second);  // never in two tables, never twice in one
    }
    in_tables += t.size();
    REQUIRE(kv.length(s) <= static_cast<int>(t.size()) * kv.block_size());
    tokens += kv.length(s);
  }
  REQUIRE(in_tables == static_cast<std::size_t>(a.num_allocated()));  // no leak
  const KvUsage u = kv.usage();
  REQUIRE(u.blocks_allocated == a.num_allocated());
  REQUIRE(u.tokens_stored == tokens);
  REQUIRE(u.reserved_bytes == static_cast<std::size_t>(a.num_allocated()) * kv.block_size() * per_token());
  REQUIRE(u.used_bytes == static_cast<std::size_t>(tokens) * per_token());
  REQUIRE(u.live_sequences == static_cast<int>(live.size()));
}

// A KvCache that forwards to a PagedKvCache and checks the invariants after every change.
class CheckedPaged final : public KvCache {
 public:
  explicit CheckedPaged(PagedKvCache& kv) : kv_(kv) {}
  std::string name() const override { return kv_.name(); }
  bool admit(int s, int p, int m) override {
    const bool ok = kv_.admit(s, p, m);
    if (ok) live_.insert(s);
    check();
    return ok;
  }
  bool ensure(int s, int len) override {
    const int free_before = kv_.num_free_blocks();
    const bool ok = kv_.ensure(s, len);
    if (!ok) REQUIRE(kv_.num_free_blocks() == free_before);  // a failed ensure takes nothing
    check();
    return ok;
  }
  void set_length(int s, int len) override { kv_.set_length(s, len); check(); }
  void truncate(int s, int len) override { kv_.truncate(s, len); check(); }
  void release(int s) override {
    kv_.release(s);
    live_.erase(s);
    check();
    ++releases;
  }
  int length(int s) const override { return kv_.length(s); }
  bool holds(int s) const override { return kv_.holds(s); }
  int max_tokens_per_sequence() const override { return kv_.max_tokens_per_sequence(); }
  float* k_slot(int l, int s, int p) override { return kv_.k_slot(l, s, p); }
  float* v_slot(int l, int s, int p) override { return kv_.v_slot(l, s, p); }
  KvSeqView view(int l, int s, int len) const override { return kv_.view(l, s, len); }
  KvUsage usage() const override { return kv_.usage(); }
  std::size_t pool_elements() const override { return kv_.pool_elements(); }
  std::size_t slot_offset(int l, int s, int p) const override { return kv_.slot_offset(l, s, p); }
  std::size_t view_offset(int l, int s) const override { return kv_.view_offset(l, s); }
  int checks = 0, releases = 0;

 private:
  void check() {
    check_invariants(kv_, live_);
    ++checks;
  }
  PagedKvCache& kv_;
  std::set<int> live_;
};

}  // namespace

TEST_CASE("block allocator hands out each block once and takes back only what it gave", "[paged][allocator]") {
  BlockAllocator a(5);
  std::set<int32_t> got;
  for (int i = 0; i < 5; ++i) {
    const int32_t b = a.allocate();
    REQUIRE(b >= 0);
    REQUIRE(got.insert(b).second);
    REQUIRE(a.num_allocated() + a.num_free() == 5);
  }
  CHECK(a.allocate() == -1);  // exhausted, and nothing changed
  CHECK(a.num_free() == 0);
  a.free(3);
  CHECK_THROWS_AS(a.free(3), std::logic_error);   // double free
  CHECK_THROWS_AS(a.free(7), std::logic_error);   // not in the pool
  CHECK_THROWS_AS(a.free(-1), std::logic_error);
  CHECK(a.allocate() == 3);  // the freed block comes back
  for (int32_t b : got) a.free(b);
  CHECK(a.num_free() == 5);
  CHECK(BlockAllocator(0).allocate() == -1);
}

TEST_CASE("paged KV: random admit/ensure/set_length/truncate/release never leaks or double-allocates",
          "[paged][allocator][property]") {
  int failed = 0;  // ensure() calls refused for lack of blocks, over all seeds
  for (unsigned seed = 1; seed <= 30; ++seed) {
    std::mt19937 rng(seed);
    const int bs = std::array{1, 2, 8, 16}[seed % 4];
    const int pool_tokens = bs * (3 + static_cast<int>(rng() % 20));
    PagedKvCache kv(tiny(), static_cast<std::size_t>(pool_tokens) * per_token(), bs, 1 << 20);
    REQUIRE(kv.num_blocks() == pool_tokens / bs);
    std::set<int> live;
    int next_id = 0;
    for (int op = 0; op < 400; ++op) {
      INFO("seed " << seed << " op " << op);
      const unsigned what = rng() % 10;
      if (what < 2 || live.empty()) {
        REQUIRE(kv.admit(next_id, 1, 1));
        live.insert(next_id++);
      } else {
        auto it = live.begin();
        std::advance(it, rng() % live.size());
        const int s = *it;
        const int cap = static_cast<int>(kv.block_table(s).size()) * bs;
        if (what < 6) {
          const int want = kv.length(s) + 1 + static_cast<int>(rng() % (2 * bs + 2));
          const int free_before = kv.num_free_blocks();
          if (kv.ensure(s, want)) {
            REQUIRE(static_cast<int>(kv.block_table(s).size()) == (std::max(want, cap) + bs - 1) / bs);
            kv.set_length(s, want);
          } else {
            ++failed;
            REQUIRE(kv.num_free_blocks() == free_before);
          }
        } else if (what < 8) {
          kv.truncate(s, static_cast<int>(rng() % (kv.length(s) + 1)));
          REQUIRE(static_cast<int>(kv.block_table(s).size()) == (kv.length(s) + bs - 1) / bs);
        } else {
          kv.release(s);
          live.erase(s);
          REQUIRE_FALSE(kv.holds(s));
        }
      }
      check_invariants(kv, live);
    }
    for (int s : live) kv.release(s);
    CHECK(kv.num_free_blocks() == kv.num_blocks());
    CHECK(kv.usage().reserved_bytes == 0);
  }
  CHECK(failed > 30);  // the pool really ran dry, often
}

TEST_CASE("paged KV: blocks on demand, bytes and fragmentation, CSR layout, views in place", "[paged]") {
  PagedKvCache kv(tiny(), 10 * 4 * per_token(), 4, 64);  // 10 blocks of 4 tokens
  CHECK(kv.num_blocks() == 10);
  CHECK(kv.usage().capacity_bytes == 40 * per_token());
  REQUIRE(kv.admit(7, 5, 20));
  CHECK(kv.block_table(7).empty());  // admission takes nothing
  REQUIRE(kv.ensure(7, 5));
  kv.set_length(7, 5);
  CHECK(kv.block_table(7).size() == 2);
  KvUsage u = kv.usage();
  CHECK(u.reserved_bytes == 8 * per_token());
  CHECK(u.used_bytes == 5 * per_token());  // 3 slots of the last block are internal fragmentation
  REQUIRE(kv.admit(2, 1, 1));
  REQUIRE(kv.ensure(2, 9));
  kv.set_length(2, 9);
  REQUIRE(kv.ensure(7, 8));  // fits in the last block: nothing new
  CHECK(kv.block_table(7).size() == 2);
  CHECK_FALSE(kv.ensure(2, 9 + 7 * 4 + 1));  // needs 8 more blocks, 5 free: all or nothing
  CHECK(kv.num_free_blocks() == 5);

  const std::vector<int> order{2, 7};
  const PagedLayout l = kv.layout(order);
  CHECK(l.indptr == std::vector<int32_t>{0, 3, 5});
  CHECK(l.last_page_len == std::vector<int32_t>{1, 1});
  CHECK(std::vector<int32_t>(l.indices.begin(), l.indices.begin() + 3) ==
        std::vector<int32_t>(kv.block_table(2).begin(), kv.block_table(2).end()));

  // The view addresses the same memory k_slot wrote: no gather.
  for (int layer = 0; layer < tiny().n_layers; ++layer)
    for (int pos = 0; pos < 9; ++pos) {
      *kv.k_slot(layer, 2, pos) = static_cast<float>(1000 * layer + pos);
      *kv.v_slot(layer, 2, pos) = static_cast<float>(-1000 * layer - pos);
    }
  for (int layer = 0; layer < tiny().n_layers; ++layer) {
    const KvSeqView v = kv.view(layer, 2, 9);
    CHECK(v.num_pages == 3);
    CHECK(v.page_size == 4);
    for (int pos = 0; pos < 9; ++pos) {
      CHECK(v.k(pos, 0, tiny().head_dim()) == kv.k_slot(layer, 2, pos));
      CHECK(*v.k(pos, 0, tiny().head_dim()) == static_cast<float>(1000 * layer + pos));
      CHECK(*v.v(pos, 0, tiny().head_dim()) == static_cast<float>(-1000 * layer - pos));
    }
  }
  CHECK_THROWS_AS(kv.k_slot(0, 2, 12), std::logic_error);  // no block there
  kv.truncate(2, 4);
  CHECK(kv.block_table(2).size() == 1);
  kv.release(2);
  kv.release(7);
  CHECK(kv.num_free_blocks() == 10);
}

TEST_CASE("KV offsets address the same slots as the host pools; device-kept storage buys tokens at its precision",
          "[paged][kv]") {
  const std::size_t budget = 40 * per_token();
  PagedKvCache paged(tiny(), budget, 4, 64);
  ContiguousKvCache contiguous(tiny(), budget, 16, ContiguousKvCache::Reserve::MaxSeqLen);
  for (KvCache* kv : {static_cast<KvCache*>(&paged), static_cast<KvCache*>(&contiguous)}) {
    REQUIRE(kv->admit(3, 1, 1));
    REQUIRE(kv->admit(5, 4, 8));
    REQUIRE(kv->ensure(3, 2));
    REQUIRE(kv->ensure(5, 12));
    kv->set_length(5, 12);
    const float* k0 = kv->k_slot(0, 3, 0) - kv->slot_offset(0, 3, 0);  // the K pool's start
    const float* v0 = kv->v_slot(0, 3, 0) - kv->slot_offset(0, 3, 0);
    for (int layer = 0; layer < tiny().n_layers; ++layer) {
      const KvSeqView v = kv->view(layer, 5, 12);
      CHECK(v.k_pool == k0 + kv->view_offset(layer, 5));
      CHECK(v.v_pool == v0 + kv->view_offset(layer, 5));
      for (int pos = 0; pos < 12; ++pos) {
        CHECK(kv->k_slot(layer, 5, pos) == k0 + kv->slot_offset(layer, 5, pos));
        CHECK(v.k(pos, 0, tiny().head_dim()) == k0 + kv->slot_offset(layer, 5, pos));
        CHECK(kv->slot_offset(layer, 5, pos) + tiny().kv_dim() <= kv->pool_elements());
      }
    }
  }
  // bf16 K/V kept by a backend: the same budget holds twice the tokens, bytes are counted at
  // 2 per element, and there is no host memory to write.
  const KvStorage device_bf16{2, false};
  PagedKvCache paged16(tiny(), budget, 4, 64, PagedKvCache::Admission::OnDemand, device_bf16);
  ContiguousKvCache contiguous16(tiny(), budget, 16, ContiguousKvCache::Reserve::MaxSeqLen, device_bf16);
  CHECK(paged16.num_blocks() == 20);
  CHECK(contiguous16.capacity_tokens() == 80);
  CHECK(paged16.usage().capacity_bytes == budget);
  REQUIRE(paged16.admit(1, 3, 3));
  REQUIRE(paged16.ensure(1, 5));
  paged16.set_length(1, 5);
  CHECK(paged16.usage().used_bytes == 5 * per_token() / 2);
  CHECK(paged16.view(0, 1, 5).k_pool == nullptr);
  CHECK(paged16.view(0, 1, 5).num_pages == 2);
  CHECK_THROWS_AS(paged16.k_slot(0, 1, 0), std::logic_error);
  REQUIRE(contiguous16.admit(1, 3, 3));
  CHECK_THROWS_AS(contiguous16.v_slot(0, 1, 0), std::logic_error);
}

TEST_CASE("paged KV: guaranteed admission promises a sequence's maximum, allocates on demand", "[paged]") {
  PagedKvCache kv(tiny(), 10 * 4 * per_token(), 4, 64, PagedKvCache::Admission::Guaranteed);
  REQUIRE(kv.admit(0, 10, 10));       // 5 blocks promised
  REQUIRE(kv.admit(1, 3, 14));        // 5 more
  CHECK_FALSE(kv.admit(2, 1, 1));     // nothing left to promise
  CHECK(kv.usage().reserved_bytes == 0);  // but nothing allocated yet
  REQUIRE(kv.ensure(0, 20));
  REQUIRE(kv.ensure(1, 20));
  CHECK_FALSE(kv.ensure(1, 21));      // beyond its promise
  kv.release(0);
  REQUIRE(kv.admit(2, 1, 1));
}

TEST_CASE("paged KV inside the engine: invariants hold at every call, under preemption", "[paged][continuous][property]") {
  test::OneThread one;
  const ModelShape& shape = tiny();
  CpuBackend backend(synthetic_weights(shape, 11));
  NaiveAttention attention;
  NoDrafter drafter;
  int preempted = 0;
  for (unsigned seed = 1; seed <= 6; ++seed) {
    std::mt19937 rng(seed);
    std::vector<Request> reqs;
    for (int i = 0; i < 10; ++i) {
      Request r{i, 0.0, {}, 1 + static_cast<int>(rng() % 16)};
      r.prompt.resize(1 + rng() % 16);
      for (int& t : r.prompt) t = static_cast<int>(rng() % 256);
      reqs.push_back(r);
    }
    PagedKvCache paged(shape, 48 * per_token(), seed % 2 ? 8 : 4, 32);
    CheckedPaged kv(paged);
    ContinuousScheduler sched(8, 16, seed % 2 ? ContinuousScheduler::Prefill::Chunked
                                              : ContinuousScheduler::Prefill::PrefillFirst);
    const RunRecords rec = run_engine({backend, kv, sched, attention, drafter}, reqs, {});
    for (const auto& r : rec.requests) preempted += r.preemptions;
    for (std::size_t i = 0; i < reqs.size(); ++i) CHECK(rec.output_tokens[i].size() == static_cast<std::size_t>(reqs[i].output_len));
    CHECK(kv.checks > 100);
    CHECK(paged.num_free_blocks() == paged.num_blocks());  // everything given back at the end
    // Internal fragmentation: under one partly filled block per live sequence.
    for (const auto& st : rec.steps)
      CHECK(st.kv_reserved_bytes - st.kv_used_bytes <
            static_cast<std::size_t>(st.running + st.batch_size) * paged.block_size() * per_token());
  }
  CHECK(preempted > 0);
}
