// Continuous batching: every request finishes exactly once with exactly its output length under
// every scheduler and KV layout (tight budgets, preemption included), greedy outputs identical to
// the unbatched baseline, the shape of prefill_first and chunked steps, chunked prefill logits.
#include <catch2/catch.hpp>

#include <array>
#include <memory>
#include <random>
#include <set>

#include <fmt/format.h>
#include <omp.h>

#include "support.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "sched/continuous_scheduler.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

using namespace ablate;

namespace {


enum class Batching { Static, PrefillFirst, Chunked };
enum class Layout { Contiguous, Paged };

struct Setup {
  Batching batching = Batching::Chunked;
  Layout layout = Layout::Paged;
  int max_seqs = 8;         // static: max_batch; continuous: max_num_seqs
  int max_tokens = 64;      // continuous: max_batched_tokens
  int block_size = 4;       // paged
  int kv_tokens = 200;      // the budget, in tokens
  int max_seq_len = 32;
};

std::string describe(const Setup& s) {
  const char* b[] = {"static", "prefill_first", "chunked"};
  return fmt::format("{} {} max_seqs={} max_tokens={} block={} kv_tokens={}", b[static_cast<int>(s.batching)],
                     s.layout == Layout::Paged ? "paged" : "contiguous", s.max_seqs, s.max_tokens, s.block_size,
                     s.kv_tokens);
}

struct Rig {
  ModelShape shape = *find_preset("tiny");
  CpuBackend backend{synthetic_weights(shape, 11)};
  NaiveAttention attention;
  NoDrafter drafter;

  std::unique_ptr<KvCache> kv_cache(const Setup& s) const {
    const auto bytes = static_cast<std::size_t>(s.kv_tokens) * shape.kv_floats_per_token() * sizeof(float);
    if (s.layout == Layout::Contiguous)
      return std::make_unique<ContiguousKvCache>(shape, bytes, s.max_seq_len,
                                                 ContiguousKvCache::Reserve::PromptPlusMaxNew);
    return std::make_unique<PagedKvCache>(shape, bytes, s.block_size, s.max_seq_len,
                                          s.batching == Batching::Static ? PagedKvCache::Admission::Guaranteed
                                                                         : PagedKvCache::Admission::OnDemand);
  }
  static std::unique_ptr<Scheduler> scheduler(const Setup& s) {
    if (s.batching == Batching::Static) return std::make_unique<StaticScheduler>(s.max_seqs);
    return std::make_unique<ContinuousScheduler>(s.max_seqs, s.max_tokens,
                                                 s.batching == Batching::Chunked
                                                     ? ContinuousScheduler::Prefill::Chunked
                                                     : ContinuousScheduler::Prefill::PrefillFirst);
  }
  RunRecords run(const std::vector<Request>& reqs, const Setup& s) {
    auto kv = kv_cache(s);
    auto sched = scheduler(s);
    return run_engine({backend, *kv, *sched, attention, drafter}, reqs, {});
  }
};

using test::OneThread;

// Everything a correct run must satisfy, whatever the policy.
void check_run(const std::vector<Request>& reqs, const RunRecords& rec, const Setup& s,
               const std::vector<std::vector<int>>& reference) {
  INFO(describe(s));
  REQUIRE(rec.requests.size() == reqs.size());
  std::set<int> ids;
  int preemptions = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const auto& r = rec.requests[i];
    ids.insert(r.request_id);
    preemptions += r.preemptions;
    CHECK(r.output_len == reqs[i].output_len);
    CHECK(rec.output_tokens[i].size() == static_cast<std::size_t>(reqs[i].output_len));
    CHECK(r.itl_s.size() == static_cast<std::size_t>(reqs[i].output_len - 1));  // one emission per token
    CHECK(r.first_scheduled_s >= r.arrival_s);
    CHECK(r.first_token_s >= r.first_scheduled_s);
    CHECK(r.last_token_s >= r.first_token_s);
  }
  CHECK(ids.size() == reqs.size());
  CHECK(rec.output_tokens == reference);  // greedy: preemption, chunking and layout change nothing
  int step_preemptions = 0;
  for (const auto& st : rec.steps) {
    step_preemptions += st.preempted;
    CHECK(st.kv_reserved_bytes <= rec.facts.kv_capacity_bytes);
    CHECK(st.kv_used_bytes <= st.kv_reserved_bytes);
    CHECK(st.batch_size <= s.max_seqs);
    if (s.batching == Batching::Chunked) CHECK(st.prefill_tokens + st.decode_tokens <= s.max_tokens);
    if (s.batching == Batching::PrefillFirst) {
      CHECK((st.prefill_seqs == 0 || st.decode_seqs == 0));  // a step prefills or decodes, never both
      if (st.batch_size > 1) CHECK(st.prefill_tokens + st.decode_tokens <= s.max_tokens);
    }
    if (s.layout == Layout::Paged) {
      const std::size_t per_token = static_cast<std::size_t>(find_preset("tiny")->kv_floats_per_token()) * sizeof(float);
      CHECK(st.kv_used_bytes == static_cast<std::size_t>(st.kv_tokens_stored) * per_token);
      CHECK(st.kv_reserved_bytes == static_cast<std::size_t>(st.kv_blocks_allocated) * s.block_size * per_token);
    }
  }
  CHECK(step_preemptions == preemptions);
  if (s.batching == Batching::Static || s.layout == Layout::Contiguous) CHECK(preemptions == 0);
  // peak_concurrency: the most unfinished sequences holding KV at a forward pass, never fewer
  // than the batch's real rows.
  int peak = 0, peak_batch = 0;
  for (const auto& st : rec.steps) {
    CHECK(st.running_at_forward >= st.prefill_seqs + st.decode_seqs);
    CHECK(st.running_at_forward <= s.max_seqs);
    peak = std::max(peak, st.running_at_forward);
    peak_batch = std::max(peak_batch, st.batch_size);
  }
  CHECK(rec.facts.peak_concurrency == peak);
  CHECK(rec.facts.peak_batch_size == peak_batch);
}

}  // namespace

