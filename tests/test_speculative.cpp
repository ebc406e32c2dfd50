// Speculative decoding: greedy outputs identical to non-speculative ones for every drafter, k and
// batching policy (synthetic and stories260K); lossless rejection sampling (chi-square against the
// target's distribution, with a draft deliberately unlike it); rollback leaves both caches as a
// fresh recompute of the accepted prefix would; simulated acceptance runs at alpha.
#include <catch2/catch.hpp>
#include <omp.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "config/load.hpp"
#include "support.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "config/registry.hpp"
#include "experiment/factories.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "kv/paged_kv.hpp"
#include "sched/continuous_scheduler.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/layer_skip_drafter.hpp"
#include "speculative/model_drafter.hpp"
#include "speculative/no_drafter.hpp"
#include "speculative/simulated_drafter.hpp"
#include "speculative/verify.hpp"

using namespace ablate;

namespace {

using test::OneThread;


enum class Batching { Static, PrefillFirst, Chunked };
enum class Layout { Contiguous, Paged };

struct Setup {
  Batching batching = Batching::Static;
  Layout layout = Layout::Contiguous;
  int max_seqs = 3;
  int kv_tokens = 400;  // the target's budget, in tokens (the draft gets the same bytes)
  int max_seq_len = 64;
};

std::string describe(const Setup& s) {
  const char* b[] = {"static", "prefill_first", "chunked"};
  return fmt::format("{} {} max_seqs={} kv_tokens={}", b[static_cast<int>(s.batching)],
                     s.layout == Layout::Paged ? "paged" : "contiguous", s.max_seqs, s.kv_tokens);
}

std::size_t budget_bytes(const ModelShape& target, const Setup& s) {
  return static_cast<std::size_t>(s.kv_tokens) * target.kv_floats_per_token() * sizeof(float);
}

// A cache of the setup's layout for `shape` with `bytes` of budget.
std::unique_ptr<KvCache> make_cache(const ModelShape& shape, std::size_t bytes, const Setup& s) {
  if (s.layout == Layout::Contiguous)
    return std::make_unique<ContiguousKvCache>(shape, bytes, s.max_seq_len, ContiguousKvCache::Reserve::PromptPlusMaxNew);
  return std::make_unique<PagedKvCache>(shape, bytes, 4, s.max_seq_len,
                                        s.batching == Batching::Static ? PagedKvCache::Admission::Guaranteed
                                                                       : PagedKvCache::Admission::OnDemand);
}

std::unique_ptr<Scheduler> make_sched(const Setup& s) {
  if (s.batching == Batching::Static) return std::make_unique<StaticScheduler>(s.max_seqs);
  return std::make_unique<ContinuousScheduler>(s.max_seqs, 32,
                                               s.batching == Batching::Chunked ? ContinuousScheduler::Prefill::Chunked
                                                                               : ContinuousScheduler::Prefill::PrefillFirst);
}

RunRecords run(CpuBackend& target, Drafter& drafter, const std::vector<Request>& reqs, const Setup& s,
               EngineOptions opt = {}) {
  auto kv = make_cache(target.shape(), budget_bytes(target.shape(), s), s);
  auto sched = make_sched(s);
  NaiveAttention attention;
  RunRecords r = run_engine({target, *kv, *sched, attention, drafter}, reqs, opt);
  CHECK(kv->usage().live_sequences == 0);  // everything given back
  return r;
}

enum class Kind { ModelSame, ModelOther, LayerSkip };
const char* kind_name(Kind k) {
  return k == Kind::ModelSame ? "model (the target's weights)" : k == Kind::ModelOther ? "model (other weights)" : "layer_skip";
}

// A drafter of the given kind for `target`, caches of the setup's layout.
std::unique_ptr<AutoregressiveDrafter> make_draft(Kind kind, CpuBackend& target, const std::function<Weights()>& same,
                                                  const std::function<Weights()>& other, const Setup& s, int k,
                                                  const EngineOptions& opt = {}) {
  const DraftOptions o{k, opt.temperature, opt.top_p, opt.seed};
  const std::size_t bytes = budget_bytes(target.shape(), s);
  if (kind == Kind::LayerSkip) {
    const int n = std::max(1, target.shape().n_layers - 1);
    return std::make_unique<LayerSkipDrafter>(target, n, make_cache(layer_skip_shape(target.shape(), n), bytes, s),
                                              std::make_unique<NaiveAttention>(), o);
  }
  auto draft = std::make_unique<CpuBackend>(kind == Kind::ModelSame ? same() : other());
  auto kv = make_cache(draft->shape(), bytes, s);
  return std::make_unique<ModelDrafter>(std::move(draft), std::move(kv), std::make_unique<NaiveAttention>(), o);
}

void check_identity(CpuBackend& target, const std::function<Weights()>& same, const std::function<Weights()>& other,
                    const std::vector<Request>& reqs) {
  NoDrafter none;
  const auto reference = run(target, none, reqs, Setup{Batching::Static, Layout::Contiguous, 1}).output_tokens;
  const Setup setups[] = {
      {Batching::Static, Layout::Contiguous, 3},
      {Batching::Static, Layout::Paged, 4},
      {Batching::PrefillFirst, Layout::Contiguous, 4},
      {Batching::Chunked, Layout::Paged, 4, 70},  // tight: preemption with drafts in flight
  };
  int preempted = 0;
  for (Kind kind : {Kind::ModelSame, Kind::ModelOther, Kind::LayerSkip})
    for (int k : {1, 2, 4})
      for (const Setup& s : setups) {
        INFO(kind_name(kind) << " k=" << k << " " << describe(s));
        auto drafter = make_draft(kind, target, same, other, s, k);
        const RunRecords rec = run(target, *drafter, reqs, s);
        CHECK(rec.output_tokens == reference);
        for (std::size_t i = 0; i < reqs.size(); ++i) CHECK(rec.requests[i].output_len == reqs[i].output_len);
        CHECK(drafter->kv().usage().live_sequences == 0);  // the draft's cache is given back too
        const auto& f = rec.facts;
        CHECK(f.num_drafts > 0);
        CHECK(f.accepted_tokens <= f.draft_tokens);
        CHECK(f.draft_tokens <= f.num_drafts * k);
        CHECK(f.accepted_at_pos.size() <= static_cast<std::size_t>(k));
        for (std::size_t p = 1; p < f.accepted_at_pos.size(); ++p) CHECK(f.accepted_at_pos[p] <= f.accepted_at_pos[p - 1]);
        if (kind == Kind::ModelSame) CHECK(f.accepted_tokens >= f.draft_tokens * 9 / 10);  // the target drafting itself
        for (const auto& q : rec.requests) preempted += q.preemptions;
        const std::size_t per_token = static_cast<std::size_t>(target.shape().kv_floats_per_token()) * sizeof(float);
        for (const auto& st : rec.steps) {  // memory as the forward pass held it, drafts included
          if (s.batching != Batching::Static) CHECK(st.prefill_tokens + st.decode_tokens <= 32);  // drafts in the budget
          CHECK(st.kv_used_bytes == static_cast<std::size_t>(st.kv_tokens_stored) * per_token);
          CHECK(st.kv_used_bytes <= st.kv_reserved_bytes);
          if (s.layout == Layout::Paged) CHECK(st.kv_reserved_bytes == static_cast<std::size_t>(st.kv_blocks_allocated) * 4 * per_token);
        }
      }
  CHECK(preempted > 0);  // the tight continuous setup preempted sequences with drafts in flight
}

}  // namespace

