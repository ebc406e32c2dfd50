// The decode loop with the baselines: every request finishes exactly once, static batching's
// shape, contiguous KV accounting, and outputs that do not depend on batch composition.
#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <set>

#include "support.hpp"
#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "engine/engine.hpp"
#include "base/sampler.hpp"
#include "kv/contiguous_kv.hpp"
#include "sched/continuous_scheduler.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

using namespace ablate;

namespace {


// Naive attention that also records each call's problems (queries, keys) in layer order.
struct RecordingAttention final : Attention {
  NaiveAttention inner;
  std::vector<std::vector<std::pair<int, int>>> calls;
  std::string name() const override { return "naive"; }
  void forward(std::span<const AttentionProblem> problems) override {
    calls.emplace_back();
    for (const auto& p : problems) calls.back().emplace_back(p.n_q, p.kv_len());
    inner.forward(problems);
  }
  std::size_t workspace_bytes(const AttentionProblem& p) const override { return inner.workspace_bytes(p); }
};

struct Rig {
  ModelShape shape = *find_preset("tiny");
  CpuBackend backend{synthetic_weights(shape, 11)};
  RecordingAttention attention;
  NoDrafter drafter;
  RunRecords run(const std::vector<Request>& reqs, int max_batch, double kv_tokens, int max_seq_len,
                 ContiguousKvCache::Reserve reserve, EngineOptions opt = {}) {
    const auto bytes = static_cast<std::size_t>(kv_tokens * shape.kv_floats_per_token() * sizeof(float));
    ContiguousKvCache kv(shape, bytes, max_seq_len, reserve);
    StaticScheduler sched(max_batch);
    return run_engine({backend, kv, sched, attention, drafter}, reqs, opt);
  }
};

}  // namespace

TEST_CASE("static batching finishes every request exactly once with exactly its output length", "[engine][static]") {
  Rig rig;
  for (unsigned seed = 1; seed <= 12; ++seed) {
    const auto reqs = test::random_requests(seed, 10, rig.shape.vocab_size, 20, 12, 0.01);
    const int max_batch = 1 + static_cast<int>(seed % 5);
    const auto reserve = seed % 2 ? ContiguousKvCache::Reserve::MaxSeqLen : ContiguousKvCache::Reserve::PromptPlusMaxNew;
    // Tight budget: room for only two or three longest sequences at once.
    const RunRecords rec = rig.run(reqs, max_batch, 70, 32, reserve);
    INFO("seed " << seed);
    REQUIRE(rec.requests.size() == reqs.size());
    std::set<int> ids;
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      const auto& r = rec.requests[i];
      ids.insert(r.request_id);
      CHECK(r.output_len == reqs[i].output_len);
      CHECK(rec.output_tokens[i].size() == static_cast<std::size_t>(reqs[i].output_len));
      CHECK(r.first_scheduled_s >= r.arrival_s);
      CHECK(r.first_token_s >= r.first_scheduled_s);
      CHECK(r.last_token_s >= r.first_token_s);
      CHECK(r.itl_s.size() == static_cast<std::size_t>(reqs[i].output_len - 1));
    }
    CHECK(ids.size() == reqs.size());
    for (const auto& st : rec.steps) {
      CHECK(st.batch_size <= max_batch);
      CHECK(st.kv_reserved_bytes <= rec.facts.kv_capacity_bytes);
      CHECK(st.kv_used_bytes <= st.kv_reserved_bytes);
    }
  }
}

