// YAML experiment configs: defaults, schema, sweeps, --set, round trips, and every error message.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <fmt/format.h>

#include "config/load.hpp"
#include "base/paths.hpp"

using namespace ablate;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

LoadedExperiment load(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  return load_experiment_text(yaml, "x.yaml", sets);
}

// The ConfigError message a config produces ("" when it loads).
std::string error_of(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  try {
    load(yaml, sets);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string column(const SweepPoint& p, const std::string& key) {
  for (const auto& [k, v] : p.columns)
    if (k == key) return v;
  FAIL("no column " << key);
  return "";
}

// A fresh directory for fixture files, removed afterwards.
struct TempDir {
  fs::path dir;
  TempDir() {
    std::random_device rd;
    dir = fs::temp_directory_path() / ("ablate_test_config_" + std::to_string(rd()));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name, std::ios::binary) << text;
    return dir / name;
  }
};

}  // namespace

TEST_CASE("config: an empty file resolves to the defaults", "[config]") {
  auto ex = load("");
  REQUIRE(ex.points.size() == 1);
  CHECK(ex.file == "x.yaml");
  CHECK(ex.swept_keys.empty());
  CHECK(ex.repeat == 1);
  CHECK(ex.warmup == 0);
  const auto& p = ex.points[0];
  const auto& c = p.config;
  CHECK(p.index == 0);
  CHECK(p.swept.empty());
  CHECK(c.experiment == "experiment");
  CHECK(c.backend == "cpu");
  CHECK(c.batching == "static");
  CHECK(c.model.preset == "tiny");
  CHECK(c.kv.memory_mb == 256);
  CHECK(c.scheduler.max_batch == 8);
  CHECK(c.workload.prompt_len.dist == "fixed");
  CHECK(c.workload.prompt_len.value == 128);
  CHECK(c.sampling.stop_at_eos == false);
  // The trace default is expanded like any path a config gives.
  CHECK(c.workload.trace.path == expand_path("${shared}/traces/AzureLLMInferenceTrace_conv.csv"));
  CHECK(c.workload.trace.path.find("${") == std::string::npos);
  REQUIRE(p.config_hash.size() == 16);
  CHECK(p.config_hash.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(load("{}").points[0].config_hash == p.config_hash);
  CHECK(load("kv:\n").points[0].config_hash == p.config_hash);  // an empty section changes nothing
}

TEST_CASE("config: the schema lists every key once, with type, default and allowed values", "[config]") {
  const auto& schema = config_schema();
  std::set<std::string> keys;
  for (const auto& k : schema) {
    CHECK(keys.insert(k.key).second);
    CHECK(!k.doc.empty());
    CHECK(!k.allowed.empty());
    CHECK(std::set<std::string>{"int", "number", "string", "bool", "path", "choice"}.count(k.type) == 1);
  }
  CHECK(schema.size() == 77);  // 57 + dtype, profile.start_step, profile.end_step (issue 7), workload.trace.rows, cuda_pdl,
                               // cuda_l2_prefetch, cuda_flash_decode_version, kv.dtype,
                               // workload.conversation.{turns, think_time_ms, think_time_dist}
  CHECK(schema.front().key == "experiment");
  auto row = [&](const std::string& key) {
    for (const auto& k : schema)
      if (k.key == key) return k;
    FAIL("no schema row " << key);
    return ConfigKey{};
  };
  CHECK(row("kv.memory_mb").type == "number");
  CHECK(row("kv.memory_mb").default_value == "256");
  CHECK(row("kv.memory_mb").allowed == "> 0");
  CHECK(row("kv.layout").type == "choice");
  CHECK(row("kv.layout").allowed == "contiguous, paged");
  CHECK(row("sampling.top_p").allowed == "(0, 1]");
  CHECK(row("speculative.k").allowed == "1..16");
  CHECK(row("scheduler.max_batch").allowed == ">= 1");
  CHECK(row("workload.trace.path").type == "path");
  CHECK(row("workload.trace.path").default_value == "${shared}/traces/AzureLLMInferenceTrace_conv.csv");
  CHECK(row("sampling.stop_at_eos").default_value == "false");

  // CSV columns: every schema key, in schema order.
  const auto cols = load("").points[0].columns;
  REQUIRE(cols.size() == schema.size());
  for (size_t i = 0; i < cols.size(); ++i) CHECK(cols[i].first == schema[i].key);
  CHECK(column(load("kv: {memory_mb: 64.5}").points[0], "kv.memory_mb") == "64.5");
}

TEST_CASE("config: values of every kind are read into the typed struct", "[config]") {
  auto ex = load(R"(
experiment: ablation-1.b
seed: 7
threads: 2
max_seq_len: 300
repeat: 3
warmup: 2
model: {source: synthetic, preset: stories260k, seed: 5}
scheduler:
  max_batch: 4
  max_num_seqs: 9
  max_batched_tokens: 512
  prefill: chunked
kv.memory_mb: 64          # a dotted key works at any level
kv: {reserve: prompt_plus_max_new, block_size: 32}
speculative: {k: 3, alpha: 0.5, draft_preset: tiny, draft_layers: 2}
sampling: {temperature: 0.7, top_p: 0.9, stop_at_eos: yes}
workload:
  requests: 100
  arrival: gamma
  rate: 2.5
  burstiness: 0.5
  prompt_len: {dist: uniform, min: 16, max: 64}
  output_len: {dist: lognormal, mean: 50, std: 20, min: 1, max: 200}
  trace: {time_scale: 0.5, start_row: 10, max_prompt_len: 100, max_output_len: 50}
slo: {ttft_ms: 100, tpot_ms: 10.5, e2el_ms: 1000}
)");
  const auto& c = ex.points.at(0).config;
  CHECK(ex.repeat == 3);
  CHECK(ex.warmup == 2);
  CHECK(c.experiment == "ablation-1.b");
  CHECK(c.seed == 7);
  CHECK(c.threads == 2);
  CHECK(c.max_seq_len == 300);
  CHECK(c.model.preset == "stories260k");
  CHECK(c.model.seed == 5);
  CHECK(c.scheduler.max_batch == 4);
  CHECK(c.scheduler.max_num_seqs == 9);
  CHECK(c.scheduler.max_batched_tokens == 512);
  CHECK(c.scheduler.prefill == "chunked");
  CHECK(c.kv.memory_mb == 64);
  CHECK(c.kv.reserve == "prompt_plus_max_new");
  CHECK(c.kv.block_size == 32);
  CHECK(c.speculative.k == 3);
  CHECK(c.speculative.alpha == 0.5);
  CHECK(c.speculative.draft_preset == "tiny");
  CHECK(c.speculative.draft_layers == 2);
  CHECK(c.sampling.temperature == 0.7);
  CHECK(c.sampling.top_p == 0.9);
  CHECK(c.sampling.stop_at_eos == true);
  CHECK(c.workload.requests == 100);
  CHECK(c.workload.arrival == "gamma");
  CHECK(c.workload.rate == 2.5);
  CHECK(c.workload.burstiness == 0.5);
  CHECK(c.workload.prompt_len.dist == "uniform");
  CHECK(c.workload.prompt_len.min == 16);
  CHECK(c.workload.prompt_len.max == 64);
  CHECK(c.workload.output_len.dist == "lognormal");
  CHECK(c.workload.output_len.mean == 50);
  CHECK(c.workload.output_len.std == 20);
  CHECK(c.workload.trace.time_scale == 0.5);
  CHECK(c.workload.trace.start_row == 10);
  CHECK(c.workload.trace.max_prompt_len == 100);
  CHECK(c.workload.trace.max_output_len == 50);
  CHECK(c.slo.ttft_ms == 100);
  CHECK(c.slo.tpot_ms == 10.5);
  CHECK(c.slo.e2el_ms == 1000);
}

TEST_CASE("config: a bare length is shorthand for a fixed distribution", "[config]") {
  auto a = load("workload: {prompt_len: 64, output_len: 32}").points[0];
  auto b = load("workload:\n  prompt_len: {dist: fixed, value: 64}\n  output_len: {dist: fixed, value: 32}\n").points[0];
  CHECK(a.config.workload.prompt_len.dist == "fixed");
  CHECK(a.config.workload.prompt_len.value == 64);
  CHECK(a.config.workload.output_len.value == 32);
  CHECK(a.config_hash == b.config_hash);
  // The shorthand replaces a distribution set elsewhere.
  CHECK(load("workload: {prompt_len: 8}", {"workload.prompt_len={dist: uniform, min: 2, max: 9}"})
            .points[0].config.workload.prompt_len.dist == "uniform");
  CHECK(load("workload: {prompt_len: {dist: uniform}}", {"workload.prompt_len=8"}).points[0].config.workload.prompt_len.dist ==
        "fixed");
  CHECK(error_of("workload:\n  prompt_len: abc\n") ==
        "x.yaml:2:15: workload.prompt_len: expected a length or a map of dist, value, min, max, mean, std, got \"abc\"");
  CHECK_THAT(error_of("workload: {prompt_len: 0}"), Contains("x.yaml:1:24: workload.prompt_len.value: 0 is out of range; allowed: >= 1"));
}

TEST_CASE("config: SLO presets fill the MLPerf numbers", "[config]") {
  auto slo = [](const std::string& y, const std::vector<std::string>& s = {}) { return load(y, s).points[0].config.slo; };
  CHECK(slo("slo: {preset: llama2-70b}").ttft_ms == 2000);
  CHECK(slo("slo: {preset: llama2-70b}").tpot_ms == 200);
  CHECK(slo("slo: {preset: interactive}").ttft_ms == 450);
  CHECK(slo("slo: {preset: interactive}").tpot_ms == 40);
  CHECK(slo("slo: {preset: llama3.1-8b}").ttft_ms == 2000);
  CHECK(slo("slo: {preset: llama3.1-8b}").tpot_ms == 100);
  // A number written beside the preset wins, whichever comes first.
  CHECK(slo("slo: {ttft_ms: 100, preset: interactive}").ttft_ms == 100);
  CHECK(slo("slo: {preset: interactive, ttft_ms: 100}").ttft_ms == 100);
  CHECK(slo("slo: {preset: interactive, ttft_ms: 100}").tpot_ms == 40);
  CHECK(slo("slo: {ttft_ms: 100}", {"slo.preset=interactive"}).ttft_ms == 450);  // a later layer wins
  CHECK(error_of("slo:\n  preset: interactiv\n") ==
        "x.yaml:2:11: slo.preset: unknown value \"interactiv\" (did you mean \"interactive\"?); allowed: llama2-70b, interactive, "
        "llama3.1-8b");
}

TEST_CASE("config: unknown keys name the place, suggest a close key and list the valid ones", "[config]") {
  CHECK(error_of("kv:\n  layout: contiguous\n  memroy_mb: 3\n") ==
        "x.yaml:3:3: unknown key \"kv.memroy_mb\" (did you mean \"kv.memory_mb\"?); keys in kv: layout, memory_mb, reserve, block_size, dtype, prefix_cache");
  // A key in the wrong section is found by its last part.
  auto e = error_of("seed: 1\nmax_batch: 4\n");
  CHECK_THAT(e, Contains("x.yaml:2:1: unknown key \"max_batch\" (did you mean \"scheduler.max_batch\"?); top-level keys: experiment, seed"));
  CHECK_THAT(e, Contains("workload, slo, profile, sweep"));
  CHECK_THAT(error_of("sampling: {temprature: 1}"), Contains("(did you mean \"sampling.temperature\"?)"));
  // Nothing close: no guess.
  e = error_of("kv: {zzz: 1}");
  CHECK_THAT(e, Contains("x.yaml:1:6: unknown key \"kv.zzz\"; keys in kv: layout"));
  CHECK_THAT(e, !Contains("did you mean"));
  CHECK_THAT(error_of("workload: {prompt_len: {vaule: 3}}"),
             Contains("x.yaml:1:25: unknown key \"workload.prompt_len.vaule\" (did you mean \"workload.prompt_len.value\"?); keys in "
                      "workload.prompt_len: dist, value, min, max, mean, std"));
  CHECK_THAT(error_of("slo: {presets: interactive}"), Contains("(did you mean \"slo.preset\"?); keys in slo: ttft_ms, tpot_ms, e2el_ms, preset"));
  CHECK_THAT(error_of("? [a, b]\n: 1\n"), Contains("x.yaml:1:3: expected a key name, got a list"));
}

TEST_CASE("config: choice values: unknown, not implemented, numeric", "[config]") {
  CHECK(error_of("seed: 1\nbatching: contiuous\n") ==
        "x.yaml:2:11: batching: unknown value \"contiuous\" (did you mean \"continuous\"?); allowed: static, continuous");
  CHECK(error_of("kv:\n  layout: paged\nbatching: continuous\n") == "");  // both built (issue 3)
  CHECK(error_of("dtype: bf16") == "");  // 16-bit weights on the CPU too (issue 20)
  CHECK(error_of("dtype: fp16") == "");
  CHECK(error_of("dtype: q8_0") == "");  // Q8_0 blocks on the CPU (issue 20)
#if defined(ABLATE_HAVE_CUDA)
  CHECK(error_of("backend: cuda\ndtype: q8_0\n") ==
        "x.yaml:2:8: dtype: q8_0 is not on cuda (its GEMV and GEMMs read fp32, bf16 or fp16 weights); allowed with backend cuda: fp32, bf16, fp16");
#endif
  // native: a checkpoint file's own encoding (issue 20), so not for a model without any.
  CHECK(error_of("dtype: native\n") ==
        "x.yaml:1:8: dtype: native keeps a checkpoint file's own encoding (model.source gguf or hf), and model.source "
        "synthetic has none; allowed with model.source synthetic: fp32, bf16, fp16, q8_0");
#if defined(ABLATE_HAVE_CUDA)
  CHECK_THAT(error_of("backend: cuda\ndtype: native\n"), Contains("x.yaml:2:8: dtype: native is not on cuda"));
#endif
  CHECK_THAT(error_of("dtype: q4_0"), Contains("x.yaml:1:8: dtype: unknown value \"q4_0\""));
  // kv.dtype, independent of dtype (issue 20).
  for (const char* kvd : {"auto", "fp32", "bf16", "fp16", "fp8_e4m3", "int8"})
    CHECK(error_of(std::string("dtype: q8_0\nkv:\n  dtype: ") + kvd + "\n") == "");
  CHECK(error_of("kv:\n  dtype: int4\n") ==
        "x.yaml:2:10: kv.dtype: unknown value \"int4\" (did you mean \"int8\"?); allowed: auto, fp32, bf16, fp16, fp8_e4m3, int8");
#if defined(ABLATE_HAVE_CUDA)
  CHECK(error_of("backend: cuda\ndtype: bf16\nkv: {dtype: bf16}\n") == "");
  CHECK(error_of("backend: cuda\ndtype: bf16\nkv: {dtype: auto}\n") == "");
  // On cuda too, independent of dtype (the CUDA part of issue 20): what was refused now validates,
  // with every attention kernel but fp32 K/V under the 16-bit flash kernels.
  for (const char* dt : {"fp32", "bf16", "fp16"})
    for (const char* kvd : {"auto", "fp32", "bf16", "fp16", "fp8_e4m3"}) {
      INFO(dt << " " << kvd);
      CHECK(error_of(fmt::format("backend: cuda\ndtype: {}\nkv: {{dtype: {}}}\n", dt, kvd)) == "");
      if (std::string(dt) != "fp32" && std::string(kvd) != "fp32")
        for (const char* att : {"flash", "flash_split"})
          CHECK(error_of(fmt::format("backend: cuda\ndtype: {}\nattention: {}\nmodel: {{preset: smollm2-135m}}\nkv: {{dtype: {}}}\n",
                                     dt, att, kvd)) == "");
    }
  CHECK(error_of("backend: cuda\ndtype: bf16\nkv:\n  dtype: int8\n") ==
        "x.yaml:4:10: kv.dtype: int8 is not on cuda (its per-token, per-head scales are not in the CUDA kernels); allowed with "
        "backend cuda: auto, fp32, bf16, fp16, fp8_e4m3");
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash\nmodel: {preset: smollm2-135m}\nkv:\n  dtype: fp32\n") ==
        "x.yaml:6:10: kv.dtype: fp32 K/V cannot feed flash on backend cuda: its kernels read 16-bit or fp8 K/V tiles (fp32 "
        "would be rounded to 16 bits as read, kv.dtype bf16's precision at twice the memory); allowed with attention flash: "
        "auto, bf16, fp16, fp8_e4m3");
  // kv.memory_mb buys tokens at the KV dtype's size on cuda too: smollm2-135m's token is 30 x 2 x
  // 192 elements, 23040 bytes in bf16, 11520 in fp8_e4m3; at 4 MiB (182 bf16 tokens, 364 fp8) a
  // 256-token sequence fits in fp8 only.
  const std::string budget = "backend: cuda\ndtype: bf16\nmodel: {preset: smollm2-135m}\nmax_seq_len: 256\nkv: {memory_mb: 4, dtype: ";
  CHECK_THAT(error_of(budget + "bf16}\n"), Contains("4 MiB holds 182 tokens of KV cache (23040 bytes per token"));
  CHECK(error_of(budget + "fp8_e4m3}\n") == "");
#endif
#if defined(ABLATE_HAVE_CUDA)
  CHECK(error_of("backend: cuda") == "");  // built (issue 7); whether a device exists is a run-time matter
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash\nmodel: {preset: smollm2-135m}\n") == "");
  CHECK(error_of("backend: cuda\ndtype: fp16\nattention: flash_split\nmodel: {preset: smollm2-135m}\n") == "");
  // Q/K/V biases (Qwen2) run on CUDA too (issue 22; scaled RoPE is tested through the backend).
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash\nmodel: {preset: qwen2.5-7b}\nkv: {memory_mb: 4096}\n") == "");
  CHECK(error_of("backend: cuda\nattention: flash\n") ==
        "x.yaml:2:12: attention: flash on backend cuda runs on tensor cores and needs dtype bf16 or fp16; allowed with dtype fp32: naive");
  CHECK_THAT(error_of("backend: cuda\ndtype: bf16\nattention: flash_split\nmodel: {preset: tiny}\n"),
             Contains("x.yaml:3:12: attention: flash_split on backend cuda needs head_dim 64 or 128"));
  CHECK_THAT(error_of("backend: cuda\nspeculative: {draft: layer_skip}\n"),
             Contains("x.yaml:2:22: speculative.draft: layer_skip runs inside the CPU backend's forward pass; allowed with "
                      "backend cuda: none, model, simulated"));
  CHECK_THAT(error_of("backend: cuda\nspeculative: {draft: simulated}\n"),
             Contains("x.yaml:2:22: speculative.draft: simulated without a draft_preset or draft_model times the target's "
                      "first draft_layers layers (layer_skip)"));
  CHECK(error_of("backend: cuda\nspeculative: {draft: simulated, draft_preset: tiny}\n") == "");
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash\nmodel: {preset: smollm2-135m}\ncuda_graphs: true\n") == "");
  CHECK_THAT(error_of("backend: cuda\ncuda_graphs: true\n"),
             Contains("x.yaml:2:14: cuda_graphs: true needs attention flash or flash_split"));
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash\nmodel: {preset: smollm2-135m}\ncuda_l2_prefetch: true\n") == "");
  CHECK_THAT(error_of("backend: cuda\ncuda_l2_prefetch: true\n"),
             Contains("x.yaml:2:19: cuda_l2_prefetch: true needs attention flash or flash_split"));
  CHECK(error_of("backend: cuda\ndtype: bf16\nattention: flash_split\nmodel: {preset: smollm2-135m}\n"
                 "cuda_flash_decode_version: 4\n") == "");
  CHECK_THAT(error_of("backend: cuda\ncuda_flash_decode_version: 2\n"),
             Contains("x.yaml:2:28: cuda_flash_decode_version: 2 needs backend cuda and attention flash or flash_split"));
#else
  CHECK_THAT(error_of("backend: cuda"), Contains("x.yaml:1:10: backend: \"cuda\" is not available in this build yet; available now: cpu"));
#endif
  CHECK_THAT(error_of("cuda_graphs: true"),
             Contains("x.yaml:1:14: cuda_graphs: true needs backend cuda (CUDA graphs replay GPU kernels); allowed with "
                      "backend cpu: false"));
  CHECK_THAT(error_of("cuda_pdl: true"),
             Contains("x.yaml:1:11: cuda_pdl: true needs backend cuda (programmatic dependent launch is a CUDA launch "
                      "attribute); allowed with backend cpu: false"));
  CHECK_THAT(error_of("cuda_pdl: 2"), Contains("x.yaml:1:11: cuda_pdl"));
  CHECK_THAT(error_of("cuda_l2_prefetch: true"),
             Contains("x.yaml:1:19: cuda_l2_prefetch: true needs backend cuda (an L2 prefetch of device weights); "
                      "allowed with backend cpu: false"));
  CHECK_THAT(error_of("cuda_l2_prefetch: yes please"), Contains("x.yaml:1:19: cuda_l2_prefetch"));
  CHECK_THAT(error_of("cuda_flash_decode_version: 3"),
             Contains("x.yaml:1:28: cuda_flash_decode_version: 3 needs backend cuda and attention flash or flash_split "
                      "(a CUDA flash decode kernel); allowed with backend cpu, attention naive: 0"));
  CHECK_THAT(error_of("cuda_flash_decode_version: 1"),
             Contains("x.yaml:1:28: cuda_flash_decode_version: version 1 has no planned (graph-ready) form in the CUDA "
                      "backend; allowed: 0 (the backend's choice), 2, 3, 4"));
  CHECK_THAT(error_of("cuda_flash_decode_version: 5"), Contains("x.yaml:1:28: cuda_flash_decode_version"));
  CHECK_THAT(error_of("profile: {start_step: 5, end_step: 5}"),
             Contains("x.yaml:1:36: profile.end_step: the capture window [5, 5) is empty"));
  CHECK(error_of("attention: flash\n") == "");  // built (issue 4)
  CHECK(error_of("speculative: {draft: simulated}") == "");  // built (issue 5)
  auto e = error_of("model: {preset: llama}");
  CHECK_THAT(e, Contains("x.yaml:1:17: model.preset: unknown value \"llama\"; allowed: tiny, stories260k, smollm2-135m, smollm2-draft, llama2-7b, llama2-draft"));
  CHECK_THAT(error_of("workload: {arrival: Poisson}"), Contains("(did you mean \"poisson\"?); allowed: offline, poisson, gamma, trace"));
  CHECK(error_of("kv: {block_size: 12}") == "x.yaml:1:18: kv.block_size: 12 is not allowed; allowed: 1, 8, 16, 32, 64, 128");
  CHECK_THAT(error_of("kv: {block_size: big}"), Contains("kv.block_size: expected an integer, got \"big\""));
  CHECK_THAT(error_of("speculative: {draft_preset: tinyy}"),
             Contains("speculative.draft_preset: unknown value \"tinyy\" (did you mean \"tiny\"?); allowed: \"\", tiny"));
  CHECK(load("speculative: {draft_preset: \"\"}").points[0].config.speculative.draft_preset.empty());
}