TEST_CASE("greedy speculative decoding emits the non-speculative tokens: synthetic tiny", "[speculative][greedy]") {
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend target(synthetic_weights(shape, 11));
  const auto reqs = test::random_requests(1, 6, shape.vocab_size, 10, 24, 0.0, 4);
  check_identity(target, [&] { return synthetic_weights(shape, 11); }, [&] { return synthetic_weights(shape, 12); }, reqs);
}

TEST_CASE("greedy speculative decoding emits the non-speculative tokens: stories260K", "[speculative][greedy]") {
  OneThread one_thread;
  const auto path = shared_dir() / "models" / "stories260K.bin";
  INFO("reference data: " << path.string() << " (set $ABLATE_SHARED to point elsewhere)");
  REQUIRE(std::filesystem::exists(path));
  CpuBackend target(load_llama2c(path.string()));
  const ModelShape shape = target.shape();
  auto reqs = test::random_requests(4, 5, shape.vocab_size, 8, 30, 0.0, 8);
  for (auto& r : reqs) r.prompt.front() = 1;  // BOS first, as the model was trained
  check_identity(target, [&] { return load_llama2c(path.string()); },
                 [&] { return synthetic_weights(*find_preset("stories260k"), 5); }, reqs);
}

TEST_CASE("a request that reaches EOS inside an accepted draft stops there, as without speculation",
          "[speculative][greedy]") {
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend target(synthetic_weights(shape, 11));
  const auto reqs = test::random_requests(7, 6, shape.vocab_size, 10, 24, 0.0, 20);
  NoDrafter none;
  const Setup s{Batching::Static, Layout::Paged, 3};
  // An "EOS" that greedy decoding emits part-way through some request.
  const auto plain = run(target, none, reqs, s).output_tokens;
  EngineOptions opt;
  opt.eos_token = plain[0][plain[0].size() / 2];
  const auto reference = run(target, none, reqs, s, opt).output_tokens;
  REQUIRE(reference[0].size() < plain[0].size());
  for (int k : {2, 4}) {
    INFO("k " << k);
    auto drafter = make_draft(Kind::ModelSame, target, [&] { return synthetic_weights(shape, 11); }, {}, s, k, opt);
    const RunRecords rec = run(target, *drafter, reqs, s, opt);
    CHECK(rec.output_tokens == reference);
    CHECK(rec.facts.accepted_tokens > 0);
    for (std::size_t i = 0; i < reqs.size(); ++i)
      CHECK(rec.requests[i].output_len == static_cast<int>(reference[i].size()));
  }
}

