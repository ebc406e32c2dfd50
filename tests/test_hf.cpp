// Hugging Face checkpoint folders (model.source: hf): the safetensors reader on hand-built files,
// synthetic Qwen2 and Llama-3-rope-scaling folders against a float64 numpy forward pass, the
// SmolLM2 GGUF written out as an HF folder against the GGUF path, and bad folders as config
// errors. The folders are made at test time by tests/fixtures/hf/make_hf_fixture.py (Debian's
// python3-numpy); the SmolLM2 case needs models/SmolLM2-135M-Instruct.Q4_1.gguf and otherwise
// passes with a "SKIPPED" warning.
#include <catch2/catch.hpp>

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <sys/wait.h>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "engine/engine.hpp"
#include "kv/contiguous_kv.hpp"
#include "model/bpe_tokenizer.hpp"
#include "model/gguf.hpp"
#include "model/hf_checkpoint.hpp"
#include "model/safetensors.hpp"
#include "model/weights.hpp"
#include "sched/static_scheduler.hpp"
#include "speculative/no_drafter.hpp"
#include "support.hpp"
#include "support_model.hpp"

using namespace ablate;
using test::all_logits;
using test::max_abs_diff;
namespace fs = std::filesystem;

namespace {

// A scratch folder, removed at the end of the test.
struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("ablate_test_hf_" + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// Runs make_hf_fixture.py with `args`; its output is shown when it fails.
void make_fixture(const std::string& args, const fs::path& log) {
  const std::string cmd = "/usr/bin/python3 '" + (project_root() / "tests" / "fixtures" / "hf" / "make_hf_fixture.py").string() +
                          "' " + args + " >'" + log.string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  INFO("command: " << cmd << "\noutput:\n" << slurp(log));
  REQUIRE(rc == 0);
}

template <class T>
std::vector<T> as_vec(const YAML::Node& n) {
  std::vector<T> v;
  for (const auto& x : n) v.push_back(x.as<T>());
  return v;
}

ModelConfig hf_config(const fs::path& folder) {
  ModelConfig m;
  m.source = "hf";
  m.path = folder.string();
  return m;
}

// Greedy continuation of `prompt` through the engine (KV cache, one token a step).
std::vector<int> greedy(CpuBackend& be, const std::vector<int>& prompt, int n) {
  ContiguousKvCache kv(be.shape(), std::size_t(64) << 20, static_cast<int>(prompt.size()) + n, ContiguousKvCache::Reserve::MaxSeqLen);
  StaticScheduler sched(1);
  NaiveAttention att;
  NoDrafter none;
  std::vector<Request> reqs{{0, 0.0, prompt, n}};
  return run_engine({be, kv, sched, att, none}, reqs, EngineOptions{}).output_tokens.at(0);
}

// ---------------------------------------------------------------------------------------------
// safetensors files built here

std::vector<std::uint8_t> st_file(const std::string& header, const std::vector<std::uint8_t>& data) {
  // One allocation, filled by copies (GCC 12 misreads inserts after an 8-byte start as overflows).
  std::vector<std::uint8_t> out(8 + header.size() + data.size());
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

std::string st_error(const std::vector<std::uint8_t>& bytes, const std::string& name = "mem.safetensors") {
  try {
    SafetensorsFile f(bytes.data(), bytes.size(), name);
    for (const auto& t : f.tensors()) (void)f.to_float(t);
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "";
}

// A valid file: F32 [2, 2] = 1, -2, 0.5, 3; F16 [3] = 1.5, -2, 65504; BF16 [2] = 1.5, -0.5.
std::vector<std::uint8_t> good_file() {
  std::vector<std::uint8_t> data;
  for (float f : {1.0f, -2.0f, 0.5f, 3.0f}) {
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int i = 0; i < 4; ++i) data.push_back(static_cast<std::uint8_t>(bits >> (8 * i)));
  }
  for (std::uint16_t h : {0x3E00, 0xC000, 0x7BFF, 0x3FC0, 0xBF00}) {
    data.push_back(static_cast<std::uint8_t>(h & 0xFF));
    data.push_back(static_cast<std::uint8_t>(h >> 8));
  }
  return st_file(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"h":{"dtype":"F16","shape":[3],"data_offsets":[16,22]},)"
                 R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[22,26]},"__metadata__":{"format":"pt"}})",
                 data);
}

}  // namespace