TEST_CASE("config: wrong types", "[config]") {
  CHECK(error_of("kv:\n  memory_mb: lots\n") == "x.yaml:2:14: kv.memory_mb: expected a number, got \"lots\"; allowed: > 0");
  CHECK(error_of("kv: {memory_mb: {a: 1}}") == "x.yaml:1:17: kv.memory_mb: expected a number, got a map; allowed: > 0");
  CHECK_THAT(error_of("scheduler: {max_batch: [1, 2]}"), Contains("x.yaml:1:24: scheduler.max_batch: expected an integer, got a list"));
  CHECK_THAT(error_of("seed: 1.5"), Contains("x.yaml:1:7: seed: expected an integer, got \"1.5\"; allowed: >= 0"));
  CHECK_THAT(error_of("seed: 99999999999"), Contains("x.yaml:1:7: seed: 99999999999 is too large"));
  CHECK_THAT(error_of("sampling: {stop_at_eos: maybe}"), Contains("x.yaml:1:25: sampling.stop_at_eos: expected true or false, got \"maybe\""));
  CHECK_THAT(error_of("backend: [cpu]"), Contains("x.yaml:1:10: backend: expected a single value, got a list; allowed: cpu, cuda"));
  CHECK_THAT(error_of("experiment: my exp"), Contains("x.yaml:1:13: experiment: \"my exp\" is not a valid name; allowed: [A-Za-z0-9_.-]+"));
  CHECK_THAT(error_of("threads:\n"), Contains("x.yaml:1:1: threads: missing value; allowed: >= 0"));
  CHECK_THAT(error_of("kv: 5"), Contains("x.yaml:1:5: kv: expected a map of layout, memory_mb, reserve, block_size, dtype, prefix_cache, got \"5\""));
  CHECK_THAT(error_of("workload: [1]"), Contains("x.yaml:1:11: workload: expected a map of requests, arrival"));
  CHECK_THAT(error_of("- a\n- b\n"), Contains("x.yaml:1:1: expected a map of config keys at the top level, got a list"));
  CHECK_THAT(error_of("sampling: {temperature: .inf}"), Contains("sampling.temperature: expected a number, got \".inf\""));
}