TEST_CASE("layer_skip on stories260K accepts some drafts and rejects others", "[speculative][greedy]") {
  OneThread one_thread;
  // The identity tests pass trivially if every draft is rejected (or accepted): a real draft from
  // the target's own first layers must land in between, so both paths ran.
  const auto path = shared_dir() / "models" / "stories260K.bin";
  REQUIRE(std::filesystem::exists(path));
  CpuBackend target(load_llama2c(path.string()));
  auto reqs = test::random_requests(4, 4, target.shape().vocab_size, 8, 30, 0.0, 30);
  for (auto& r : reqs) r.prompt.front() = 1;
  const Setup s{Batching::Static, Layout::Paged, 4};
  auto drafter = make_draft(Kind::LayerSkip, target, {}, {}, s, 4);
  const RunRecords rec = run(target, *drafter, reqs, s);
  const double rate = static_cast<double>(rec.facts.accepted_tokens) / static_cast<double>(rec.facts.draft_tokens);
  INFO("acceptance rate " << rate);
  CHECK(rate > 0.05);
  CHECK(rate < 0.95);
}

TEST_CASE("after a rollback the next logits equal a fresh recompute of the accepted prefix", "[speculative][rollback]") {
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend be(synthetic_weights(shape, 21));
  NaiveAttention att;
  const std::vector<int> prompt{1, 7, 42, 9, 200, 3, 17};
  const std::vector<int> draft{5, 6, 7, 8, 9};  // verified with the last prompt token: 6 rows
  const auto forward = [&](KvCache& kv, int seq, int pos0, std::span<const int> toks, bool all) {
    ForwardBatch b;
    b.chunks.push_back({seq, pos0, toks, all});
    REQUIRE(kv.ensure(seq, pos0 + static_cast<int>(toks.size())));
    std::vector<float> out = be.forward(b, kv, att);
    kv.set_length(seq, pos0 + static_cast<int>(toks.size()));
    return out;
  };
  for (bool paged : {false, true})
    for (int accepted = 0; accepted <= 5; ++accepted) {
      INFO((paged ? "paged" : "contiguous") << " accepted " << accepted);
      const std::size_t bytes = 256 * shape.kv_floats_per_token() * sizeof(float);
      std::unique_ptr<KvCache> kv = paged ? std::unique_ptr<KvCache>(std::make_unique<PagedKvCache>(shape, bytes, 4, 64))
                                          : std::make_unique<ContiguousKvCache>(shape, bytes, 64,
                                                                                ContiguousKvCache::Reserve::MaxSeqLen);
      REQUIRE(kv->admit(0, 16, 16));
      const int P = static_cast<int>(prompt.size());
      forward(*kv, 0, 0, std::span<const int>(prompt).first(P - 1), false);
      std::vector<int> verify{prompt.back()};
      verify.insert(verify.end(), draft.begin(), draft.end());
      forward(*kv, 0, P - 1, verify, true);  // writes K/V for all 5 drafts
      const int keep = P + accepted;
      kv->truncate(0, keep);
      kv->set_length(0, keep);
      CHECK(kv->length(0) == keep);
      const auto u = kv->usage();
      CHECK(u.tokens_stored == keep);
      if (paged) CHECK(u.blocks_allocated == (keep + 3) / 4);  // tail blocks freed
      const int next = 77;
      const auto after = forward(*kv, 0, keep, std::vector<int>{next}, false);

      std::vector<int> all(prompt);
      all.insert(all.end(), draft.begin(), draft.begin() + accepted);
      all.push_back(next);
      ContiguousKvCache fresh(shape, bytes, 64, ContiguousKvCache::Reserve::MaxSeqLen);
      REQUIRE(fresh.admit(0, 16, 16));
      const auto expect = forward(fresh, 0, 0, all, false);
      REQUIRE(after.size() == expect.size());
      float worst = 0;
      for (std::size_t i = 0; i < after.size(); ++i) worst = std::max(worst, std::abs(after[i] - expect[i]));
      CHECK(worst < 1e-4f);
      CHECK(Sampler::argmax(after) == Sampler::argmax(expect));
    }
}