TEST_CASE("static batching pads prompts to the longest and carries finished members", "[engine][static]") {
  Rig rig;
  std::vector<Request> reqs{{0, 0.0, {1, 2, 3}, 2}, {1, 0.0, {4, 5, 6, 7, 8, 9}, 5}, {2, 0.0, {10}, 1}};
  const RunRecords rec = rig.run(reqs, 2, 64, 32, ContiguousKvCache::Reserve::MaxSeqLen);
  // Batch 1 = requests 0 and 1: prefill pads 3 rows; request 0 is done after 2 tokens and rides
  // along as one padding row for the 3 remaining steps of request 1. Then request 2 alone.
  REQUIRE(rec.steps.size() == 5 + 1);
  CHECK(rec.steps[0].padding_rows == 3);
  CHECK(rec.steps[0].prefill_tokens == 9);
  CHECK(rec.steps[1].padding_rows == 0);
  CHECK(rec.steps[1].decode_seqs == 2);
  for (int s = 2; s <= 4; ++s) {
    CHECK(rec.steps[static_cast<std::size_t>(s)].padding_rows == 1);
    CHECK(rec.steps[static_cast<std::size_t>(s)].decode_seqs == 1);
    // The batch keeps both reservations until its longest member ends.
    CHECK(rec.steps[static_cast<std::size_t>(s)].kv_reserved_bytes ==
          2u * 32u * static_cast<std::size_t>(rig.shape.kv_floats_per_token()) * sizeof(float));
  }
  CHECK(rec.steps[5].batch_size == 1);
  CHECK(rec.requests[2].first_scheduled_s >= rec.requests[1].last_token_s);  // waited for the next batch
  // The finished member's row is real work, as in a padded tensor: at steps 2..4 every layer
  // attends for request 1 (one query over 6 + s keys) and for request 0's padding row (its last
  // position again: one query over its 3 + 2 - 1 = 4 computed tokens).
  const auto& calls = rig.attention.calls;
  const std::size_t layers = static_cast<std::size_t>(rig.shape.n_layers);
  REQUIRE(calls.size() == rec.steps.size() * layers);
  for (int s = 2; s <= 4; ++s)
    CHECK(calls[static_cast<std::size_t>(s) * layers] ==
          std::vector<std::pair<int, int>>{{1, 6 + s}, {1, 4}});
  // Its output is thrown away: the tokens are those of an unpadded run.
  Rig alone;
  Request r1 = reqs[1];
  r1.id = 0;
  const auto solo = alone.run({r1}, 1, 64, 32, ContiguousKvCache::Reserve::MaxSeqLen).output_tokens;
  CHECK(rec.output_tokens[1] == solo[0]);
}

TEST_CASE("greedy outputs do not depend on batch size, arrival pattern or reservation policy", "[engine]") {
  Rig rig;
  const auto reqs = test::random_requests(5, 8, rig.shape.vocab_size, 16, 10, 0.0);
  const auto base = rig.run(reqs, 1, 200, 32, ContiguousKvCache::Reserve::MaxSeqLen).output_tokens;
  CHECK(rig.run(reqs, 8, 200, 32, ContiguousKvCache::Reserve::PromptPlusMaxNew).output_tokens == base);
  CHECK(rig.run(reqs, 3, 64, 32, ContiguousKvCache::Reserve::MaxSeqLen).output_tokens == base);
}

TEST_CASE("temperature sampling is seeded per request", "[engine][sampling]") {
  Rig rig;
  const auto reqs = test::random_requests(9, 6, rig.shape.vocab_size, 8, 12, 0.0);
  EngineOptions hot;
  hot.temperature = 1.0;
  hot.top_p = 0.9;
  hot.seed = 42;
  const auto a = rig.run(reqs, 6, 200, 32, ContiguousKvCache::Reserve::MaxSeqLen, hot).output_tokens;
  const auto b = rig.run(reqs, 2, 200, 32, ContiguousKvCache::Reserve::MaxSeqLen, hot).output_tokens;
  CHECK(a == b);  // same seed, different batching: same tokens
  hot.seed = 43;
  CHECK(rig.run(reqs, 6, 200, 32, ContiguousKvCache::Reserve::MaxSeqLen, hot).output_tokens != a);
  const auto greedy = rig.run(reqs, 6, 200, 32, ContiguousKvCache::Reserve::MaxSeqLen).output_tokens;
  CHECK(greedy != a);
}