TEST_CASE("config: out-of-range values", "[config]") {
  CHECK(error_of("scheduler: {max_batch: 0}") == "x.yaml:1:24: scheduler.max_batch: 0 is out of range; allowed: >= 1");
  CHECK_THAT(error_of("sampling: {top_p: 0}"), Contains("x.yaml:1:19: sampling.top_p: 0 is out of range; allowed: (0, 1]"));
  CHECK_THAT(error_of("sampling: {top_p: 1.5}"), Contains("sampling.top_p: 1.5 is out of range; allowed: (0, 1]"));
  CHECK(load("sampling: {top_p: 1}").points[0].config.sampling.top_p == 1);
  CHECK_THAT(error_of("speculative: {k: 17}"), Contains("speculative.k: 17 is out of range; allowed: 1..16"));
  CHECK_THAT(error_of("speculative: {alpha: -0.1}"), Contains("speculative.alpha: -0.1 is out of range; allowed: [0, 1]"));
  CHECK_THAT(error_of("kv: {memory_mb: 0}"), Contains("kv.memory_mb: 0 is out of range; allowed: > 0"));
  CHECK_THAT(error_of("repeat: 0"), Contains("x.yaml:1:9: repeat: 0 is out of range; allowed: >= 1"));
  CHECK_THAT(error_of("threads: -1"), Contains("threads: -1 is out of range; allowed: >= 0"));
  CHECK_THAT(error_of("workload: {trace: {time_scale: 0}}"), Contains("workload.trace.time_scale: 0 is out of range; allowed: > 0"));
  CHECK_THAT(error_of("slo: {ttft_ms: -5}"), Contains("slo.ttft_ms: -5 is out of range; allowed: >= 0"));
  CHECK_THAT(error_of("workload: {prompt_len: {dist: uniform, min: 0}}"),
             Contains("workload.prompt_len.min: 0 is out of range; allowed: >= 1"));
}