TEST_CASE("every scheduler and KV layout finishes every request exactly once, tight budgets, many seeds",
          "[continuous][property]") {
  OneThread one;
  Rig rig;
  int preempted_runs = 0, runs = 0;
  for (unsigned seed = 1; seed <= 40; ++seed) {
    std::mt19937 rng(seed * 7919u);
    // Offline, or bursty arrivals over ~10 ms; prompts up to 20 tokens, outputs up to 12: each fits max_seq_len 32.
    const auto reqs = test::random_requests(seed, 10, rig.shape.vocab_size, 20, 12, seed % 2 ? 0.01 : 0.0);
    Setup ref;
    ref.batching = Batching::Static;
    ref.layout = Layout::Contiguous;
    ref.max_seqs = 1;
    const auto reference = rig.run(reqs, ref).output_tokens;
    for (Batching b : {Batching::Static, Batching::PrefillFirst, Batching::Chunked})
      for (Layout l : {Layout::Contiguous, Layout::Paged}) {
        Setup s;
        s.batching = b;
        s.layout = l;
        s.max_seqs = 1 + static_cast<int>(rng() % 8);
        s.max_tokens = 4 + static_cast<int>(rng() % 40);       // often below a prompt: chunking, lone prefills
        s.block_size = std::array{1, 2, 4, 8, 16}[rng() % 5];
        s.kv_tokens = 32 + static_cast<int>(rng() % 60);       // one to three longest sequences
        INFO("seed " << seed);
        const RunRecords rec = rig.run(reqs, s);
        check_run(reqs, rec, s, reference);
        ++runs;
        for (const auto& r : rec.requests)
          if (r.preemptions > 0) {
            ++preempted_runs;
            break;
          }
      }
  }
  INFO(preempted_runs << " of " << runs << " runs preempted");
  CHECK(preempted_runs >= 10);  // the recompute path really ran
}

