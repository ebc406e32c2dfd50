#include "model/weights.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "model/gguf.hpp"
#include "model/hf_checkpoint.hpp"

namespace ablate {

std::size_t Weights::bytes() const {
  std::size_t n = token_embedding.size() + rms_final.size() + classifier.size();
  for (const auto& l : layers)
    n += l.rms_att.size() + l.wq.size() + l.wk.size() + l.wv.size() + l.wo.size() + l.rms_ffn.size() + l.w1.size() +
         l.w2.size() + l.w3.size() + l.bq.size() + l.bk.size() + l.bv.size();
  std::size_t stored = stored_lm_head.bytes.size();
  for (const auto& l : layers)
    for (const StoredMatrix* m : {&l.stored.wq, &l.stored.wk, &l.stored.wv, &l.stored.wo, &l.stored.w1, &l.stored.w2, &l.stored.w3})
      stored += m->bytes.size();
  return n * sizeof(float) + stored;
}

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform in [-a, a], element i a pure function of (stream, i): parallel fill, same bits at any
// thread count.
std::vector<float> uniform_tensor(std::size_t n, float a, std::uint64_t stream) {
  std::vector<float> t(n);
  const std::uint64_t key = splitmix64(stream);
#pragma omp parallel for schedule(static)
  for (std::size_t i = 0; i < n; ++i) {
    const double u = static_cast<double>(splitmix64(key ^ (i * 0xD1B54A32D192ED03ULL)) >> 11) * 0x1.0p-53;
    t[i] = static_cast<float>((2.0 * u - 1.0) * a);
  }
  return t;
}

}  // namespace

Weights synthetic_weights(const ModelShape& s, unsigned long long seed) {
  // Variance 1/fan_in keeps every projection's output at the scale of its input; the two
  // projections that write into the residual stream (wo, w2) are further scaled by
  // 1/sqrt(2 * n_layers) (GPT-2) so the stream grows at most like sqrt(depth): finite at any depth.
  const auto lin = [](int fan_in) { return static_cast<float>(std::sqrt(3.0 / fan_in)); };
  const float resid = static_cast<float>(1.0 / std::sqrt(2.0 * s.n_layers));
  std::uint64_t stream = splitmix64(seed);
  const auto next = [&] { return stream = splitmix64(stream); };

  Weights w;
  w.shape = s;
  // Embedding rows of norm ~1: tied logits x . e then have unit scale (x is RMS-normalised).
  w.token_embedding = uniform_tensor(std::size_t(s.vocab_size) * s.dim, lin(s.dim), next());
  const std::size_t d = s.dim, kv = s.kv_dim(), h = s.hidden_dim;
  for (int l = 0; l < s.n_layers; ++l) {
    LayerWeights L;
    L.rms_att.assign(d, 1.0f);
    L.rms_ffn.assign(d, 1.0f);
    L.wq = uniform_tensor(d * d, lin(s.dim), next());
    L.wk = uniform_tensor(kv * d, lin(s.dim), next());
    L.wv = uniform_tensor(kv * d, lin(s.dim), next());
    L.wo = uniform_tensor(d * d, lin(s.dim) * resid, next());
    L.w1 = uniform_tensor(h * d, lin(s.dim), next());
    L.w2 = uniform_tensor(d * h, lin(s.hidden_dim) * resid, next());
    L.w3 = uniform_tensor(h * d, lin(s.dim), next());
    if (s.qkv_bias) {  // at the scale of the projections' outputs, as trained Qwen2 biases are
      L.bq = uniform_tensor(d, 1.0f, next());
      L.bk = uniform_tensor(kv, 1.0f, next());
      L.bv = uniform_tensor(kv, 1.0f, next());
    }
    w.layers.push_back(std::move(L));
  }
  w.rms_final.assign(d, 1.0f);
  if (!s.tied_embeddings) w.classifier = uniform_tensor(std::size_t(s.vocab_size) * d, lin(s.dim), next());
  return w;
}

namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