TEST_CASE("config: YAML syntax errors, duplicates and unreadable files", "[config]") {
  CHECK(error_of("seed: 1\na: [1,\nb: 2\n") == "x.yaml:4:1: YAML syntax error: end of sequence flow not found");
  CHECK(error_of("kv: {memory_mb: 1}\nkv.memory_mb: 2\n") == "x.yaml:2:15: kv.memory_mb: given twice (first at x.yaml:1:17)");
  CHECK_THAT(error_of("seed: 1\nseed: 2\n"), Contains("x.yaml:2:7: seed: given twice (first at x.yaml:1:7)"));

  TempDir tmp;
  const auto missing = tmp.dir / "nope.yaml";
  CHECK_THROWS_WITH(load_experiment(missing), Contains(missing.string() + ": cannot read config: no such file"));
  CHECK_THROWS_WITH(load_experiment(tmp.dir), Contains(tmp.dir.string() + ": cannot read config: is a directory"));
  const auto bad = tmp.write("bad.yaml", "kv:\n  memory_mb: [1,\n");
  CHECK_THROWS_WITH(load_experiment(bad), Contains(bad.string() + ":3:1: YAML syntax error"));
  const auto good = tmp.write("good.yaml", "experiment: from_file\nkv: {memory_mb: 32}\n");
  auto ex = load_experiment(good, {"seed=3"});
  CHECK(ex.file == good.string());
  CHECK(ex.points.at(0).config.experiment == "from_file");
  CHECK(ex.points.at(0).config.kv.memory_mb == 32);
  CHECK(ex.points.at(0).config.seed == 3);
  const auto typo = tmp.write("typo.yaml", "\n\nkv:\n  memroy_mb: 1\n");
  CHECK_THROWS_WITH(load_experiment(typo), Contains(typo.string() + ":4:3: unknown key \"kv.memroy_mb\""));
  CHECK(load_experiment(tmp.write("empty.yaml", "")).points.size() == 1);
}

