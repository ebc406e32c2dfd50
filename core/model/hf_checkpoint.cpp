#include "model/hf_checkpoint.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "model/bpe_tokenizer.hpp"
#include "model/gguf.hpp"  // GgmlType
#include "model/safetensors.hpp"
#include "model/weights.hpp"

namespace ablate {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* const kArchitectures = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// A JSON file of the folder, parsed; errors name the file.
json read_json(const fs::path& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open {} (a Hugging Face checkpoint folder has one)", path.string(), what));
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

// Typed access to config.json's keys; every error names the file and the key.
struct ConfigReader {
  const json& j;
  std::string file;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw std::runtime_error(fmt::format("{}: {}: {}", file, key, what));
  }
  const json* find(const std::string& key) const {
    const auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  long long integer(const std::string& key, long long lo, long long hi, std::optional<long long> fallback = std::nullopt) const {
    const json* v = find(key);
    if (!v) {
      if (fallback) return *fallback;
      fail(key, "missing (required)");
    }
    if (!v->is_number_integer()) fail(key, fmt::format("{} is not an integer", v->dump()));
    const long long x = v->get<long long>();
    if (x < lo || x > hi) fail(key, fmt::format("{} is out of range; allowed: {}..{}", x, lo, hi));
    return x;
  }
  double number(const std::string& key, double fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_number()) fail(key, fmt::format("{} is not a number", v->dump()));
    return v->get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(key, fmt::format("{} is not true or false", v->dump()));
    return v->get<bool>();
  }
  // bos_token_id / eos_token_id: an id, a list of ids (the first is taken) or null.
  int token_id(const std::string& key) const {
    const json* v = find(key);
    if (!v) return -1;
    const json& x = v->is_array() && !v->empty() ? (*v)[0] : *v;
    if (!x.is_number_integer() || x.get<long long>() < 0 || x.get<long long>() > (1 << 24))
      fail(key, fmt::format("{} is not a token id (or a list of them)", v->dump()));
    return static_cast<int>(x.get<long long>());
  }
};

RopeScaling read_rope_scaling(const ConfigReader& c) {
  RopeScaling r;
  const json* v = c.find("rope_scaling");
  if (!v) return r;
  if (!v->is_object()) c.fail("rope_scaling", fmt::format("{} is not an object or null", v->dump()));
  // Transformers writes "rope_type"; older configs "type".
  const auto type_it = v->contains("rope_type") ? v->find("rope_type") : v->find("type");
  const std::string key = v->contains("rope_type") ? "rope_scaling.rope_type" : "rope_scaling.type";
  if (type_it == v->end() || !type_it->is_string()) c.fail(key, "missing or not a string; supported: llama3 (or rope_scaling null)");
  const std::string type = type_it->get<std::string>();
  if (type == "default") return r;
  if (type != "llama3")
    c.fail(key, fmt::format("\"{}\" is not supported; supported: llama3 (or default, or rope_scaling null)", type));
  const ConfigReader sub{*v, c.file};
  const auto field = [&](const std::string& k) -> double {
    const json* f = sub.find(k);
    if (!f || !f->is_number()) c.fail("rope_scaling." + k, "missing or not a number (rope_type llama3 needs it)");
    return f->get<double>();
  };
  r.factor = static_cast<float>(field("factor"));
  r.low_freq_factor = static_cast<float>(field("low_freq_factor"));
  r.high_freq_factor = static_cast<float>(field("high_freq_factor"));
  const double orig = field("original_max_position_embeddings");
  if (!(r.factor >= 1) || !std::isfinite(r.factor)) c.fail("rope_scaling.factor", fmt::format("{} is not valid; allowed: >= 1", r.factor));
  if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor) || !std::isfinite(r.high_freq_factor))
    c.fail("rope_scaling.high_freq_factor", fmt::format("{} with low_freq_factor {} is not valid; allowed: high > low > 0",
                                                        r.high_freq_factor, r.low_freq_factor));
  if (!(orig >= 1 && orig <= (1 << 24)) || orig != std::floor(orig))
    c.fail("rope_scaling.original_max_position_embeddings", fmt::format("{} is not valid; allowed: an integer 1..{}", orig, 1 << 24));
  r.original_max_position = static_cast<int>(orig);
  return r;
}