Llama2cHeader read_header(std::ifstream& f, const std::string& path) {
  Llama2cHeader h{};
  if (!f.read(reinterpret_cast<char*>(&h), sizeof h))
    throw std::runtime_error(fmt::format("{}: too short for a llama2.c header (7 int32)", path));
  const auto bad = [&](const char* field, int v) {
    return std::runtime_error(fmt::format("{}: llama2.c header field {} = {} is not valid", path, field, v));
  };
  if (h.dim <= 0 || h.dim > 65536) throw bad("dim", h.dim);
  if (h.hidden_dim <= 0 || h.hidden_dim > 1 << 20) throw bad("hidden_dim", h.hidden_dim);
  if (h.n_layers <= 0 || h.n_layers > 1024) throw bad("n_layers", h.n_layers);
  if (h.n_heads <= 0 || h.dim % h.n_heads != 0) throw bad("n_heads", h.n_heads);
  if (h.n_kv_heads <= 0 || h.n_heads % h.n_kv_heads != 0) throw bad("n_kv_heads", h.n_kv_heads);
  if (h.vocab_size == 0 || std::abs(h.vocab_size) > 1 << 24) throw bad("vocab_size", h.vocab_size);
  if (h.seq_len <= 0 || h.seq_len > 1 << 24) throw bad("seq_len", h.seq_len);
  return h;
}

ModelShape shape_from_header(const Llama2cHeader& h, const std::string& path) {
  ModelShape s;
  s.name = std::filesystem::path(path).stem().string();
  s.dim = h.dim;
  s.hidden_dim = h.hidden_dim;
  s.n_layers = h.n_layers;
  s.n_heads = h.n_heads;
  s.n_kv_heads = h.n_kv_heads;
  s.vocab_size = std::abs(h.vocab_size);
  s.max_seq_len = h.seq_len;
  s.tied_embeddings = h.vocab_size > 0;  // llama2.c: negative vocab means a separate classifier
  return s;
}

std::ifstream open_checkpoint(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open llama2.c checkpoint", path));
  return f;
}

}  // namespace

Weights load_llama2c(const std::string& path) {
  auto f = open_checkpoint(path);
  const ModelShape s = shape_from_header(read_header(f, path), path);
  const std::size_t d = s.dim, kv = s.kv_dim(), h = s.hidden_dim, L = s.n_layers, V = s.vocab_size;
  const std::size_t rope_tables = std::size_t(s.max_seq_len) * s.head_dim();  // two tables of seq*hd/2
  const std::size_t expected_floats = V * d + L * (2 * d + 2 * d * d + 2 * kv * d + 3 * h * d) + d + rope_tables +
                                      (s.tied_embeddings ? 0 : V * d);
  const auto file_bytes = std::filesystem::file_size(path);
  if (file_bytes != sizeof(Llama2cHeader) + expected_floats * sizeof(float))
    throw std::runtime_error(fmt::format("{}: {} bytes, but its header (dim {}, layers {}, vocab {}) needs {}", path,
                                         file_bytes, s.dim, s.n_layers, s.vocab_size,
                                         sizeof(Llama2cHeader) + expected_floats * sizeof(float)));
  const auto read = [&](std::size_t n) {
    std::vector<float> v(n);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(float)));
    return v;
  };
  Weights w;
  w.shape = s;
  w.token_embedding = read(V * d);
  w.layers.resize(L);
  // The file stores each tensor kind for all layers together.
  for (auto& l : w.layers) l.rms_att = read(d);
  for (auto& l : w.layers) l.wq = read(d * d);
  for (auto& l : w.layers) l.wk = read(kv * d);
  for (auto& l : w.layers) l.wv = read(kv * d);
  for (auto& l : w.layers) l.wo = read(d * d);
  for (auto& l : w.layers) l.rms_ffn = read(d);
  for (auto& l : w.layers) l.w1 = read(h * d);
  for (auto& l : w.layers) l.w2 = read(d * h);
  for (auto& l : w.layers) l.w3 = read(h * d);
  w.rms_final = read(d);
  f.seekg(static_cast<std::streamoff>(rope_tables * sizeof(float)), std::ios::cur);  // precomputed RoPE: unused
  if (!s.tied_embeddings) w.classifier = read(V * d);
  if (!f) throw std::runtime_error(fmt::format("{}: read failed", path));
  return w;
}

ModelShape model_shape(const ModelConfig& cfg) {
  if (cfg.source == "gguf") return gguf_shape(GgufFile(expand_path(cfg.gguf)));
  if (cfg.source == "hf") return check_hf_checkpoint(expand_path(cfg.path));
  if (cfg.source == "llama2c") {
    const std::string path = expand_path(cfg.path);
    auto f = open_checkpoint(path);
    return shape_from_header(read_header(f, path), path);
  }
  if (auto p = find_preset(cfg.preset)) return *p;
  throw std::runtime_error(fmt::format("unknown model preset \"{}\"", cfg.preset));
}

