// The Llama forward pass: the stories260K golden output, batching invariance, KV consistency.
#include <fstream>
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <omp.h>

#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "cpu/half.hpp"
#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "model/tokenizer.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"

using namespace ablate;

namespace {

// shared/models/README.md: llama2.c's own test expectation for greedy decoding from BOS.
const char* kStoriesReference =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
    "a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want "
    "to play with your ball, but I can't find it.\"\n"
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so";

std::filesystem::path stories_dir() {
  const auto dir = shared_dir() / "models";
  INFO("reference data folder: " << dir.string() << " (set $ABLATE_SHARED to point elsewhere)");
  REQUIRE(std::filesystem::exists(dir / "stories260K.bin"));
  return dir;
}

std::vector<float> forward_one(CpuBackend& be, KvCache& kv, Attention& att, int seq, int pos0,
                               const std::vector<int>& toks, bool all = false) {
  ForwardBatch b;
  b.chunks.push_back({seq, pos0, toks, all});
  REQUIRE(kv.ensure(seq, pos0 + static_cast<int>(toks.size())));
  auto out = be.forward(b, kv, att);
  kv.set_length(seq, pos0 + static_cast<int>(toks.size()));
  return out;
}

}  // namespace

TEST_CASE("stories260K greedy decoding from BOS reproduces llama2.c's reference text", "[model][golden]") {
  const auto dir = stories_dir();
  CpuBackend backend(load_llama2c((dir / "stories260K.bin").string()));
  const ModelShape& s = backend.shape();
  CHECK(s.dim == 64);
  CHECK(s.n_layers == 5);
  CHECK(s.n_kv_heads == 4);
  CHECK(s.vocab_size == 512);
  Llama2cTokenizer tok((dir / "tok512.bin").string(), s.vocab_size);

  // Through the engine: one request, prompt = BOS, 199 generated tokens = 200 positions.
  ContiguousKvCache kv(s, 64u << 20, s.max_seq_len, ContiguousKvCache::Reserve::MaxSeqLen);
  StaticScheduler sched(1);
  NaiveAttention att;
  NoDrafter none;
  std::vector<Request> reqs{{0, 0.0, {Llama2cTokenizer::kBos}, 199}};
  const RunRecords rec = run_engine({backend, kv, sched, att, none}, reqs, EngineOptions{});
  const auto& ids = rec.output_tokens.at(0);
  REQUIRE(ids.size() == 199);
  const std::vector<int> first{403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338};
  CHECK(std::vector<int>(ids.begin(), ids.begin() + 16) == first);
  CHECK(tok.decode(ids) == kStoriesReference);
}

TEST_CASE("llama2.c tokenizer round-trips text through encode and decode", "[model][tokenizer]") {
  const auto dir = stories_dir();
  Llama2cTokenizer tok((dir / "tok512.bin").string(), 512);
  for (std::string text : {"Once upon a time, there was a little girl named Lily.", "Zürich: 42 € ☃ {x}\n\ttabs"}) {
    const auto ids = tok.encode(text, true, false);
    REQUIRE(ids.front() == Llama2cTokenizer::kBos);
    CHECK(tok.decode(std::vector<int>(ids.begin() + 1, ids.end())) == text);
  }
}

TEST_CASE("a bad llama2.c checkpoint is a clear error naming the file", "[model]") {
  const auto path = std::filesystem::temp_directory_path() / "ablate_truncated.bin";
  {
    std::ifstream in(stories_dir() / "stories260K.bin", std::ios::binary);
    std::vector<char> head(4096);
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    std::ofstream(path, std::ios::binary).write(head.data(), static_cast<std::streamsize>(head.size()));
  }
  CHECK_THROWS_WITH(load_llama2c(path.string()), Catch::Contains(path.string()) && Catch::Contains("bytes"));
  std::filesystem::remove(path);
}

