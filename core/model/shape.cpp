#include "model/shape.hpp"

namespace ablate {

long long ModelShape::param_count() const {
  const long long d = dim, h = hidden_dim, kv = kv_dim(), v = vocab_size;
  const long long per_layer = 2 * d + d * d * 2 + d * kv * 2 + 3 * d * h;  // norms, wq wo, wk wv, w1 w2 w3
  return v * d * (tied_embeddings ? 1 : 2) + n_layers * per_layer + d;
}

namespace {
const std::vector<ModelShape>& presets() {
  static const std::vector<ModelShape> all = {
      // name          dim   hidden layers heads kv  vocab  seq   theta     eps   tied
      {"tiny",          64,   128,   2,    4,    2,   256,   512,  10000.f,  1e-5f, true},
      {"stories260k",   64,   172,   5,    8,    4,   512,   512,  10000.f,  1e-5f, true},
      {"smollm2-135m", 576,  1536,  30,    9,    3, 49152,  8192, 100000.f,  1e-5f, true},
      // speculative draft for smollm2-135m: its vocabulary, ~5 % of its weights, ~1/10 of its CPU decode time
      {"smollm2-draft", 128,  384,   4,    2,    1, 49152,  8192, 100000.f,  1e-5f, true},
      {"llama2-7b",   4096, 11008,  32,   32,   32, 32000,  4096,  10000.f,  1e-5f, false},
      // speculative draft for llama2-7b: its vocabulary, the shape of a 160M Llama draft (JackFram/llama-160m)
      {"llama2-draft", 768,  3072,  12,   12,   12, 32000,  2048,  10000.f,  1e-5f, false},
  };
  return all;
}
}  // namespace

std::optional<ModelShape> find_preset(std::string_view name) {
  for (const auto& p : presets())
    if (p.name == name) return p;
  return std::nullopt;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& p : presets()) names.push_back(p.name);
  return names;
}

}  // namespace ablate