TEST_CASE("a drafter after rollback proposes what a fresh drafter proposes for the accepted prefix", "[speculative][rollback]") {
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend target(synthetic_weights(shape, 11));
  for (Kind kind : {Kind::ModelOther, Kind::LayerSkip})
    for (bool paged : {false, true}) {
      INFO(kind_name(kind) << (paged ? " paged" : " contiguous"));
      const Setup s{Batching::Static, paged ? Layout::Paged : Layout::Contiguous, 1};
      const auto other = [&] { return synthetic_weights(shape, 12); };
      auto a = make_draft(kind, target, {}, other, s, 4);
      Request req{0, 0.0, {3, 1, 4, 1, 5, 9, 2, 6}, 40};
      Sequence seq;
      seq.request = &req;
      seq.tokens = req.prompt;
      Sequence* one[] = {&seq};
      const auto d1 = a->propose(one);  // drafts 4 tokens after the prompt
      REQUIRE(d1[0].tokens.size() == 4);
      // The target accepted 2 drafts and sent its own token after them.
      seq.tokens.insert(seq.tokens.end(), d1[0].tokens.begin(), d1[0].tokens.begin() + 2);
      a->rollback(seq, static_cast<int>(seq.tokens.size()));
      seq.tokens.push_back((d1[0].tokens[2] + 1) % shape.vocab_size);
      const auto d2 = a->propose(one);
      CHECK(a->kv().length(0) == static_cast<int>(seq.tokens.size()) + 3);  // caught up, then 3 drafts fed back
      auto b = make_draft(kind, target, {}, other, s, 4);
      CHECK(b->propose(one)[0].tokens == d2[0].tokens);
      a->release(seq);
      CHECK(a->kv().usage().live_sequences == 0);
    }
}

namespace {

// Pearson chi-square of counts against probabilities, merging cells expected below 5 into one.
// Returns {statistic, degrees of freedom}.
std::pair<double, int> chi_square(const std::vector<long long>& counts, const std::vector<double>& probs) {
  long long n = 0;
  for (auto c : counts) n += c;
  double stat = 0, small_obs = 0, small_exp = 0;
  int cells = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    const double e = probs[i] * static_cast<double>(n);
    if (e < 5) {
      small_obs += static_cast<double>(counts[i]);
      small_exp += e;
      continue;
    }
    stat += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
    ++cells;
  }
  if (small_exp > 0) {
    stat += (small_obs - small_exp) * (small_obs - small_exp) / std::max(small_exp, 1e-9);
    ++cells;
  }
  return {stat, cells - 1};
}

// Chi-square critical value at p = 0.001 (Wilson-Hilferty).
double chi_square_crit(int df) {
  const double z = 3.0902, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

}  // namespace