TEST_CASE("hf: safetensors: F32, F16 and BF16 tensors read back as their values", "[hf][safetensors]") {
  const auto bytes = good_file();
  SafetensorsFile f(bytes.data(), bytes.size(), "good.safetensors");
  REQUIRE(f.tensors().size() == 3);
  CHECK(f.metadata().at("format") == "pt");
  const auto* a = f.find("a");
  REQUIRE(a);
  CHECK(a->shape == std::vector<std::uint64_t>{2, 2});
  CHECK(f.to_float(*a) == std::vector<float>{1.0f, -2.0f, 0.5f, 3.0f});
  CHECK(f.to_float(*f.find("h")) == std::vector<float>{1.5f, -2.0f, 65504.0f});
  CHECK(f.to_float(*f.find("b")) == std::vector<float>{1.5f, -0.5f});
  CHECK(f.find("nope") == nullptr);
}

TEST_CASE("hf: safetensors: truncated and malformed files are clear errors naming the file and field", "[hf][safetensors]") {
  const auto good = good_file();
  // Every cut of a valid file is an error, never an out-of-bounds read (ASan would see one).
  for (std::size_t n = 0; n < good.size(); ++n) {
    const std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string e = st_error(cut, "cut.safetensors");
    INFO("cut at " << n << ": " << e);
    REQUIRE_THAT(e, Catch::StartsWith("cut.safetensors: safetensors "));
  }
  const std::vector<std::uint8_t> d16(16, 0);
  const auto err = [&](const std::string& header) { return st_error(st_file(header, d16)); };
  CHECK_THAT(err("{\"a\": "), Catch::Contains("header") && Catch::Contains("not valid JSON"));
  CHECK_THAT(err("[1, 2]"), Catch::Contains("expected an object"));
  CHECK_THAT(err(R"({"a":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})"), Catch::Contains("tensor \"a\".dtype") && Catch::Contains("\"Q4\""));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})"), Catch::Contains("tensor \"a\".shape"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})"), Catch::Contains("tensor \"a\".data_offsets") && Catch::Contains("truncated"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})"), Catch::Contains("needs 12"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})"),
             Catch::Contains("overlaps"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})"), Catch::Contains("cannot fit"));
  CHECK_THAT(err(R"({"a":{"dtype":"F32","shape":[4]}})"), Catch::Contains("tensor \"a\".data_offsets") && Catch::Contains("missing"));
  CHECK_THAT(err(std::string(20, '[') + std::string(20, ']')), Catch::Contains("nested deeper"));
  CHECK_THAT(err(R"({"a":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})"), Catch::Contains("dtype I64") && Catch::Contains("supported: F32, F16, BF16"));
  auto huge = st_file("{}", {});
  const std::uint64_t big = std::uint64_t{1} << 40;
  std::memcpy(huge.data(), &big, 8);
  CHECK_THAT(st_error(huge), Catch::Contains("header length"));
  CHECK_THROWS_WITH(SafetensorsFile("/nonexistent/x.safetensors"), Catch::Contains("/nonexistent/x.safetensors"));
}