TEST_CASE("synthetic weights are deterministic and keep activations finite at any depth", "[model][synthetic]") {
  ModelShape deep = *find_preset("tiny");
  deep.n_layers = 96;
  const Weights a = synthetic_weights(deep, 7), b = synthetic_weights(deep, 7), c = synthetic_weights(deep, 8);
  CHECK(a.layers[5].w1 == b.layers[5].w1);
  CHECK(a.layers[5].w1 != c.layers[5].w1);
  CpuBackend be(synthetic_weights(deep, 7));
  ContiguousKvCache kv(deep, 16u << 20, 64, ContiguousKvCache::Reserve::MaxSeqLen);
  NaiveAttention att;
  REQUIRE(kv.admit(0, 32, 0));
  std::vector<int> toks(32);
  for (int i = 0; i < 32; ++i) toks[static_cast<std::size_t>(i)] = (i * 37) % deep.vocab_size;
  const auto logits = forward_one(be, kv, att, 0, 0, toks, true);
  float max_abs = 0;
  for (float x : logits) {
    REQUIRE(std::isfinite(x));
    max_abs = std::max(max_abs, std::abs(x));
  }
  CHECK(max_abs < 100.0f);
  CHECK(max_abs > 1e-3f);
}

TEST_CASE("dtype bf16/fp16 on the CPU is the fp32 forward pass of the rounded matrices", "[model][half]") {
  // The property that makes the precision axis clean: a 16-bit run differs from fp32 only by the
  // rounding of its matrices (norms, embeddings, residual stream and KV stay fp32) and, with bf16,
  // of each matmul's input (bf16 x bf16 products, as a tensor-core GEMM; kernels/cpu/kernels.hpp).
  const auto dir = stories_dir();
  const Weights w = load_llama2c((dir / "stories260K.bin").string());
  for (const std::string dtype : {"bf16", "fp16"}) {
    INFO(dtype);
    const auto round = [&](std::vector<float> v) {
      for (float& f : v) f = dtype == "bf16" ? cpu::to_float(cpu::to_bf16(f)) : cpu::to_float(cpu::to_half(f));
      return v;
    };
    Weights rounded = w;
    for (LayerWeights& L : rounded.layers)
      for (auto* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w2, &L.w3}) *m = round(*m);
    rounded.classifier = round(std::vector<float>(w.lm_head(), w.lm_head() + w.token_embedding.size()));
    CpuBackend half(w, dtype), ref(std::move(rounded), "fp32"), full(w, "fp32");
    const ModelShape& s = half.shape();
    std::vector<int> prompt = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};
    std::vector<float> a, b, c;
    for (auto [be, out] : {std::pair{&half, &a}, {&ref, &b}, {&full, &c}}) {
      ContiguousKvCache kv(s, 8u << 20, s.max_seq_len, ContiguousKvCache::Reserve::MaxSeqLen);
      NaiveAttention att;
      REQUIRE(kv.admit(0, static_cast<int>(prompt.size()), 0));
      *out = forward_one(*be, kv, att, 0, 0, prompt, true);
    }
    REQUIRE(a.size() == b.size());
    double worst = 0, drift = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::abs(double(a[i]) - b[i]));
      drift = std::max(drift, std::abs(double(a[i]) - c[i]));
    }
    double scale = 0;
    for (float v : c) scale = std::max(scale, std::abs(double(v)));
    INFO("worst " << worst << " drift " << drift << " logit scale " << scale);
    if (dtype == "fp16") {
      CHECK(worst < 1e-3);  // fp32 summation order only
    } else {
      // The inputs' rounding (2^-9 relative) on top: within a few bf16 ulps of the logits' scale,
      // and the same next token at every position.
      CHECK(worst < scale * 0x1.0p-6);
      for (std::size_t p = 0; p + s.vocab_size <= a.size(); p += static_cast<std::size_t>(s.vocab_size))
        CHECK(std::max_element(a.begin() + long(p), a.begin() + long(p) + s.vocab_size) - a.begin() ==
              std::max_element(b.begin() + long(p), b.begin() + long(p) + s.vocab_size) - b.begin());
    }
    CHECK(drift > 1e-4);  // and the rounding did change the logits (the test can tell)
    CHECK(half.weights_bytes() < full.weights_bytes());
  }
}