std::string folder_name(const std::string& folder) {
  fs::path p = fs::path(folder).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

}  // namespace

namespace {

// Row h*hd + 2i + s of `out` is row h*hd + s*hd/2 + i of `in`; `row` elements a row.
template <class T>
void interleave_rows(const T* in, T* out, int n_heads, int hd, std::size_t row) {
  const int half = hd / 2;
  for (int h = 0; h < n_heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int s = 0; s < 2; ++s)
        std::copy_n(in + static_cast<std::size_t>(h * hd + s * half + i) * row, row, out + static_cast<std::size_t>(h * hd + 2 * i + s) * row);
}

}  // namespace

std::vector<float> interleave_rope_rows(const std::vector<float>& w, int n_heads, int hd, std::size_t cols) {
  if (w.empty()) return w;  // a check, not a load
  std::vector<float> out(w.size());
  interleave_rows(w.data(), out.data(), n_heads, hd, cols);
  return out;
}

void interleave_rope_rows(StoredMatrix& m, int n_heads, int hd) {
  if (m.empty()) return;
  std::vector<std::uint8_t> out(m.bytes.size());
  interleave_rows(m.bytes.data(), out.data(), n_heads, hd, m.bytes.size() / m.rows);
  m.bytes = std::move(out);
}

namespace {

// The folder's safetensors files: one model.safetensors, or the shards model.safetensors.index.json
// maps each tensor to.
class HfTensors {
 public:
  explicit HfTensors(const fs::path& folder) {
    const fs::path index = folder / "model.safetensors.index.json";
    const fs::path single = folder / "model.safetensors";
    if (fs::exists(index)) {
      const json j = read_json(index, "model.safetensors.index.json");
      const auto wm = j.find("weight_map");
      if (wm == j.end() || !wm->is_object())
        throw std::runtime_error(fmt::format("{}: weight_map: missing or not an object of tensor name -> shard file", index.string()));
      for (const auto& [name, file] : wm->items()) {
        if (!file.is_string())
          throw std::runtime_error(fmt::format("{}: weight_map[\"{}\"]: {} is not a file name", index.string(), name, file.dump()));
        const std::string shard = file.get<std::string>();
        // Shards sit beside the index: a name that leaves the folder is refused.
        if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
          throw std::runtime_error(fmt::format("{}: weight_map[\"{}\"]: \"{}\" is not a file name in the folder", index.string(), name, shard));
        if (!files_.count(shard)) {
          const fs::path p = folder / shard;
          if (!fs::exists(p))
            throw std::runtime_error(fmt::format("{}: weight_map[\"{}\"]: shard {} is missing ({} does not exist)", index.string(),
                                                 name, shard, p.string()));
          files_.emplace(shard, std::make_unique<SafetensorsFile>(p.string()));
        }
        where_[name] = files_.at(shard).get();
      }
      origin_ = index.string();
    } else if (fs::exists(single)) {
      auto f = std::make_unique<SafetensorsFile>(single.string());
      for (const auto& t : f->tensors()) where_[t.name] = f.get();
      files_.emplace("model.safetensors", std::move(f));
      origin_ = single.string();
    } else {
      throw std::runtime_error(fmt::format("{}: no model.safetensors or model.safetensors.index.json (a Hugging Face "
                                           "checkpoint folder's weights)", folder.string()));
    }
  }
  bool has(const std::string& name) const { return where_.count(name) != 0; }
  // The tensor as fp32 (`load`) or nothing (a check), its shape and dtype checked first: `why`
  // says where the expected shape comes from.
  std::vector<float> get(const std::string& name, const std::vector<std::uint64_t>& shape, const std::string& why, bool load) const {
    const auto [file, t] = checked(name, shape, why);
    return load ? file->to_float(*t) : std::vector<float>{};
  }
  // A [rows][cols] matrix as stored, its safetensors dtype as the ggml type of the same encoding.
  StoredMatrix stored(const std::string& name, const std::vector<std::uint64_t>& shape, const std::string& why) const {
    const auto [file, t] = checked(name, shape, why);
    StoredMatrix m;
    m.source = name;
    m.ggml_type = static_cast<std::uint32_t>(t->dtype == "F32" ? GgmlType::F32 : t->dtype == "F16" ? GgmlType::F16 : GgmlType::BF16);
    m.rows = static_cast<std::size_t>(shape[0]), m.cols = static_cast<std::size_t>(shape[1]);
    m.bytes.assign(file->data(*t), file->data(*t) + (t->end - t->begin));
    return m;
  }