namespace {

// One synthetic folder against its reference.json (make_hf_fixture.py's float64 forward pass).
struct SyntheticCase {
  const char* kind;
  bool qkv_bias;
  float rope_factor;
  const char* stored_dtype;  // the dtype of the folder's tensors (make_hf_fixture.py)
};

void check_synthetic(const SyntheticCase& c) {
  const test::OneThread one_thread;
  TempDir tmp;
  const fs::path folder = tmp.dir / c.kind;
  make_fixture(std::string(c.kind) + " '" + folder.string() + "'", tmp.dir / "log.txt");
  const YAML::Node ref = YAML::LoadFile((folder / "reference.json").string());  // JSON is YAML
  const auto prompt = as_vec<int>(ref["prompt"]);
  const auto gen = as_vec<int>(ref["greedy"]);
  std::vector<float> want;
  for (const auto& row : ref["logits"])
    for (const auto& x : row) want.push_back(x.as<float>());

  Weights w = load_weights(hf_config(folder));
  CHECK(w.shape.qkv_bias == c.qkv_bias);
  CHECK(w.shape.rope_scaling.factor == c.rope_factor);
  CHECK(w.shape.name == c.kind);
  std::vector<int> toks = prompt;
  toks.insert(toks.end(), gen.begin(), gen.end() - 1);
  CpuBackend be(w);
  const double worst = max_abs_diff(all_logits(be, toks), want);
  // float32 against float64 over 2 layers, logits up to ~40: observed differences are ~1e-5.
  constexpr double kTol = 1e-3;
  CHECK(worst < kTol);
  CHECK(greedy(be, prompt, static_cast<int>(gen.size())) == gen);
  WARN(c.kind << " HF folder vs float64 numpy reference: max |logit difference| " << worst << " over " << want.size()
       << " logits (tolerance " << kTol << "); greedy margin " << ref["min_greedy_margin"].as<double>());

  // The feature under test matters: without it the same weights miss the reference by far more.
  Weights off = load_weights(hf_config(folder));
  if (c.qkv_bias)
    for (auto& L : off.layers) std::fill(L.bq.begin(), L.bq.end(), 0.0f), std::fill(L.bk.begin(), L.bk.end(), 0.0f);
  if (c.rope_factor != 0) off.shape.rope_scaling = RopeScaling{};
  CpuBackend be_off(std::move(off));
  CHECK(max_abs_diff(all_logits(be_off, toks), want) > 100 * kTol);

  // The same model as llama.cpp converts it (model.gguf): its logits are the HF folder's. qwen2:
  // biases, Q/K rows unpermuted; the same fp32 weights after the same permutation, so the same
  // bits. llama3: the scaling as the rope_freqs tensor of per-pair divisors, so each frequency is
  // the llama3 formula's to fp32 rounding (computed another way), and the logits too.
  Weights g = load_gguf((folder / "model.gguf").string());
  CHECK(g.shape.qkv_bias == c.qkv_bias);
  CHECK(g.shape.rope_scaling.freq_factors.size() == (c.rope_factor != 0 ? std::size_t(w.shape.head_dim() / 2) : 0));
  const auto hf_freq = w.shape.rope_frequencies(), gguf_freq = g.shape.rope_frequencies();
  REQUIRE(gguf_freq.size() == hf_freq.size());
  for (std::size_t i = 0; i < hf_freq.size(); ++i) CHECK(gguf_freq[i] == Approx(hf_freq[i]).epsilon(1e-6));
  if (c.rope_factor != 0) {  // and the GGUF's factors matter: without them it misses the reference by far
    Weights plain = load_gguf((folder / "model.gguf").string());
    plain.shape.rope_scaling = RopeScaling{};
    CpuBackend be_plain(std::move(plain));
    CHECK(max_abs_diff(all_logits(be_plain, toks), want) > 100 * kTol);
  }
  CpuBackend be_gguf(std::move(g));
  const double gguf_vs_hf = max_abs_diff(all_logits(be_gguf, toks), all_logits(be, toks));
  if (c.rope_factor == 0) CHECK(gguf_vs_hf == 0.0);
  else CHECK(gguf_vs_hf < 1e-4);  // logits up to ~40: a few float ulps
  CHECK(greedy(be_gguf, prompt, static_cast<int>(gen.size())) == gen);
  WARN(c.kind << " GGUF vs HF folder: max |logit difference| " << gguf_vs_hf);
  // dtype native keeps this F32 file's matrices as they are (qwen2: Q/K rows reordered as bytes):
  // the fp32 pass's bits.
  CpuBackend be_native(load_gguf(GgufFile((folder / "model.gguf").string()), true), "native");
  CHECK(all_logits(be_native, toks) == all_logits(be_gguf, toks));
  // And the folder's own BF16 / F16 tensors (Q/K rows reordered as bytes too): the bits of that
  // dtype converted from fp32, since the fp32 values are the stored ones widened; 16 bits a weight.
  CpuBackend be_hf_native(load_weights(hf_config(folder), true), "native");
  CpuBackend be_hf_dtype(load_weights(hf_config(folder)), c.stored_dtype);
  CHECK(be_hf_native.bits_per_weight() == 16.0);
  CHECK(all_logits(be_hf_native, toks) == all_logits(be_hf_dtype, toks));
  CHECK(greedy(be_hf_native, prompt, static_cast<int>(gen.size())) == gen);
}

}  // namespace