TEST_CASE("rejection sampling emits the target's distribution whatever the draft's", "[speculative][sampling]") {
  OneThread one_thread;
  const int V = 6;
  // Target rows p0, p1, p2 and a draft deliberately unlike them (mass where p has little, none
  // on a token p likes).
  const std::vector<float> p = {0.40f, 0.25f, 0.15f, 0.10f, 0.07f, 0.03f,   //
                                0.05f, 0.05f, 0.10f, 0.20f, 0.30f, 0.30f,   //
                                0.30f, 0.30f, 0.10f, 0.10f, 0.10f, 0.10f};
  const std::vector<float> q = {0.02f, 0.08f, 0.10f, 0.30f, 0.50f, 0.00f,   //
                                0.50f, 0.30f, 0.10f, 0.05f, 0.03f, 0.02f};
  std::mt19937_64 rng(1234);
  const int N = 200000;
  std::vector<long long> first(V), second(V), third(V), naive(V);
  for (int t = 0; t < N; ++t) {
    const std::vector<int> draft = {sample_from(std::span<const float>(q).first(V), rng),
                                    sample_from(std::span<const float>(q).subspan(V, V), rng)};
    const Verdict v = rejection_sample(p, q, draft, V, rng);
    REQUIRE(v.accepted >= 0);
    REQUIRE(v.accepted <= 2);
    std::vector<int> emitted(draft.begin(), draft.begin() + v.accepted);
    emitted.push_back(v.token);
    ++first[static_cast<std::size_t>(emitted[0])];
    if (emitted.size() > 1) ++second[static_cast<std::size_t>(emitted[1])];
    if (emitted.size() > 2) ++third[static_cast<std::size_t>(emitted[2])];
    ++naive[static_cast<std::size_t>(draft[0])];  // accepting every draft: q, not p
  }
  const auto row = [&](int r) {
    return std::vector<double>(p.begin() + r * V, p.begin() + (r + 1) * V);
  };
  for (auto [name, counts, r] : {std::tuple{"first", &first, 0}, {"second", &second, 1}, {"third", &third, 2}}) {
    const auto [stat, df] = chi_square(*counts, row(r));
    INFO(name << " emitted token: chi2 " << stat << " df " << df << " crit " << chi_square_crit(df));
    CHECK(df == V - 1);
    CHECK(stat < chi_square_crit(df));
  }
  const auto [bad, bad_df] = chi_square(naive, row(0));
  CHECK(bad > 100 * chi_square_crit(bad_df));  // the test can tell the draft's distribution apart
  // Acceptance at position 0 is sum_x min(p, q) = 1 - TV(p, q).
  double overlap = 0;
  for (int x = 0; x < V; ++x) overlap += std::min(p[static_cast<std::size_t>(x)], q[static_cast<std::size_t>(x)]);
  long long accepted0 = 0;
  for (int x = 0; x < V; ++x) accepted0 += second[static_cast<std::size_t>(x)];
  CHECK(static_cast<double>(accepted0) / N == Approx(overlap).margin(0.01));
}