 private:
  std::pair<const SafetensorsFile*, const SafetensorsTensor*> checked(const std::string& name, const std::vector<std::uint64_t>& shape,
                                                                      const std::string& why) const {
    const auto it = where_.find(name);
    if (it == where_.end()) throw std::runtime_error(fmt::format("{}: tensor {} is missing", origin_, name));
    const SafetensorsTensor* t = it->second->find(name);
    if (!t) throw std::runtime_error(fmt::format("{}: tensor {} is missing (the index {} puts it there)", it->second->path(), name, origin_));
    if (t->shape != shape)
      throw std::runtime_error(fmt::format("{}: tensor {} has shape [{}], but config.json ({}) gives [{}]", it->second->path(), name,
                                           fmt::join(t->shape, ", "), why, fmt::join(shape, ", ")));
    if (t->dtype != "F32" && t->dtype != "F16" && t->dtype != "BF16")
      throw std::runtime_error(fmt::format("{}: tensor {} has dtype {}, which is not supported; supported: F32, F16, BF16",
                                           it->second->path(), name, t->dtype));
    return {it->second, t};
  }

  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;
  std::string origin_;
};

}  // namespace

HfConfig read_hf_config(const std::string& folder) {
  if (!fs::is_directory(folder))
    throw std::runtime_error(fmt::format("{}: not a folder (model.source hf needs a Hugging Face checkpoint folder: config.json, "
                                         "*.safetensors, tokenizer.json)", folder));
  const fs::path path = fs::path(folder) / "config.json";
  if (!fs::exists(path)) throw std::runtime_error(fmt::format("{}: missing; a Hugging Face checkpoint folder has config.json", path.string()));
  const json j = read_json(path, "config.json");
  if (!j.is_object()) throw std::runtime_error(fmt::format("{}: is a JSON {}, expected an object", path.string(), j.type_name()));
  const ConfigReader c{j, path.string()};
  HfConfig h;
  h.folder = folder;
  const json* arch = c.find("architectures");
  if (!arch || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    c.fail("architectures", fmt::format("missing or not a list of names; supported: {}", kArchitectures));
  h.architecture = (*arch)[0].get<std::string>();
  const bool llama = h.architecture == "LlamaForCausalLM", mistral = h.architecture == "MistralForCausalLM",
             qwen2 = h.architecture == "Qwen2ForCausalLM";
  if (!llama && !mistral && !qwen2)
    c.fail("architectures", fmt::format("\"{}\" is not supported; supported: {}", h.architecture, kArchitectures));

  ModelShape& s = h.shape;
  s.name = folder_name(folder);
  s.dim = static_cast<int>(c.integer("hidden_size", 1, 65536));
  s.hidden_dim = static_cast<int>(c.integer("intermediate_size", 1, 1 << 20));
  s.n_layers = static_cast<int>(c.integer("num_hidden_layers", 1, 1024));
  s.n_heads = static_cast<int>(c.integer("num_attention_heads", 1, 1024));
  s.n_kv_heads = static_cast<int>(c.integer("num_key_value_heads", 1, 1024, s.n_heads));
  s.vocab_size = static_cast<int>(c.integer("vocab_size", 1, 1 << 24));
  s.max_seq_len = static_cast<int>(c.integer("max_position_embeddings", 1, 1 << 24));
  if (s.dim % s.n_heads != 0) c.fail("num_attention_heads", fmt::format("{} does not divide hidden_size {}", s.n_heads, s.dim));
  if (s.n_heads % s.n_kv_heads != 0)
    c.fail("num_key_value_heads", fmt::format("{} does not divide num_attention_heads {}", s.n_kv_heads, s.n_heads));
  if (s.head_dim() % 2 != 0) c.fail("num_attention_heads", fmt::format("head size {} is odd; RoPE needs an even one", s.head_dim()));
  // The backends take the head size as hidden_size / num_attention_heads.
  if (const json* hd = c.find("head_dim"); hd && c.integer("head_dim", 1, 65536) != s.head_dim())
    c.fail("head_dim", fmt::format("{} differs from hidden_size / num_attention_heads = {} (not supported)", hd->dump(), s.head_dim()));
  // Transformers' defaults where a key is absent.
  s.rope_theta = static_cast<float>(c.number("rope_theta", 10000.0));
  s.norm_eps = static_cast<float>(c.number("rms_norm_eps", 1e-6));
  if (!(s.rope_theta > 0) || !std::isfinite(s.rope_theta)) c.fail("rope_theta", fmt::format("{} is not valid; allowed: > 0", s.rope_theta));
  if (!(s.norm_eps > 0) || !(s.norm_eps < 1)) c.fail("rms_norm_eps", fmt::format("{} is not valid; allowed: 0 < eps < 1", s.norm_eps));
  s.tied_embeddings = c.boolean("tie_word_embeddings", false);
  s.rope_scaling = read_rope_scaling(c);
  s.qkv_bias = qwen2;
  if (const json* act = c.find("hidden_act"); act && (!act->is_string() || act->get<std::string>() != "silu"))
    c.fail("hidden_act", fmt::format("{} is not supported; supported: \"silu\" (SwiGLU)", act->dump()));
  if (c.boolean("attention_bias", false)) c.fail("attention_bias", "true (biases on every attention projection) is not supported; allowed: false");
  if (c.boolean("mlp_bias", false)) c.fail("mlp_bias", "true is not supported; allowed: false");
  // Sliding-window attention is not implemented: refuse a window shorter than the context.
  if (qwen2 && c.boolean("use_sliding_window", false))
    c.fail("use_sliding_window", "true (sliding-window attention) is not supported; allowed: false");
  if (mistral)
    if (const json* w = c.find("sliding_window"); w && (!w->is_number_integer() || w->get<long long>() < s.max_seq_len))
      c.fail("sliding_window", fmt::format("{} (sliding-window attention) is not supported; allowed: null, or >= "
                                           "max_position_embeddings {}", w->dump(), s.max_seq_len));
  h.bos_token_id = c.token_id("bos_token_id");
  h.eos_token_id = c.token_id("eos_token_id");
  return h;
}

namespace {

// Every tensor the config implies, checked (shape, dtype, in its shard) and, when `load`, read;
// keep_stored: the matrices as stored instead (load_hf).
Weights read_weights(const std::string& folder, bool load, bool keep_stored = false) {
  const HfConfig h = read_hf_config(folder);
  const HfTensors tensors{fs::path(folder)};
  const struct {
    const HfTensors& t;
    bool load;
    std::vector<float> get(const std::string& name, const std::vector<std::uint64_t>& shape, const std::string& why) const {
      return t.get(name, shape, why, load);
    }
  } t{tensors, load};
  Weights w;
  w.shape = h.shape;
  const ModelShape& s = w.shape;
  const auto d = static_cast<std::uint64_t>(s.dim), kv = static_cast<std::uint64_t>(s.kv_dim()),
             hid = static_cast<std::uint64_t>(s.hidden_dim), V = static_cast<std::uint64_t>(s.vocab_size);
  const std::string dims = fmt::format("hidden_size {}, num_attention_heads {}, num_key_value_heads {}", s.dim, s.n_heads, s.n_kv_heads);
  const std::string ffn = fmt::format("hidden_size {}, intermediate_size {}", s.dim, s.hidden_dim);
  const std::string vocab = fmt::format("vocab_size {}, hidden_size {}", s.vocab_size, s.dim);
  const std::string hs = fmt::format("hidden_size {}", s.dim);
  const int hd = s.head_dim();
  // A [rows][cols] matrix as fp32 into `fp32`, or (keep_stored) as stored into `stored`, its rows
  // reordered for RoPE over rope_heads heads (Q and K; 0: as stored).
  const auto matrix = [&](const std::string& name, std::vector<std::uint64_t> shape, const std::string& why, std::vector<float>& fp32,
                          StoredMatrix& stored, int rope_heads = 0) {
    if (keep_stored) {
      stored = tensors.stored(name, shape, why);
      if (rope_heads) interleave_rope_rows(stored, rope_heads, hd);
    } else {
      fp32 = t.get(name, shape, why);
      if (rope_heads) fp32 = interleave_rope_rows(fp32, rope_heads, hd, static_cast<std::size_t>(shape[1]));
    }
  };
  w.token_embedding = t.get("model.embed_tokens.weight", {V, d}, vocab);
  w.layers.resize(static_cast<std::size_t>(s.n_layers));
  for (int l = 0; l < s.n_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    const std::string p = fmt::format("model.layers.{}.", l);
    L.rms_att = t.get(p + "input_layernorm.weight", {d}, hs);
    matrix(p + "self_attn.q_proj.weight", {d, d}, dims, L.wq, L.stored.wq, s.n_heads);
    matrix(p + "self_attn.k_proj.weight", {kv, d}, dims, L.wk, L.stored.wk, s.n_kv_heads);
    matrix(p + "self_attn.v_proj.weight", {kv, d}, dims, L.wv, L.stored.wv);
    matrix(p + "self_attn.o_proj.weight", {d, d}, dims, L.wo, L.stored.wo);
    if (s.qkv_bias) {
      L.bq = interleave_rope_rows(t.get(p + "self_attn.q_proj.bias", {d}, dims), s.n_heads, hd, 1);
      L.bk = interleave_rope_rows(t.get(p + "self_attn.k_proj.bias", {kv}, dims), s.n_kv_heads, hd, 1);
      L.bv = t.get(p + "self_attn.v_proj.bias", {kv}, dims);
    }
    L.rms_ffn = t.get(p + "post_attention_layernorm.weight", {d}, hs);
    matrix(p + "mlp.gate_proj.weight", {hid, d}, ffn, L.w1, L.stored.w1);
    matrix(p + "mlp.up_proj.weight", {hid, d}, ffn, L.w3, L.stored.w3);
    matrix(p + "mlp.down_proj.weight", {d, hid}, ffn, L.w2, L.stored.w2);
  }
  w.rms_final = t.get("model.norm.weight", {d}, hs);
  // Tied checkpoints may still carry lm_head.weight (a copy): the embedding is used.
  std::vector<float> unused;
  if (!s.tied_embeddings) matrix("lm_head.weight", {V, d}, vocab, w.classifier, w.stored_lm_head);
  else if (keep_stored) matrix("model.embed_tokens.weight", {V, d}, vocab, unused, w.stored_lm_head);
  return w;
}

}  // namespace

Weights load_hf(const std::string& folder, bool keep_stored) { return read_weights(folder, true, keep_stored); }

ModelShape check_hf_checkpoint(const std::string& folder) { return read_weights(folder, false).shape; }

namespace {

// A JSON value for an error message, cut short.
std::string brief(const json& v) {
  std::string s = v.dump();
  return s.size() > 160 ? s.substr(0, 160) + "..." : s;
}

// The split regexes of Llama 3 and Qwen2 tokenizer.json files (Split, behavior Isolated), which
// BpeTokenizer's "llama3" and "qwen2" pre-tokenizers implement.
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kPreTokenizers =
    "ByteLevel with its GPT-2 regex; Sequence [Digits individual_digits, ByteLevel] (SmolLM2); Sequence [Split with "
    "Llama 3's or Qwen2's regex, behavior Isolated, ByteLevel use_regex false]";

// The BpeTokenizer pre-tokenizer name for tokenizer.json's pre_tokenizer.
std::string pre_tokenizer_kind(const json& j, const std::string& file) {
  const auto it = j.find("pre_tokenizer");
  const auto type_of = [](const json& x) { return x.is_object() && x.contains("type") ? x["type"].dump() : std::string("?"); };
  const auto byte_level_regex = [](const json& x) {
    return x.is_object() && x.value("type", "") == "ByteLevel" && x.value("use_regex", true);
  };
  if (it != j.end()) {
    if (byte_level_regex(*it)) return "gpt-2";
    if (it->is_object() && it->value("type", "") == "Sequence" && it->contains("pretokenizers")) {
      const json& seq = (*it)["pretokenizers"];
      if (seq.is_array() && seq.size() == 2 && seq[0].is_object() && seq[0].value("type", "") == "Digits" &&
          seq[0].value("individual_digits", false) && byte_level_regex(seq[1]))
        return "smollm";
      if (seq.is_array() && seq.size() == 2 && seq[0].is_object() && seq[0].value("type", "") == "Split" &&
          seq[0].value("behavior", "") == "Isolated" && !seq[0].value("invert", false) && seq[0].contains("pattern") &&
          seq[0]["pattern"].is_object() && seq[0]["pattern"].contains("Regex") && seq[1].is_object() &&
          seq[1].value("type", "") == "ByteLevel" && !seq[1].value("use_regex", true)) {
        const json& re = seq[0]["pattern"]["Regex"];
        if (re == kLlama3Regex) return "llama3";
        if (re == kQwen2Regex) return "qwen2";
      }
    }
    throw std::runtime_error(fmt::format("{}: pre_tokenizer: {} (type {}) is not supported; supported: {}", file, brief(*it),
                                         type_of(*it), kPreTokenizers));
  }
  throw std::runtime_error(fmt::format("{}: pre_tokenizer: missing; supported: {}", file, kPreTokenizers));
}

}  // namespace

std::unique_ptr<BpeTokenizer> load_hf_tokenizer(const std::string& folder) {
  const HfConfig cfg = read_hf_config(folder);
  const fs::path path = fs::path(folder) / "tokenizer.json";
  const std::string file = path.string();
  const json j = read_json(path, "tokenizer.json");
  const auto fail = [&](const std::string& field, const std::string& what) -> std::runtime_error {
    return std::runtime_error(fmt::format("{}: {}: {}", file, field, what));
  };
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) throw fail("model", "missing or not an object");
  const json& model = j["model"];
  const std::string type = model.value("type", "");
  if (type != "BPE") throw fail("model.type", fmt::format("\"{}\" is not supported; supported: BPE (byte-level)", type));
  if (model.value("byte_fallback", false))
    throw fail("model.byte_fallback", "true (a SentencePiece-style BPE) is not supported; supported: byte-level BPE (false)");
  const auto norm = j.find("normalizer");
  const bool nfc = norm != j.end() && norm->is_object() && norm->value("type", "") == "NFC";
  if (norm != j.end() && !norm->is_null() && !nfc)
    throw fail("normalizer", fmt::format("{} is not supported; supported: null, NFC (Qwen2)", brief(*norm)));
  const std::string pre = pre_tokenizer_kind(j, file);

  // Ids: the model's vocab plus the added tokens, which may extend it; dense 0..n-1.
  if (!model.contains("vocab") || !model["vocab"].is_object()) throw fail("model.vocab", "missing or not an object of token -> id");
  std::map<long long, std::string> by_id;
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() >= (1 << 24))
      throw fail("model.vocab", fmt::format("\"{}\": {} is not a token id", tok, brief(id)));
    if (!by_id.emplace(id.get<long long>(), tok).second)
      throw fail("model.vocab", fmt::format("id {} is given to \"{}\" and \"{}\"", id.get<long long>(), by_id[id.get<long long>()], tok));
  }
  std::map<long long, int> types;  // 3: control (special), 4: user-defined, as GGUF's token types
  if (const auto added = j.find("added_tokens"); added != j.end() && !added->is_null()) {
    if (!added->is_array()) throw fail("added_tokens", "not a list");
    for (std::size_t i = 0; i < added->size(); ++i) {
      const json& a = (*added)[i];
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") || !a["content"].is_string() ||
          a["id"].get<long long>() < 0 || a["id"].get<long long>() >= (1 << 24))
        throw fail(fmt::format("added_tokens[{}]", i), fmt::format("{} lacks an integer id or a content string", brief(a)));
      const long long id = a["id"].get<long long>();
      const std::string content = a["content"].get<std::string>();
      if (auto it = by_id.find(id); it != by_id.end() && it->second != content)
        throw fail(fmt::format("added_tokens[{}]", i), fmt::format("id {} is \"{}\" in model.vocab", id, it->second));
      by_id[id] = content;
      types[id] = a.value("special", false) ? 3 : 4;
    }
  }
  if (by_id.empty()) throw fail("model.vocab", "empty");
  if (by_id.rbegin()->first + 1 != static_cast<long long>(by_id.size()))
    throw fail("model.vocab", fmt::format("ids are not dense: {} tokens, highest id {}", by_id.size(), by_id.rbegin()->first));
  std::vector<std::string> tokens;
  std::vector<int> token_types;
  for (const auto& [id, tok] : by_id) {
    tokens.push_back(tok);
    const auto t = types.find(id);
    token_types.push_back(t == types.end() ? 1 : t->second);
  }

  // Merges: "left right" strings, or [left, right] pairs (tokenizers >= 0.20).
  std::vector<std::string> merges;
  if (!model.contains("merges") || !model["merges"].is_array()) throw fail("model.merges", "missing or not a list");
  for (std::size_t i = 0; i < model["merges"].size(); ++i) {
    const json& m = model["merges"][i];
    if (m.is_string()) merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
      merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
    else throw fail(fmt::format("model.merges[{}]", i), fmt::format("{} is not \"a b\" or [\"a\", \"b\"]", brief(m)));
  }

  // BOS: added when the post-processor's single-sequence template starts with a special token
  // (Llama 3's TemplateProcessing, possibly inside a Sequence); ByteLevel or none adds nothing.
  int bos = cfg.bos_token_id;
  bool add_bos = false;
  std::vector<const json*> procs;
  if (const auto pp = j.find("post_processor"); pp != j.end() && pp->is_object()) {
    procs.push_back(&*pp);
    if (pp->value("type", "") == "Sequence" && pp->contains("processors") && (*pp)["processors"].is_array())
      for (const json& p : (*pp)["processors"]) procs.push_back(&p);
  }
  for (const json* p : procs) {
    if (!p->is_object() || p->value("type", "") != "TemplateProcessing" || !p->contains("single")) continue;
    const json& single = (*p)["single"];
    if (!single.is_array() || single.empty() || !single[0].is_object() || !single[0].contains("SpecialToken")) continue;
    const json& st = single[0]["SpecialToken"];
    const std::string name = st.is_object() ? st.value("id", "") : "";
    const auto sp = p->find("special_tokens");
    if (sp == p->end() || !sp->contains(name) || !(*sp)[name].contains("ids") || !(*sp)[name]["ids"].is_array() ||
        (*sp)[name]["ids"].size() != 1 || !(*sp)[name]["ids"][0].is_number_integer())
      throw fail("post_processor.special_tokens", fmt::format("the template's first token \"{}\" has no single id", name));
    bos = (*sp)[name]["ids"][0].get<int>();
    add_bos = true;
  }
  const auto in_vocab = [&](int id, const char* key) {
    if (id >= static_cast<int>(tokens.size()))
      throw std::runtime_error(fmt::format("{}: {} = {} is outside tokenizer.json's vocabulary of {}", add_bos && id == bos ? file : (fs::path(folder) / "config.json").string(),
                                           key, id, tokens.size()));
    return id;
  };
  bos = bos < 0 ? -1 : in_vocab(bos, "bos_token_id");
  const int eos = cfg.eos_token_id < 0 ? -1 : in_vocab(cfg.eos_token_id, "eos_token_id");
  try {
    auto tok = std::make_unique<BpeTokenizer>(std::move(tokens), std::move(token_types), merges, pre, bos, eos, add_bos,
                                              model.value("ignore_merges", false));
    tok->set_nfc(nfc);
    return tok;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", file, e.what()));
  }
}

}  // namespace ablate