TEST_CASE("peak_concurrency counts sequences holding KV, not the largest forward batch", "[continuous]") {
  // prefill_first with a 2-token budget runs small batches while all 8 sequences hold KV.
  OneThread one_thread;
  Rig rig;
  std::vector<Request> reqs(8);
  for (int i = 0; i < 8; ++i) {
    reqs[static_cast<std::size_t>(i)].id = i;
    reqs[static_cast<std::size_t>(i)].prompt.assign(8, 3 + i);
    reqs[static_cast<std::size_t>(i)].output_len = 8;
  }
  Setup s;
  s.batching = Batching::PrefillFirst;
  s.max_seqs = 8;
  s.max_tokens = 2;
  s.kv_tokens = 400;
  const RunRecords rec = rig.run(reqs, s);
  CHECK(rec.facts.peak_concurrency == 8);
  CHECK(rec.facts.peak_batch_size == 2);
}

TEST_CASE("a full paged cache preempts the newest sequence, recomputes it and loses nothing", "[continuous][preemption]") {
  OneThread one;
  Rig rig;
  // Eight sequences of up to 8 + 24 tokens in a 64-token pool: they cannot all grow at once.
  std::vector<Request> reqs;
  std::mt19937 rng(3);
  for (int i = 0; i < 8; ++i) {
    Request r{i, 0.0, {}, 24};
    for (int k = 0; k < 8; ++k) r.prompt.push_back(static_cast<int>(rng() % 256));
    reqs.push_back(r);
  }
  Setup ref;
  ref.batching = Batching::Static;
  ref.layout = Layout::Contiguous;
  ref.max_seqs = 1;
  const auto reference = rig.run(reqs, ref).output_tokens;
  for (Batching b : {Batching::PrefillFirst, Batching::Chunked}) {
    Setup s;
    s.batching = b;
    s.max_seqs = 8;
    s.max_tokens = 64;
    s.block_size = 8;
    s.kv_tokens = 64;
    const RunRecords rec = rig.run(reqs, s);
    check_run(reqs, rec, s, reference);
    int preemptions = 0, peak = 0;
    for (const auto& r : rec.requests) preemptions += r.preemptions;
    for (const auto& st : rec.steps) peak = std::max(peak, st.running);
    INFO(describe(s));
    CHECK(preemptions > 0);
    CHECK(peak >= 4);  // paged admits beyond what worst-case reservations (2 x 32) would
    // The victim is the newest: request 0, the oldest, is never preempted.
    CHECK(rec.requests[0].preemptions == 0);
  }
}

TEST_CASE("continuous batching joins and leaves at every step; static waits for the whole batch", "[continuous]") {
  OneThread one;
  Rig rig;
  // Request 0 is long, 1 and 2 short; with two slots, request 2 joins as soon as 1 leaves.
  std::vector<Request> reqs{{0, 0.0, {1, 2, 3}, 10}, {1, 0.0, {4, 5}, 2}, {2, 0.0, {6, 7, 8, 9}, 2}};
  Setup s;
  s.batching = Batching::PrefillFirst;
  s.layout = Layout::Contiguous;
  s.max_seqs = 2;
  const RunRecords cont = rig.run(reqs, s);
  CHECK(cont.requests[2].first_scheduled_s < cont.requests[0].last_token_s);
  // Step 0 prefills 0 and 1; step 1 decodes both (1 ends); step 2 prefills 2 alone.
  REQUIRE(cont.steps.size() >= 3);
  CHECK(cont.steps[0].prefill_seqs == 2);
  CHECK(cont.steps[1].decode_seqs == 2);
  CHECK(cont.steps[2].prefill_seqs == 1);
  CHECK(cont.steps[2].decode_seqs == 0);
  CHECK(cont.steps[2].padding_rows == 0);
  s.batching = Batching::Static;
  const RunRecords stat = rig.run(reqs, s);
  CHECK(stat.requests[2].first_scheduled_s >= stat.requests[0].last_token_s);
  CHECK(cont.steps.size() < stat.steps.size());
}