TEST_CASE("hf: a synthetic Qwen2 folder (BF16, Q/K/V biases, tied) and its qwen2 GGUF match the float64 numpy reference", "[hf][qwen2]") {
  check_synthetic({"qwen2", true, 0.0f, "bf16"});
}

TEST_CASE("hf: a synthetic Llama folder with rope_scaling llama3 (F16) and its GGUF (rope_freqs) match the float64 numpy reference", "[hf][llama3]") {
  check_synthetic({"llama3", false, 8.0f, "fp16"});
}

TEST_CASE("hf: RoPE frequencies: llama3 scaling keeps high, divides low and blends the band between", "[hf][rope]") {
  ModelShape s = *find_preset("tiny");  // head_dim 16
  const auto plain = s.rope_frequencies();
  REQUIRE(plain.size() == 8);
  for (int i = 0; i < 8; ++i) CHECK(plain[static_cast<std::size_t>(i)] == 1.0f / powf(s.rope_theta, 2 * i / 16.0f));
  s.rope_scaling = {8.0f, 1.0f, 4.0f, 64, {}};
  const auto scaled = s.rope_frequencies();
  for (std::size_t i = 0; i < 8; ++i) {
    const double wavelen = 2 * M_PI / plain[i];
    INFO("pair " << i << ", wavelength " << wavelen);
    if (wavelen < 16) CHECK(scaled[i] == plain[i]);
    else if (wavelen > 64) CHECK(scaled[i] == Approx(plain[i] / 8.0f));
    else CHECK((scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0f));
  }
}

TEST_CASE("hf: Llama 3 and Qwen2 pre-tokenizers split text as Hugging Face tokenizers does", "[hf][tokenizer]") {
  // tests/fixtures/hf/pretokenizer_reference.json: tokenizers 0.23.3's Split(regex, Isolated) +
  // ByteLevel on Unicode, digit runs, contractions in any case, whitespace runs and \r\n.
  const YAML::Node ref = YAML::LoadFile((project_root() / "tests" / "fixtures" / "hf" / "pretokenizer_reference.json").string());
  int n = 0;
  for (const char* kind : {"llama3", "qwen2"}) {
    const BpeTokenizer tok({"!"}, {}, {}, kind, -1, -1, false);
    for (std::size_t i = 0; i < ref["texts"].size(); ++i) {
      const std::string text = ref["texts"][i].as<std::string>("");
      INFO(kind << " text: \"" << text << "\"");
      CHECK(tok.pre_tokenize(text) == as_vec<std::string>(ref["pieces"][kind][i]));
      ++n;
    }
  }
  CHECK(n >= 30);
  // The two differ where they should: Llama 3 keeps up to 3 digits together, Qwen2 one.
  CHECK(BpeTokenizer({"!"}, {}, {}, "llama3", -1, -1, false).pre_tokenize("12345") == std::vector<std::string>{"123", "45"});
  CHECK(BpeTokenizer({"!"}, {}, {}, "qwen2", -1, -1, false).pre_tokenize("123").size() == 3);
}