namespace {
// The CPU backend, recording each forward_sample call's uniforms by sequence id.
struct SamplingSpy final : Backend {
  CpuBackend& inner;
  std::map<int, std::vector<double>> drawn;  // sequence id -> the uniforms it sampled with, in order
  int unused_rows = 0;                       // rows given 0: a chunk that does not sample, or padding
  explicit SamplingSpy(CpuBackend& b) : inner(b) {}
  std::string name() const override { return inner.name(); }
  std::string device_name() const override { return inner.device_name(); }
  const ModelShape& shape() const override { return inner.shape(); }
  std::size_t weights_bytes() const override { return inner.weights_bytes(); }
  double bits_per_weight() const override { return inner.bits_per_weight(); }
  const std::vector<float>& forward(const ForwardBatch& b, KvCache& kv, Attention& a) override {
    return inner.forward(b, kv, a);
  }
  const std::vector<int>& forward_sample(const ForwardBatch& b, KvCache& kv, Attention& a, const Sampler& sampler,
                                         std::span<const double> uniforms) override {
    REQUIRE(uniforms.size() == static_cast<std::size_t>(b.num_logit_rows()));
    for (std::size_t r = 0; r < uniforms.size(); ++r) {
      if (uniforms[r] == 0.0) ++unused_rows;
      else drawn[b.chunks[r].seq].push_back(uniforms[r]);  // one row a chunk without a draft
    }
    return Backend::forward_sample(b, kv, a, sampler, uniforms);
  }
};
}  // namespace

// A backend that samples elsewhere (the CUDA backend, on the device) takes the uniforms the
// engine draws: each sequence's k-th token must use the k-th draw of its own generator, and no
// other row may consume one (prefill chunks that do not reach the end of the prompt, static
// batching's padding rows), or CPU and GPU runs of one seed would sample different streams.
TEST_CASE("sampling draws each token's uniform from its sequence's generator, in order", "[engine][sampling]") {
  const ModelShape shape = *find_preset("tiny");
  CpuBackend cpu{synthetic_weights(shape, 11)};
  NaiveAttention attention;
  NoDrafter drafter;
  EngineOptions hot;
  hot.temperature = 0.8;
  hot.top_p = 0.9;
  hot.seed = 7;
  const auto reqs = test::random_requests(4, 7, shape.vocab_size, 30, 9, 0.0);
  for (bool chunked : {false, true}) {
    INFO((chunked ? "continuous, chunked prefill of 8 tokens a step" : "static batches of 3, padded"));
    SamplingSpy spy(cpu);
    const auto per_token = static_cast<std::size_t>(shape.kv_floats_per_token()) * sizeof(float);
    ContiguousKvCache kv(shape, 400 * per_token, 64, ContiguousKvCache::Reserve::MaxSeqLen);
    StaticScheduler static_sched(3);
    ContinuousScheduler cont_sched(4, 8, ContinuousScheduler::Prefill::Chunked);
    Scheduler& sched = chunked ? static_cast<Scheduler&>(cont_sched) : static_sched;
    run_engine({spy, kv, sched, attention, drafter}, reqs, hot);
    CHECK(spy.unused_rows > 0);
    for (const Request& r : reqs) {
      INFO("request " << r.id);
      std::mt19937_64 gen = Sampler::generator_for(hot.seed, r.id);
      const std::vector<double>& got = spy.drawn[r.id];
      REQUIRE(got.size() == static_cast<std::size_t>(r.output_len));  // one draw per generated token
      for (double u : got) CHECK(u == Sampler::uniform(gen));
    }
  }
}

TEST_CASE("arrivals are honoured in real time", "[engine]") {
  Rig rig;
  std::vector<Request> reqs{{0, 0.0, {1, 2}, 2}, {1, 0.15, {3, 4}, 2}};
  const RunRecords rec = rig.run(reqs, 4, 64, 32, ContiguousKvCache::Reserve::MaxSeqLen);
  CHECK(rec.requests[1].first_scheduled_s >= 0.15);
  CHECK(rec.facts.run_wall_s >= 0.15);
}