TEST_CASE("temperature 1 speculative decoding samples the target's distribution (tiny vocabulary, engine)",
          "[speculative][sampling]") {
  OneThread one_thread;
  // A model with 8 tokens; the draft has other weights, so q differs from p. Exact marginals of the
  // 2nd and 3rd generated tokens by enumeration; the speculative engine's samples against them.
  ModelShape shape{"micro", 32, 64, 2, 4, 2, 8, 64, 10000.f, 1e-5f, true, false, {}};
  CpuBackend target(synthetic_weights(shape, 31));
  const std::vector<int> prompt{1, 2, 3};
  NaiveAttention att;
  const auto probs_after = [&](const std::vector<int>& toks) {
    ContiguousKvCache kv(shape, 64 * shape.kv_floats_per_token() * sizeof(float), 16, ContiguousKvCache::Reserve::MaxSeqLen);
    REQUIRE(kv.admit(0, 8, 8));
    REQUIRE(kv.ensure(0, static_cast<int>(toks.size())));
    ForwardBatch b;
    b.chunks.push_back({0, 0, toks, false});
    const auto logits = target.forward(b, kv, att);
    std::vector<float> pr(8);
    Sampler(1.0, 1.0).probabilities(logits, pr);
    return pr;
  };
  std::vector<double> m2(8, 0.0), m3(8, 0.0);
  const auto p1 = probs_after(prompt);
  for (int a = 0; a < 8; ++a) {
    auto pa = prompt;
    pa.push_back(a);
    const auto p2 = probs_after(pa);
    for (int b = 0; b < 8; ++b) {
      m2[static_cast<std::size_t>(b)] += p1[static_cast<std::size_t>(a)] * p2[static_cast<std::size_t>(b)];
      auto pb = pa;
      pb.push_back(b);
      const auto p3 = probs_after(pb);
      for (int c = 0; c < 8; ++c)
        m3[static_cast<std::size_t>(c)] +=
            p1[static_cast<std::size_t>(a)] * p2[static_cast<std::size_t>(b)] * p3[static_cast<std::size_t>(c)];
    }
  }
  std::vector<Request> reqs(3000);
  for (int i = 0; i < static_cast<int>(reqs.size()); ++i) reqs[static_cast<std::size_t>(i)] = {i, 0.0, prompt, 4};
  const Setup s{Batching::PrefillFirst, Layout::Paged, 64, 64 * 8, 16};
  EngineOptions opt;
  opt.temperature = 1.0;
  opt.seed = 99;
  auto drafter = make_draft(Kind::ModelOther, target, {}, [&] { return synthetic_weights(shape, 32); }, s, 2, opt);
  const RunRecords rec = run(target, *drafter, reqs, s, opt);
  std::vector<long long> c2(8), c3(8);
  for (const auto& out : rec.output_tokens) {
    REQUIRE(out.size() == 4);
    ++c2[static_cast<std::size_t>(out[1])];
    ++c3[static_cast<std::size_t>(out[2])];
  }
  const double rate = static_cast<double>(rec.facts.accepted_tokens) / static_cast<double>(rec.facts.draft_tokens);
  INFO("acceptance rate " << rate);
  CHECK(rate > 0.05);  // the draft differs from the target: both acceptance and rejection ran
  CHECK(rate < 0.95);
  for (auto [name, counts, m] : {std::tuple{"2nd", &c2, &m2}, {"3rd", &c3, &m3}}) {
    const auto [stat, df] = chi_square(*counts, *m);
    INFO(name << " token: chi2 " << stat << " df " << df << " crit " << chi_square_crit(df));
    CHECK(df >= 3);
    CHECK(stat < chi_square_crit(df));
  }
}

TEST_CASE("simulated acceptance runs at alpha per position and is labelled not lossless", "[speculative][simulated]") {
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend target(synthetic_weights(shape, 11));
  const auto reqs = test::random_requests(8, 8, shape.vocab_size, 8, 400, 0.0, 400);
  const Setup s{Batching::Static, Layout::Contiguous, 8, 8 * 420, 420};
  for (double alpha : {0.5, 0.8})
    for (int k : {2, 4}) {
      INFO("alpha " << alpha << " k " << k);
      SimulatedDrafter drafter(make_draft(Kind::ModelOther, target, {}, [&] { return synthetic_weights(shape, 12); }, s, k),
                               alpha);
      CHECK_FALSE(drafter.lossless());
      const RunRecords rec = run(target, drafter, reqs, s);
      for (std::size_t i = 0; i < reqs.size(); ++i) CHECK(rec.output_tokens[i].size() == 400u);
      const auto& f = rec.facts;
      CHECK_FALSE(f.lossless);
      const double drafts = static_cast<double>(f.num_drafts);
      CHECK(static_cast<double>(f.accepted_at_pos[0]) / drafts == Approx(alpha).margin(0.04));
      CHECK(static_cast<double>(f.accepted_at_pos[1]) / static_cast<double>(f.accepted_at_pos[0]) ==
            Approx(alpha).margin(0.05));
      const double expected = (1 - std::pow(alpha, k + 1)) / (1 - alpha);
      CHECK(1.0 + static_cast<double>(f.accepted_tokens) / drafts == Approx(expected).epsilon(0.05));
    }
}