TEST_CASE("hf: SmolLM2 as a Hugging Face folder gives the GGUF path's logits, greedy text and token ids", "[hf][smollm2]") {
  const fs::path gguf = project_root() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(gguf)) {
    WARN("SKIPPED: " << gguf.string() << " is missing (offline?); run experiments/fetch_smollm2.sh");
    return;
  }
  const test::OneThread one_thread;
  TempDir tmp;
  const fs::path folder = tmp.dir / "SmolLM2-135M-Instruct";
  make_fixture("smollm2 '" + gguf.string() + "' '" + folder.string() + "'", tmp.dir / "log.txt");
  REQUIRE(fs::exists(folder / "model.safetensors.index.json"));  // two shards

  const YAML::Node fx = YAML::LoadFile((project_root() / "tests" / "fixtures" / "smollm2_reference.json").string());
  const GgufFile gf(gguf.string());
  const BpeTokenizer gguf_tok(gf);
  const auto hf_tok = load_hf_tokenizer(folder.string());
  // Token ids: the tokenizer.json tokenizer gives Hugging Face tokenizers' ids (the committed
  // reference) and the GGUF tokenizer's, with and without special tokens.
  int texts = 0;
  for (const auto& c : fx["tokenizer_cases"]) {
    const std::string text = c["text"].as<std::string>("");
    INFO("text: \"" << text << "\"");
    CHECK(hf_tok->encode(text) == as_vec<int>(c["ids"]));
    CHECK(hf_tok->encode(text, false, false) == gguf_tok.encode(text, false, false));
    CHECK(hf_tok->decode(hf_tok->encode(text)) == text);
    ++texts;
  }
  // SmolLM2's vocabulary under Llama 3's (with ignore_merges) and Qwen2's pre-tokenizers, as the
  // tokenizer.json folders make_hf_fixture.py writes: the ids tokenizers gives.
  const YAML::Node pre_ref = YAML::LoadFile((project_root() / "tests" / "fixtures" / "hf" / "pretokenizer_reference.json").string());
  for (const char* kind : {"llama3", "qwen2"}) {
    const auto tok = load_hf_tokenizer((folder / ("tok-" + std::string(kind))).string());
    CHECK(tok->pre() == kind);
    for (std::size_t i = 0; i < pre_ref["texts"].size(); ++i) {
      const std::string text = pre_ref["texts"][i].as<std::string>("");
      INFO(kind << " text: \"" << text << "\"");
      CHECK(tok->encode(text, false, false) == as_vec<int>(pre_ref["ids"][kind][i]));
      ++texts;
    }
    if (std::string(kind) == "qwen2") {  // its NFC normalizer matters for the corpus's decomposed text
      const std::size_t last = pre_ref["texts"].size() - 1;
      tok->set_nfc(false);
      CHECK(tok->encode(pre_ref["texts"][last].as<std::string>(), false, false) != as_vec<int>(pre_ref["ids"][kind][last]));
    }
  }
  CHECK(texts >= 40);
  CHECK(hf_tok->vocab_size() == gguf_tok.vocab_size());
  CHECK(hf_tok->bos_id() == gguf_tok.bos_id());
  CHECK(hf_tok->eos_id() == gguf_tok.eos_id());

  // Logits: teacher-forced over the first reference prompt and its continuation.
  const YAML::Node c0 = fx["cases"][0];
  const auto prompt = hf_tok->tokenize(c0["prompt"].as<std::string>());
  CHECK(prompt == as_vec<int>(c0["prompt_ids"]));
  auto toks = prompt;
  const auto gen = as_vec<int>(c0["greedy_ids"]);
  toks.insert(toks.end(), gen.begin(), gen.begin() + 8);
  CpuBackend from_gguf(load_gguf(gf));
  CpuBackend from_hf(load_weights(hf_config(folder)));
  CHECK(from_hf.shape().dim == from_gguf.shape().dim);
  CHECK(from_hf.shape().n_kv_heads == from_gguf.shape().n_kv_heads);
  CHECK(from_hf.shape().rope_theta == from_gguf.shape().rope_theta);
  CHECK(from_hf.shape().norm_eps == from_gguf.shape().norm_eps);
  CHECK(from_hf.shape().max_seq_len == from_gguf.shape().max_seq_len);
  const double worst = max_abs_diff(all_logits(from_hf, toks), all_logits(from_gguf, toks));
  // The fixture dequantises Q4_1 in numpy float32 (x = q d + m), as the GGUF reader does; any
  // difference is fp32 rounding (an FMA in one of them), far below a logit's scale.
  CHECK(worst < 1e-3);
  const auto g_hf = greedy(from_hf, prompt, 16), g_gguf = greedy(from_gguf, prompt, 16);
  CHECK(g_hf == g_gguf);
  CHECK(hf_tok->decode(g_hf) == gguf_tok.decode(g_gguf));
  WARN("SmolLM2 HF folder vs GGUF: max |logit difference| " << worst << " over " << toks.size() << " positions x "
       << from_hf.shape().vocab_size << "; greedy: \"" << hf_tok->decode(g_hf) << "\"");

  // `ablate generate --model FOLDER`
  for (const char* dtype : {"fp32", "native"}) {  // native: this folder's F32 tensors as stored
    const test::GenerateRun r = test::run_generate(folder.string(), std::string("--dtype ") + dtype);
    INFO("command: " << r.command << "\noutput: " << r.output);
    CHECK(r.rc == 0);
    CHECK(r.output.find("Paris") != std::string::npos);
  }
}