TEST_CASE("contiguous KV reserves first fit, coalesces holes and accounts bytes", "[kv][contiguous]") {
  const ModelShape shape = *find_preset("tiny");
  const std::size_t per_token = static_cast<std::size_t>(shape.kv_floats_per_token()) * sizeof(float);
  ContiguousKvCache kv(shape, 100 * per_token, 40, ContiguousKvCache::Reserve::PromptPlusMaxNew);
  CHECK(kv.capacity_tokens() == 100);
  REQUIRE(kv.admit(0, 10, 20));   // [0, 30)
  REQUIRE(kv.admit(1, 30, 10));   // [30, 70)
  REQUIRE(kv.admit(2, 20, 10));   // [70, 100)
  CHECK_FALSE(kv.admit(3, 1, 1)); // full
  CHECK(kv.usage().reserved_bytes == 100 * per_token);
  kv.set_length(1, 12);
  CHECK(kv.usage().used_bytes == 12 * per_token);
  CHECK_FALSE(kv.ensure(1, 41));
  CHECK(kv.ensure(1, 40));
  kv.release(0);
  kv.release(2);
  CHECK_FALSE(kv.admit(4, 30, 10));  // 60 tokens free but in two holes of 30: external fragmentation
  kv.release(1);
  REQUIRE(kv.admit(4, 30, 10));      // the holes coalesced
  CHECK(kv.view(0, 4, 5).k_pool == kv.k_slot(0, 4, 0));
  kv.release(4);
  CHECK(kv.usage().reserved_bytes == 0);
  CHECK(kv.usage().live_sequences == 0);
}

TEST_CASE("workspace_peak_bytes: the naive score matrix grows with the prompt squared, flash's scratch does not",
          "[engine][memory]") {
  const ModelShape shape = *find_preset("tiny");
  CpuBackend backend{synthetic_weights(shape, 3)};
  const auto peak = [&](Attention& attention, int prompt) {
    ContiguousKvCache kv(shape, 8u << 20, 1024, ContiguousKvCache::Reserve::MaxSeqLen);
    StaticScheduler sched(1);
    NoDrafter drafter;
    Request r;
    r.id = 0;
    r.prompt.assign(static_cast<std::size_t>(prompt), 1);
    r.output_len = 2;
    backend.reset_workspace_peak();
    run_engine({backend, kv, sched, attention, drafter}, {r}, {});
    return backend.workspace_peak_bytes();
  };
  NaiveAttention naive;
  FlashAttention flash;
  const std::size_t n256 = peak(naive, 256), n512 = peak(naive, 512), f256 = peak(flash, 256), f512 = peak(flash, 512);
  // Both hold the same activations; naive adds a prefill score matrix that grows 4x when the
  // prompt doubles, flash a few tiles.
  REQUIRE(n256 > f256);
  REQUIRE(n512 > f512);
  CHECK(n512 - f512 > 3 * (n256 - f256));
  CHECK(f512 < 2.2 * f256);  // activations: linear in the prompt
  CHECK(peak(flash, 256) == f256);  // reset: a run reports its own peak, not an earlier one's
}

TEST_CASE("forward_argmax is forward's logits' argmax per row, and greedy runs take it", "[engine][sampling]") {
  const ModelShape shape = *find_preset("tiny");
  CpuBackend backend{synthetic_weights(shape, 9)};
  NaiveAttention attention;
  ContiguousKvCache kv(shape, 4u << 20, 128, ContiguousKvCache::Reserve::MaxSeqLen);
  REQUIRE(kv.admit(0, 12, 4));
  REQUIRE(kv.ensure(0, 12));
  const std::vector<int> prompt{1, 5, 9, 2, 7, 3, 3, 8, 1, 0, 4, 6};
  ForwardBatch batch;
  batch.chunks.push_back({0, 0, std::span<const int>(prompt), true});  // logits of every row
  const std::vector<float> logits = backend.forward(batch, kv, attention);
  const std::vector<int> ids = backend.forward_argmax(batch, kv, attention);  // the same pass again
  REQUIRE(ids.size() == prompt.size());
  for (std::size_t r = 0; r < ids.size(); ++r)
    CHECK(ids[r] == Sampler::argmax(std::span<const float>(logits).subspan(r * shape.vocab_size, shape.vocab_size)));
}