namespace {

// The first number in a small text file (cgroup files, meminfo fields); nullopt when absent.
std::optional<std::uint64_t> read_number(const std::string& path, const std::string& field = "") {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!field.empty() && line.rfind(field, 0) != 0) continue;
    const std::string rest = line.substr(field.size());
    const std::size_t at = rest.find_first_of("0123456789");
    if (at == std::string::npos) return std::nullopt;  // e.g. cgroup v2 "max": no limit
    try {
      return std::stoull(rest.substr(at));
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<HostMemory> host_memory_available() {
  std::optional<HostMemory> best;
  const auto bound = [&](std::optional<std::uint64_t> bytes, std::string source) {
    if (bytes && (!best || *bytes < best->bytes)) best = HostMemory{*bytes, std::move(source)};
  };
  if (auto kb = read_number("/proc/meminfo", "MemAvailable:")) bound(*kb * 1024, "MemAvailable in /proc/meminfo");
  // cgroup v2, then v1: the limit less what the group already uses.
  const auto cgroup = [&](const std::string& limit, const std::string& usage) {
    const auto max = read_number(limit), cur = read_number(usage);
    if (max && cur && *max < (std::uint64_t{1} << 60)) bound(*max > *cur ? *max - *cur : 0, "the cgroup memory limit (" + limit + ")");
  };
  cgroup("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current");
  cgroup("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes");
  if (const char* env = std::getenv("ABLATE_HOST_MEMORY_MB"); env && *env) {
    char* end = nullptr;
    const double mb = std::strtod(env, &end);
    if (end == env || *end != '\0' || !(mb >= 0) || mb > 1e12)
      throw std::runtime_error(fmt::format("ABLATE_HOST_MEMORY_MB=\"{}\" is not a number of MiB", env));
    bound(static_cast<std::uint64_t>(mb * 1048576.0), "ABLATE_HOST_MEMORY_MB");
  }
  return best;
}

std::uint64_t weights_host_bytes(const ModelShape& shape) {
  return static_cast<std::uint64_t>(shape.param_count()) * sizeof(float);
}

void check_weights_fit(const ModelShape& shape, const std::string& what, const std::optional<HostMemory>& available) {
  const std::uint64_t need = weights_host_bytes(shape);
  if (!available || need <= available->bytes) return;
  const auto size = [](std::uint64_t b) {
    return b >= (1u << 30) ? fmt::format("{:.2f} GiB", static_cast<double>(b) / (1u << 30))
                           : fmt::format("{:.0f} MiB", static_cast<double>(b) / (1u << 20));
  };
  throw std::runtime_error(fmt::format(
      "{}: its weights need {} of host memory ({:.0f}M parameters in fp32, loaded on the host by every backend), "
      "more than the {} available ({}); not loading it. Use a smaller model or a machine with more memory",
      what, size(need), static_cast<double>(shape.param_count()) / 1e6, size(available->bytes), available->source));
}

bool has_stored_encoding(const std::string& source) { return source == "gguf" || source == "hf"; }

Weights load_weights(const ModelConfig& cfg, bool keep_stored) {
  if (keep_stored && !has_stored_encoding(cfg.source))
    throw std::invalid_argument(fmt::format("dtype native keeps a checkpoint file's own encoding; model.source {} has none", cfg.source));
  // Every source's shape is known before its weights are read (a header, GGUF metadata or a
  // preset): refuse a model that cannot fit here with a message rather than the OOM killer.
  const ModelShape shape = model_shape(cfg);
  const std::string what = cfg.source == "gguf"                            ? expand_path(cfg.gguf)
                           : cfg.source == "llama2c" || cfg.source == "hf" ? expand_path(cfg.path)
                                                                           : fmt::format("model.preset {}", cfg.preset);
  check_weights_fit(shape, what, host_memory_available());
  if (cfg.source == "gguf") return load_gguf(GgufFile(expand_path(cfg.gguf)), keep_stored);
  if (cfg.source == "llama2c") return load_llama2c(expand_path(cfg.path));
  if (cfg.source == "hf") return load_hf(expand_path(cfg.path), keep_stored);
  return synthetic_weights(shape, static_cast<unsigned long long>(cfg.seed));
}

}  // namespace ablate