TEST_CASE("chunked prefill shares steps with decodes, decodes first within the token budget", "[continuous][chunked]") {
  OneThread one;
  Rig rig;
  // Request 0 decodes while request 1's 20-token prompt arrives in chunks of what the budget leaves.
  std::vector<Request> reqs{{0, 0.0, {1, 2}, 12}, {1, 0.0, {}, 3}};
  for (int k = 0; k < 20; ++k) reqs[1].prompt.push_back(10 + k);
  Setup s;
  s.batching = Batching::Chunked;
  s.max_tokens = 6;
  s.max_seqs = 4;
  const RunRecords rec = rig.run(reqs, s);
  // Step 0: 2 prompt tokens of 0 + 4 of 1; then each step 1 decode of 0 first, then what is left
  // of the budget for 1's prompt: 4 + 5 + 5 + 5 + 1 = 20.
  REQUIRE(rec.steps.size() > 4);
  CHECK(rec.steps[0].prefill_tokens == 6);
  CHECK(rec.steps[0].prefill_seqs == 2);
  for (int i = 1; i <= 4; ++i) {
    const auto& st = rec.steps[static_cast<std::size_t>(i)];
    CHECK(st.decode_seqs == 1);
    CHECK(st.decode_tokens == 1);
    CHECK(st.prefill_seqs == 1);
    CHECK(st.prefill_tokens == (i < 4 ? 5 : 1));
  }
  CHECK(rec.requests[1].first_token_s >= rec.steps[4].start_s);  // its first token comes at step 4
  CHECK(rec.requests[1].first_token_s <= rec.steps[5].start_s);
}

TEST_CASE("chunked prefill gives the same logits as whole-prompt prefill, paged or contiguous", "[continuous][chunked][paged]") {
  OneThread one;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend be(synthetic_weights(shape, 5));
  NaiveAttention att;
  std::vector<int> prompt;
  for (int k = 0; k < 37; ++k) prompt.push_back((k * 53 + 7) % shape.vocab_size);
  const std::size_t bytes = 256u * shape.kv_floats_per_token() * sizeof(float);
  const auto run = [&](KvCache& kv, const std::vector<int>& chunks) {
    REQUIRE(kv.admit(0, 37, 0));
    std::vector<float> logits;
    int pos = 0;
    for (int n : chunks) {
      ForwardBatch b;
      b.chunks.push_back({0, pos, std::span<const int>(prompt).subspan(static_cast<std::size_t>(pos), static_cast<std::size_t>(n)), false});
      REQUIRE(kv.ensure(0, pos + n));
      logits = be.forward(b, kv, att);
      pos += n;
      kv.set_length(0, pos);
    }
    REQUIRE(pos == 37);
    return logits;
  };
  ContiguousKvCache whole_kv(shape, bytes, 64, ContiguousKvCache::Reserve::MaxSeqLen);
  const auto whole = run(whole_kv, {37});
  for (int bs : {1, 8, 16}) {
    PagedKvCache paged_whole(shape, bytes, bs, 64);
    const auto pw = run(paged_whole, {37});
    PagedKvCache paged_chunked(shape, bytes, bs, 64);
    const auto pc = run(paged_chunked, {5, 11, 3, 16, 2});
    ContiguousKvCache contiguous_chunked(shape, bytes, 64, ContiguousKvCache::Reserve::MaxSeqLen);
    const auto cc = run(contiguous_chunked, {16, 16, 5});
    REQUIRE(whole.size() == static_cast<std::size_t>(shape.vocab_size));
    for (std::size_t i = 0; i < whole.size(); ++i) {
      INFO("block " << bs << " logit " << i);
      REQUIRE(pw[i] == Approx(whole[i]).margin(1e-5));
      REQUIRE(pc[i] == Approx(whole[i]).margin(1e-5));
      REQUIRE(cc[i] == Approx(whole[i]).margin(1e-5));
    }
  }
}

TEST_CASE("continuous batching on contiguous KV admits only what its reservations fit", "[continuous][contiguous]") {
  OneThread one;
  Rig rig;
  const auto reqs = test::random_requests(4, 12, rig.shape.vocab_size, 10, 10, 0.0);
  Setup s;
  s.batching = Batching::Chunked;
  s.layout = Layout::Contiguous;
  s.max_seqs = 12;
  s.kv_tokens = 64;  // prompt + max new <= 20: at least three, at most 64 / 2 sequences
  const RunRecords rec = rig.run(reqs, s);
  Setup ref;
  ref.batching = Batching::Static;
  ref.layout = Layout::Contiguous;
  ref.max_seqs = 1;
  check_run(reqs, rec, s, rig.run(reqs, ref).output_tokens);
  for (const auto& st : rec.steps) CHECK(st.kv_reserved_bytes <= rec.facts.kv_capacity_bytes);
}