TEST_CASE("config: model checks: llama2c paths and max_seq_len", "[config]") {
  CHECK(error_of("model:\n  source: llama2c\n") == "x.yaml:2:11: model.source: llama2c needs model.path (a llama2.c checkpoint .bin)");
  TempDir tmp;
  const auto nope = (tmp.dir / "none.bin").string();
  CHECK(error_of("model: {source: llama2c, path: " + nope + "}") == "x.yaml:1:32: model.path: file not found: " + nope);
  const auto bin = tmp.write("short.bin", "abc").string();  // not a checkpoint: model_shape throws
  CHECK_THAT(error_of("model: {source: llama2c, path: " + bin + "}"), Contains("x.yaml:1:32: model.path: "));
  CHECK_THROWS_AS(load("model: {source: llama2c, path: " + bin + "}"), ConfigError);
  CHECK_THAT(error_of("model: {source: llama2c, path: " + bin + ", tokenizer: " + nope + "}"),
             Contains("model.tokenizer: file not found: " + nope));

  // A missing GGUF under models/ says which script makes it.
  CHECK_THAT(error_of("model: {source: gguf, gguf: \"${root}/models/none.Q9_9.requant.gguf\"}"),
             Contains("model.gguf: file not found: ") && Contains("(experiments/requant_smollm2.py makes it"));
  CHECK_THAT(error_of("model: {source: gguf, gguf: \"${root}/models/none.gguf\"}"),
             Contains("model.gguf: file not found: ") && Contains("(experiments/fetch_smollm2.sh downloads"));
  CHECK(error_of("max_seq_len: 1000") == "x.yaml:1:14: max_seq_len: 1000 is above the model's 512 (tiny); allowed: 0..512 (0 = the model's)");
  CHECK(load("max_seq_len: 512").points[0].config.max_seq_len == 512);

  // The real checkpoint, where the shared data is present.
  const auto stories = expand_path("${shared}/models/stories260K.bin");
  if (fs::exists(stories)) {
    auto c = load("model: {source: llama2c, path: \"${shared}/models/stories260K.bin\"}").points[0].config;
    CHECK(c.model.path == stories);
    CHECK_THAT(error_of("model: {source: llama2c, path: " + stories + "}\nmax_seq_len: 600\n"),
               Contains("x.yaml:2:14: max_seq_len: 600 is above the model's 512"));
  }
}

TEST_CASE("config: workload lengths must fit max_seq_len", "[config]") {
  CHECK(error_of("workload:\n  prompt_len: 400\n  output_len: 200\n") ==
        "x.yaml:3:15: workload.output_len.value: prompts of up to 400 tokens plus outputs of up to 200 need 600 positions, more than "
        "the model's max_seq_len 512; allowed: prompt + output <= 512");
  CHECK(load("workload: {prompt_len: 384, output_len: 128}").points.size() == 1);  // exactly 512
  // uniform / normal / lognormal: their max counts.
  CHECK_THAT(error_of("max_seq_len: 256\nworkload: {prompt_len: {dist: uniform, min: 1, max: 200}}\n"),
             Contains("x.yaml:2:53: workload.prompt_len.max: prompts of up to 200 tokens plus outputs of up to 128 need 328 positions, "
                      "more than max_seq_len 256; allowed: prompt + output <= 256"));
  CHECK(load("max_seq_len: 256\nworkload: {prompt_len: {dist: normal, max: 128}}\n").points.size() == 1);
  // Only max_seq_len was written: it carries the blame.
  CHECK_THAT(error_of("max_seq_len: 200"), Contains("x.yaml:1:14: max_seq_len: prompts of up to 128 tokens plus outputs of up to 128"));
  CHECK(error_of("workload: {output_len: {dist: uniform, min: 10, max: 5}}") ==
        "x.yaml:1:45: workload.output_len.min: min 10 is above max 5; allowed: min <= max");
  CHECK_THAT(error_of("workload: {prompt_len: {max: 0}}"), Contains("workload.prompt_len.max: 0 is out of range; allowed: >= 1"));
  CHECK_THAT(error_of("workload: {prompt_len: {min: 2000}}"), Contains("x.yaml:1:30: workload.prompt_len.min: min 2000 is above max 1024"));
}