TEST_CASE("hf: bad folders are config errors naming the file and field (ablate validate, exit 2)", "[hf][config][cli]") {
  TempDir tmp;
  const fs::path good = tmp.dir / "qwen2";
  make_fixture("qwen2 '" + good.string() + "'", tmp.dir / "log.txt");
  const std::string config_text = slurp(good / "config.json");
  int n = 0;
  // A copy of the good folder, `edit` applied, through `ablate validate`: the exit status and stderr.
  const auto validate = [&](const std::function<void(const fs::path&)>& edit,
                            const std::string& workload = "workload: {prompt_len: {value: 8}, output_len: {value: 8}}\n") {
    const fs::path f = tmp.dir / ("case" + std::to_string(n++));
    fs::copy(good, f);
    edit(f);
    const fs::path cfg = tmp.dir / "exp.yaml";
    spit(cfg, "experiment: hf\nmodel: {source: hf, path: " + f.string() + "}\n" + workload);
    const std::string cmd = "'" + std::string(ABLATE_BINARY) + "' validate '" + cfg.string() + "' >/dev/null 2>'" + (tmp.dir / "err.txt").string() + "'";
    const int raw = std::system(cmd.c_str());
    return std::pair{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(tmp.dir / "err.txt")};
  };
  const auto replace = [&](const fs::path& f, const std::string& from, const std::string& to) {
    std::string t = slurp(f / "config.json");
    const auto at = t.find(from);
    REQUIRE(at != std::string::npos);
    spit(f / "config.json", t.replace(at, from.size(), to));
  };

  {
    const auto [rc, err] = validate([](const fs::path&) {});
    INFO(err);
    CHECK(rc == 0);
  }
  {  // dtype native keeps the folder's own BF16 tensors
    const auto [rc, err] = validate([](const fs::path&) {}, "dtype: native\nworkload: {prompt_len: {value: 8}, output_len: {value: 8}}\n");
    INFO(err);
    CHECK(rc == 0);
  }
  {
    const auto [rc, err] = validate([](const fs::path& f) { fs::remove(f / "config.json"); });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("model.path") && Catch::Contains("config.json: missing"));
  }
  {
    const auto [rc, err] = validate([&](const fs::path& f) {
      spit(f / "model.safetensors.index.json",
           R"({"weight_map": {"model.embed_tokens.weight": "model.safetensors", "model.norm.weight": "model-00002-of-00002.safetensors"}})");
    });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("model.safetensors.index.json") && Catch::Contains("weight_map[\"model.norm.weight\"]") &&
                        Catch::Contains("shard model-00002-of-00002.safetensors is missing"));
  }
  {
    const auto [rc, err] = validate([&](const fs::path& f) { replace(f, "\"intermediate_size\": 96", "\"intermediate_size\": 128"); });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [96, 64]") &&
                        Catch::Contains("intermediate_size 128") && Catch::Contains("gives [128, 64]"));
  }
  {
    const auto [rc, err] = validate([&](const fs::path& f) {
      replace(f, "\"rope_scaling\": null", R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})");
    });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("config.json: rope_scaling.rope_type: \"yarn\" is not supported; supported: llama3"));
  }
  {
    const auto [rc, err] = validate([&](const fs::path& f) { replace(f, "Qwen2ForCausalLM", "GemmaForCausalLM"); });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("config.json: architectures: \"GemmaForCausalLM\" is not supported; supported: "
                                    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"));
  }
  {
    const auto [rc, err] = validate([&](const fs::path& f) { replace(f, "\"use_sliding_window\": false", "\"use_sliding_window\": true"); });
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("config.json: use_sliding_window"));
  }
  {
    const fs::path prompts = tmp.dir / "prompts.txt";
    spit(prompts, "hello\n");
    const auto [rc, err] = validate(
        [&](const fs::path& f) {
          spit(f / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}, "pre_tokenizer": null})");
        },
        "workload: {prompts: " + prompts.string() + ", output_len: {value: 8}}\n");
    INFO(err);
    CHECK(rc == 2);
    CHECK_THAT(err, Catch::Contains("workload.prompts") && Catch::Contains("tokenizer.json: model.type: \"Unigram\" is not supported"));
  }
  CHECK(config_text.find("Qwen2ForCausalLM") != std::string::npos);
}