TEST_CASE("KV memory per step is recorded at the forward pass, drafted tokens included", "[speculative][kv]") {
  // One sequence alone: the tokens the cache holds at the forward pass, minus the tokens the step
  // runs, is where the step starts; it only grows. Recorded after rejected drafts roll back (the
  // old behaviour), that difference shrinks after every rejection.
  OneThread one_thread;
  const ModelShape shape = *find_preset("tiny");
  CpuBackend target(synthetic_weights(shape, 11));
  const auto reqs = test::random_requests(5, 1, shape.vocab_size, 8, 200, 0.0, 200);
  const Setup s{Batching::Static, Layout::Paged, 1, 420, 420};
  SimulatedDrafter drafter(make_draft(Kind::ModelOther, target, {}, [&] { return synthetic_weights(shape, 12); }, s, 8),
                           0.5);
  const RunRecords rec = run(target, drafter, reqs, s);
  REQUIRE(rec.facts.num_drafts > 0);
  REQUIRE(rec.facts.accepted_tokens < rec.facts.draft_tokens);  // some drafts were rejected
  long long start = -1;
  int most_tokens = 0;
  for (const auto& st : rec.steps) {
    const long long here = st.kv_tokens_stored - st.prefill_tokens - st.decode_tokens;
    INFO("step " << st.step);
    CHECK(here > start);
    start = here;
    most_tokens = std::max(most_tokens, st.decode_tokens);
    CHECK(st.running_at_forward == 1);
  }
  CHECK(rec.steps.front().kv_tokens_stored == static_cast<long long>(reqs[0].prompt.size()));
  CHECK(most_tokens == 9);  // 1 + k drafted tokens were held at once
}

TEST_CASE("make_drafter builds every registered drafter from a config", "[speculative][config]") {
  OneThread one_thread;
  ExperimentConfig cfg;
  cfg.model.preset = "stories260k";
  cfg.max_seq_len = 64;
  auto target = make_backend(cfg);
  for (const char* name : {"none", "model", "layer_skip", "simulated"}) {
    INFO(name);
    CHECK(is_implemented("speculative.draft", name));
    cfg.speculative.draft = name;
    cfg.speculative.k = 3;
    cfg.speculative.draft_preset = std::string(name) == "model" || std::string(name) == "simulated" ? "stories260k" : "";
    cfg.speculative.draft_layers = 2;
    const auto d = make_drafter(cfg, *target);
    CHECK(d->name() == name);
    CHECK(d->k() == (std::string(name) == "none" ? 0 : 3));
    CHECK(d->lossless() == (std::string(name) != "simulated"));
  }
}

TEST_CASE("a checkpoint as the draft: stories260K drafting for itself is lossless and accepted", "[speculative][config]") {
  OneThread one_thread;
  const std::string bin = (shared_dir() / "models" / "stories260K.bin").string();
  REQUIRE(std::filesystem::exists(bin));
  const auto yaml = [&](const std::string& spec) {
    return "model: {source: llama2c, path: " + bin + "}\nmax_seq_len: 64\nkv: {memory_mb: 4}\nworkload: {prompt_len: 8, output_len: 24}\nspeculative: " + spec + "\n";
  };
  const ExperimentConfig cfg = load_experiment_text(yaml("{draft: model, k: 3, draft_model: " + bin + "}"), "d.yaml")
                                   .points.at(0).config;
  CHECK(cfg.speculative.draft_model == bin);
  auto target = make_backend(cfg);
  auto drafter = make_drafter(cfg, *target);
  NoDrafter none;
  const auto reqs = test::random_requests(2, 4, target->shape().vocab_size, 6, 24, 0.0, 12);
  const auto run_with = [&](Drafter& d) {
    auto kv = make_kv_cache(cfg, *target);
    auto sched = make_scheduler(cfg);
    auto att = make_attention(cfg);
    return run_engine({*target, *kv, *sched, *att, d}, reqs, {});
  };
  const RunRecords plain = run_with(none), spec = run_with(*drafter);
  CHECK(spec.output_tokens == plain.output_tokens);
  CHECK(spec.facts.num_drafts > 0);
  CHECK(spec.facts.accepted_tokens == spec.facts.draft_tokens);  // the same weights: every draft accepted

  // Errors: a missing file, and a preset and a checkpoint together.
  CHECK_THROWS_WITH(load_experiment_text(yaml("{draft: model, draft_model: /nonexistent.bin}"), "d.yaml"),
                    Catch::Contains("speculative.draft_model: file not found: /nonexistent.bin"));
  CHECK_THROWS_WITH(load_experiment_text(yaml("{draft: model, draft_preset: stories260k, draft_model: " + bin + "}"), "d.yaml"),
                    Catch::Contains("not both"));
}