TEST_CASE("batched, padded and incremental forward passes give the same logits", "[model][batch]") {
  const ModelShape shape = *find_preset("tiny");
  CpuBackend be(synthetic_weights(shape, 3));
  NaiveAttention att;
  const std::vector<int> a{5, 9, 200, 17, 3, 3, 41}, b{100, 101, 7};

  // Each sequence alone, whole prompt at once.
  ContiguousKvCache kv1(shape, 8u << 20, 64, ContiguousKvCache::Reserve::MaxSeqLen);
  REQUIRE(kv1.admit(0, 7, 0));
  REQUIRE(kv1.admit(1, 3, 0));
  const auto la = forward_one(be, kv1, att, 0, 0, a);
  const auto lb = forward_one(be, kv1, att, 1, 0, b);

  // Both in one ragged batch with padding rows.
  ContiguousKvCache kv2(shape, 8u << 20, 64, ContiguousKvCache::Reserve::PromptPlusMaxNew);
  REQUIRE(kv2.admit(3, 3, 1));  // different reservation sizes and slots than above
  REQUIRE(kv2.admit(2, 7, 5));
  REQUIRE(kv2.ensure(2, 7));
  REQUIRE(kv2.ensure(3, 3));
  ForwardBatch batch;
  batch.chunks.push_back({2, 0, a, false});
  batch.chunks.push_back({3, 0, b, false});
  batch.padding_rows = 4;
  const auto lab = be.forward(batch, kv2, att);
  const std::size_t V = static_cast<std::size_t>(shape.vocab_size);
  REQUIRE(lab.size() == 2 * V);
  for (std::size_t i = 0; i < V; ++i) {
    REQUIRE(lab[i] == Approx(la[i]).margin(1e-5));
    REQUIRE(lab[V + i] == Approx(lb[i]).margin(1e-5));
  }

  // Sequence a token by token through the cache: the last logits match the whole-prompt pass.
  ContiguousKvCache kv3(shape, 8u << 20, 64, ContiguousKvCache::Reserve::MaxSeqLen);
  REQUIRE(kv3.admit(0, 7, 0));
  std::vector<float> last;
  for (int p = 0; p < 7; ++p) last = forward_one(be, kv3, att, 0, p, {a[static_cast<std::size_t>(p)]});
  for (std::size_t i = 0; i < V; ++i) REQUIRE(last[i] == Approx(la[i]).margin(1e-5));
}

TEST_CASE("a forward pass on 2 threads is bitwise repeatable, both attention kernels", "[model][determinism]") {
  // Which thread runs an attention task (dynamic scheduling) must not change its bits: the
  // kernels' scratch is 64-byte aligned on every thread (cpu/scratch.hpp), so Eigen's reductions
  // peel alike. With malloc's 16-byte alignment this test saw other logits on most passes.
  const ModelShape shape = *find_preset("stories260k");
  CpuBackend be(synthetic_weights(shape, 9), "fp32");
  std::vector<int> prompt(69);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>((i * 37 + 11) % static_cast<std::size_t>(shape.vocab_size));
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  NaiveAttention naive;
  FlashAttention flash;
  for (Attention* att : {static_cast<Attention*>(&naive), static_cast<Attention*>(&flash)}) {
    INFO(att->name());
    std::vector<float> first;
    for (int pass = 0; pass < 12; ++pass) {
      std::vector<float> junk(std::size_t(1000 + 999 * pass));  // shift the heap between passes
      ContiguousKvCache kv(shape, 8u << 20, shape.max_seq_len, ContiguousKvCache::Reserve::MaxSeqLen);
      REQUIRE(kv.admit(0, static_cast<int>(prompt.size()), 0));
      const std::vector<float> logits = forward_one(be, kv, *att, 0, 0, prompt, true);
      if (pass == 0) first = logits;
      else CHECK(logits == first);
    }
  }
  omp_set_num_threads(threads);
}