TEST_CASE("config: the KV budget must hold one sequence", "[config]") {
  // tiny: 2 (K, V) * 2 layers * kv_dim 32 * 4 bytes = 512 bytes per token; 512 positions -> 0.25 MiB.
  CHECK(load("kv: {memory_mb: 0.25}").points.size() == 1);
  CHECK(error_of("kv:\n  memory_mb: 0.2499\n") ==
        "x.yaml:2:14: kv.memory_mb: 0.2499 MiB holds 511 tokens of KV cache (512 bytes per token for tiny), fewer than one sequence "
        "needs: 512 tokens (kv.reserve: max_seq_len, the model's max_seq_len 512); allowed: >= 0.25");
  // max_seq_len lowers the reservation.
  CHECK(load("max_seq_len: 256\nkv: {memory_mb: 0.125}").points.size() == 1);
  CHECK_THAT(error_of("max_seq_len: 256\nkv: {memory_mb: 0.12}"), Contains("fewer than one sequence needs: 256 tokens"));
  // prompt_plus_max_new reserves the longest prompt + output: 100 + 28 = 128 tokens = 0.0625 MiB.
  const std::string ppmn = "workload: {prompt_len: 100, output_len: 28}\nkv: {reserve: prompt_plus_max_new, memory_mb: ";
  CHECK(load(ppmn + "0.0625}").points.size() == 1);
  auto e = error_of(ppmn + "0.06}");
  CHECK_THAT(e, Contains("x.yaml:2:47: kv.memory_mb: 0.06 MiB holds 122 tokens"));
  CHECK_THAT(e, Contains("needs: 128 tokens (kv.reserve: prompt_plus_max_new"));
  CHECK_THAT(e, Contains("allowed: >= 0.0625"));
  // A default memory_mb too small for a bigger model: located at the model the user chose.
  // llama2-7b: 2 * 32 layers * 4096 * 4 bytes = 1 MiB per token, 4096 positions.
  CHECK(error_of("model: {preset: llama2-7b}") ==
        "x.yaml:1:17: kv.memory_mb: 256 MiB holds 256 tokens of KV cache (1048576 bytes per token for llama2-7b), fewer than one "
        "sequence needs: 4096 tokens (kv.reserve: max_seq_len, the model's max_seq_len 4096); allowed: >= 4096");
  CHECK(load("model: {preset: llama2-7b}\nkv: {memory_mb: 4096}").points.size() == 1);
}

TEST_CASE("config: what run used to refuse without a location is a config error", "[config]") {
  // Experiment names that are not folders of their own.
  for (const char* bad : {"..", ".", ".hidden"})
    CHECK_THAT(error_of(std::string("experiment: \"") + bad + "\"\n"),
               Contains("x.yaml:1:13: experiment: \"" + std::string(bad) + "\" is not a valid name; allowed: [A-Za-z0-9_.-]+, not starting with '.'"));
  CHECK(load("experiment: a.b-c_1\n").points[0].config.experiment == "a.b-c_1");
  // A trace window past the end of the trace.
  TempDir tmp;
  const auto csv = tmp.write("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n"
                                      "2023-11-16 18:15:47.68,10,4\n\n2023-11-16 18:15:48.68,12,5\n").string();
  const std::string w = "workload: {requests: 2, arrival: trace, trace: {path: " + csv + ", start_row: ";
  CHECK(load(w + "1}}").points.size() == 1);
  const std::string col = std::to_string(w.find("start_row: ") + 12);  // the value's column (the path's length varies)
  CHECK_THAT(error_of(w + "3}}"), Contains("x.yaml:1:" + col + ": workload.trace.start_row: 3 is past the end of " + csv +
                                           " (3 data rows); allowed: 0..2"));
  CHECK_THAT(error_of(w + "2}}"), Contains("workload.requests: 2 requests from row 2 need 4 rows of " + csv +
                                           ", which has 3 data rows; allowed: workload.requests <= 1"));
  // A KV budget larger than the machine's memory.
  CHECK_THAT(error_of("kv: {memory_mb: 1e12}\n"), Contains("x.yaml:1:17: kv.memory_mb: 1000000000000 MiB of KV cache is 1.049e+18 bytes"));
  CHECK_THAT(error_of("kv: {memory_mb: 1e12}\n"), Contains("more than this machine has available"));
}

TEST_CASE("config: trace workloads need the trace file", "[config]") {
  TempDir tmp;
  const auto nope = (tmp.dir / "t.csv").string();
  CHECK(error_of("workload:\n  arrival: trace\n  trace: {path: " + nope + "}\n") ==
        "x.yaml:3:17: workload.trace.path: file not found: " + nope + " (needed by workload.arrival: trace)");
  CHECK_THAT(error_of("workload: {output_len: {dist: trace}, trace: {path: " + nope + "}}"),
             Contains("workload.trace.path: file not found: " + nope + " (needed by workload.output_len.dist: trace)"));
  // Not used: not checked.
  CHECK(load("workload: {trace: {path: " + nope + "}}").points[0].config.workload.trace.path == nope);
  const auto csv = tmp.write("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n").string();
  auto c = load("workload: {requests: 1, arrival: trace, prompt_len: {dist: trace}, output_len: {dist: trace}, trace: {path: " + csv + "}}")
               .points[0].config;
  CHECK(c.workload.trace.path == csv);
  // Trace caps bound the lengths like any distribution's max.
  CHECK_THAT(error_of("workload: {requests: 1, prompt_len: {dist: trace}, trace: {path: " + csv + ", max_prompt_len: 500}}"),
             Contains("prompts of up to 500 tokens plus outputs of up to 128 need 628 positions"));
}

TEST_CASE("config: a sweep runs the cross product, first key slowest", "[config]") {
  auto ex = load("experiment: s\nsweep:\n  kv.memory_mb: [64, 128]\n  scheduler.max_batch: [1, 4, 16]\n");
  REQUIRE(ex.points.size() == 6);
  CHECK(ex.swept_keys == std::vector<std::string>{"kv.memory_mb", "scheduler.max_batch"});
  const double mb[] = {64, 64, 64, 128, 128, 128};
  const int batch[] = {1, 4, 16, 1, 4, 16};
  std::set<std::string> hashes;
  for (int i = 0; i < 6; ++i) {
    const auto& p = ex.points[i];
    CHECK(p.index == i);
    CHECK(p.config.kv.memory_mb == mb[i]);
    CHECK(p.config.scheduler.max_batch == batch[i]);
    CHECK(p.config.experiment == "s");
    REQUIRE(p.swept.size() == 2);
    CHECK(p.swept[0] == std::pair<std::string, std::string>{"kv.memory_mb", i < 3 ? "64" : "128"});
    CHECK(p.swept[1].second == std::to_string(batch[i]));
    CHECK(column(p, "scheduler.max_batch") == std::to_string(batch[i]));
    hashes.insert(p.config_hash);
  }
  CHECK(hashes.size() == 6);

  // A section can be swept, shorthand included; swept values read as written.
  auto lens = load("sweep: {workload.prompt_len: [32, {dist: uniform, min: 8, max: 64}]}");
  REQUIRE(lens.points.size() == 2);
  CHECK(lens.points[0].config.workload.prompt_len.value == 32);
  CHECK(lens.points[1].config.workload.prompt_len.dist == "uniform");
  CHECK(lens.points[1].swept[0].second == "{dist: uniform, min: 8, max: 64}");
  // Sweep values override the file's value for that key; the rest of the file stays.
  auto over = load("kv: {memory_mb: 32, reserve: prompt_plus_max_new}\nsweep: {kv.memory_mb: [8]}");
  CHECK(over.points.at(0).config.kv.memory_mb == 8);
  CHECK(over.points.at(0).config.kv.reserve == "prompt_plus_max_new");
  CHECK(load("sweep: {slo.preset: [interactive, llama2-70b]}").points.at(1).config.slo.tpot_ms == 200);
  CHECK(load("sweep:\n").points.size() == 1);
}

TEST_CASE("config: each sweep point is the base plus its own map, whatever the order", "[config]") {
  // yaml-cpp's Node assignment writes through to the node it refers to, so merging a point's map
  // over the base once leaked the first point's keys into the base and every later point.
  const std::string base = "model: {preset: tiny}\nmax_seq_len: 64\nworkload: {requests: 4, prompt_len: 8, output_len: 8}\nkv: {layout: paged, memory_mb: 1, block_size: 1}\n";
  const std::string a = "{layout: paged, block_size: 8, memory_mb: 0.5}", b = "{layout: paged}", c = "{layout: contiguous}";
  for (const auto& order : {std::vector<std::string>{a, b, c}, {c, b, a}, {b, a, c}}) {
    const auto ex = load(base + "sweep:\n  kv: [" + order[0] + ", " + order[1] + ", " + order[2] + "]\n");
    REQUIRE(ex.points.size() == 3);
    std::set<std::string> hashes;
    for (std::size_t i = 0; i < 3; ++i) {
      const auto& kv = ex.points[i].config.kv;
      INFO("point " << i << " " << order[i]);
      hashes.insert(ex.points[i].config_hash);
      if (order[i] == a) {
        CHECK(kv.memory_mb == 0.5);
        CHECK(kv.block_size == 8);
      } else {
        CHECK(kv.memory_mb == 1);
        CHECK(kv.block_size == 1);
        CHECK(kv.layout == (order[i] == b ? "paged" : "contiguous"));
      }
    }
    CHECK(hashes.size() == 3);
  }
  // SLO maps: a later point does not inherit an earlier preset's keys.
  const auto slo = load("sweep:\n  slo: [{preset: interactive}, {e2el_ms: 5}]\n");
  REQUIRE(slo.points.size() == 2);
  CHECK(slo.points[0].config.slo.ttft_ms > 0);
  CHECK(slo.points[1].config.slo.ttft_ms == 0);
  CHECK(slo.points[1].config.slo.tpot_ms == 0);
  CHECK(slo.points[1].config.slo.e2el_ms == 5);
  // --set layers do not leak into each other either.
  const auto set = load("max_seq_len: 64\nworkload: {prompt_len: 8, output_len: 8}\nkv: {memory_mb: 2}\n", {"sweep.kv=[{memory_mb: 0.5, block_size: 8}, {layout: paged}]"});
  REQUIRE(set.points.size() == 2);
  CHECK(set.points[1].config.kv.memory_mb == 2);
  CHECK(set.points[1].config.kv.block_size == load("").points[0].config.kv.block_size);
}

TEST_CASE("config: sweep errors point at the list element", "[config]") {
  CHECK(error_of("sweep:\n  kv.memory_mb: [64, lots]\n") == "x.yaml:2:22: kv.memory_mb: expected a number, got \"lots\"; allowed: > 0");
  CHECK_THAT(error_of("sweep: {kv.layout: [contiguous, pagd]}"),
             Contains("x.yaml:1:33: kv.layout: unknown value \"pagd\" (did you mean \"paged\"?); allowed: contiguous, paged"));
  CHECK(error_of("sweep:\n  kv.memroy_mb: [1]\n") ==
        "x.yaml:2:3: unknown key \"kv.memroy_mb\" in sweep (did you mean \"kv.memory_mb\"?); keys in kv: layout, memory_mb, reserve, block_size, dtype, prefix_cache");
  CHECK(error_of("sweep: {kv.memory_mb: 5}") == "x.yaml:1:23: sweep.kv.memory_mb: expected a non-empty list of values, got \"5\"");
  CHECK_THAT(error_of("sweep: {kv.memory_mb: []}"), Contains("x.yaml:1:23: sweep.kv.memory_mb: expected a non-empty list of values, got a list"));
  CHECK_THAT(error_of("sweep: [1, 2]"), Contains("x.yaml:1:8: sweep: expected a map of dotted key to list of values, got a list"));
  CHECK_THAT(error_of("sweep: {repeat: [1, 2]}"), Contains("x.yaml:1:9: sweep.repeat: cannot be swept"));
  CHECK(error_of("sweep: {kv.memory_mb: [64, 64.0]}") == "x.yaml:1:28: sweep.kv.memory_mb: 64.0 is listed twice (first at x.yaml:1:24)");
  CHECK_THAT(error_of("sweep: {workload.prompt_len: [8], workload.prompt_len.value: [9]}"),
             Contains("sweep.workload.prompt_len.value: overlaps sweep.workload.prompt_len"));
  // A combination check names the point that fails.
  CHECK(error_of("sweep:\n  kv.memory_mb: [64, 0.1]\n  seed: [1, 2]\n") ==
        "x.yaml:2:22: kv.memory_mb: 0.1 MiB holds 204 tokens of KV cache (512 bytes per token for tiny), fewer than one sequence "
        "needs: 512 tokens (kv.reserve: max_seq_len, the model's max_seq_len 512); allowed: >= 0.25 (sweep point 3 of 4: "
        "kv.memory_mb=0.1, seed=1)");
}

TEST_CASE("config: --set overrides file values and sweeps", "[config]") {
  const std::string file = "kv: {memory_mb: 32}\nsweep: {scheduler.max_batch: [1, 2]}\n";
  auto ex = load(file, {"kv.memory_mb=48", "seed=9"});
  REQUIRE(ex.points.size() == 2);
  CHECK(ex.points[1].config.kv.memory_mb == 48);
  CHECK(ex.points[1].config.seed == 9);
  CHECK(ex.points[1].config.scheduler.max_batch == 2);
  // A --set of a swept key replaces the sweep with the single value.
  ex = load(file, {"scheduler.max_batch=5"});
  REQUIRE(ex.points.size() == 1);
  CHECK(ex.swept_keys.empty());
  CHECK(ex.points[0].config.scheduler.max_batch == 5);
  // Sweeps can be added (or replaced) from the command line too.
  ex = load(file, {"sweep.kv.memory_mb=[8, 16, 24]"});
  CHECK(ex.points.size() == 6);
  CHECK(ex.swept_keys == std::vector<std::string>{"scheduler.max_batch", "kv.memory_mb"});
  CHECK(load(file, {"sweep={scheduler.max_batch: [3]}"}).points.at(0).config.scheduler.max_batch == 3);
  // Sections and the last of several --set.
  CHECK(load("", {"kv={memory_mb: 12, reserve: prompt_plus_max_new}"}).points[0].config.kv.reserve == "prompt_plus_max_new");
  CHECK(load("", {"seed=1", "seed=2"}).points[0].config.seed == 2);
  // The key ends at the first '='.
  CHECK_THAT(error_of("", {"experiment=a=b"}), Contains("--set experiment=a=b: experiment: \"a=b\" is not a valid name"));
}

TEST_CASE("config: --set errors name the --set", "[config]") {
  CHECK(error_of("", {"kv.layout=pagd"}) ==
        "--set kv.layout=pagd: kv.layout: unknown value \"pagd\" (did you mean \"paged\"?); allowed: contiguous, paged");
  CHECK(error_of("", {"kv.memroy_mb=64"}) ==
        "--set kv.memroy_mb=64: unknown key \"kv.memroy_mb\" (did you mean \"kv.memory_mb\"?); keys in kv: layout, memory_mb, reserve, "
        "block_size, dtype, prefix_cache");
  CHECK_THAT(error_of("", {"kv.memory_mb=lots"}), Contains("--set kv.memory_mb=lots: kv.memory_mb: expected a number, got \"lots\""));
  CHECK_THAT(error_of("", {"seed"}), Contains("--set seed: expected KEY=VALUE"));
  CHECK_THAT(error_of("", {"seed=[1,"}), Contains("--set seed=[1,: YAML syntax error in the value"));
  CHECK_THAT(error_of("", {"sweep.kv.memroy_mb=[1]"}), Contains("--set sweep.kv.memroy_mb=[1]: unknown key \"kv.memroy_mb\" in sweep"));
  CHECK_THAT(error_of("", {"kv={memroy_mb: 1}"}), Contains("--set kv={memroy_mb: 1}: unknown key \"kv.memroy_mb\""));
  // A combination made impossible by --set is blamed on it.
  CHECK_THAT(error_of("", {"max_seq_len=900"}), Contains("--set max_seq_len=900: max_seq_len: 900 is above the model's 512"));
}

TEST_CASE("config: resolved YAML reloads to the same config and hash", "[config]") {
  const std::string yaml = R"(
experiment: rt
seed: 3
model: {preset: stories260k}
kv: {memory_mb: 12.75, reserve: prompt_plus_max_new}
sampling: {temperature: 0.3, top_p: 0.95, stop_at_eos: true}
speculative: {draft_preset: tiny, alpha: 0.123456789}
workload: {prompt_len: {dist: normal, mean: 40.5, std: 3.25, max: 100}, output_len: 20, rate: 0.1}
slo: {preset: interactive}
sweep: {scheduler.max_batch: [2, 3]}
)";
  auto ex = load(yaml);
  REQUIRE(ex.points.size() == 2);
  for (const auto& p : ex.points) {
    auto again = load_experiment_text(p.resolved_yaml, "config.yaml");
    REQUIRE(again.points.size() == 1);
    const auto& q = again.points[0];
    CHECK(q.resolved_yaml == p.resolved_yaml);
    CHECK(q.config_hash == p.config_hash);
    CHECK(q.columns == p.columns);
    CHECK(q.config.speculative.alpha == 0.123456789);
    CHECK(q.config.kv.memory_mb == 12.75);
    CHECK(q.config.slo.ttft_ms == 450);
    CHECK(q.config.scheduler.max_batch == p.config.scheduler.max_batch);
  }
  CHECK(ex.points[0].config_hash != ex.points[1].config_hash);
  // The hash is FNV-1a 64 of the text.
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : ex.points[0].resolved_yaml) h = (h ^ ch) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  CHECK(ex.points[0].config_hash == hex);
  // Every schema key appears in the resolved text, nested by section.
  const auto& text = ex.points[0].resolved_yaml;
  CHECK_THAT(text, Contains("kv:\n  layout: contiguous\n  memory_mb: 12.75\n"));
  CHECK_THAT(text, Contains("  prompt_len:\n    dist: normal\n"));
  CHECK_THAT(text, Contains("draft_preset: tiny"));
  CHECK_THAT(load("").points[0].resolved_yaml, Contains("draft_preset: \"\""));
}

TEST_CASE("config: every shipped config under configs/ validates", "[config]") {
  if (!std::filesystem::exists(expand_path("${shared}/traces"))) {
    WARN("SKIPPED: no shared traces; the trace configs cannot be checked");
    return;
  }
  int checked = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(project_root() / "configs")) {
    if (e.path().extension() != ".yaml") continue;
    INFO(e.path().string());
    try {
      const auto ex = load_experiment(e.path(), {});  // outside CHECK, which would catch the error itself
      CHECK(!ex.points.empty());
    } catch (const ConfigError& err) {
      // A checkpoint that experiments/fetch_smollm2.sh downloads may be absent offline, and the files
      // experiments/requant_smollm2.py makes (with llama-cpp-python) are not in CI.
      const std::string what = err.what();
      if (what.find("fetch_smollm2.sh") == std::string::npos && what.find("requant_smollm2.py") == std::string::npos) throw;
      WARN("SKIPPED " << e.path().string() << ": " << err.what());
    }
    ++checked;
  }
  CHECK(checked >= 12);  // quickstart, the CPU ablations, the GPU-scale ones
}
