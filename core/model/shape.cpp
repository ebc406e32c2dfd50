#include "model/shape.hpp"

#include <cmath>

namespace ablate {

long long ModelShape::param_count() const {
  const long long d = dim, h = hidden_dim, kv = kv_dim(), v = vocab_size;
  const long long per_layer = 2 * d + d * d * 2 + d * kv * 2 + 3 * d * h +  // norms, wq wo, wk wv, w1 w2 w3
                              (qkv_bias ? d + 2 * kv : 0);
  return v * d * (tied_embeddings ? 1 : 2) + n_layers * per_layer + d;
}

std::vector<float> ModelShape::rope_frequencies() const {
  const int hd = head_dim();
  std::vector<float> freq(static_cast<std::size_t>(hd / 2));
  for (int i = 0; i < hd; i += 2) freq[static_cast<std::size_t>(i / 2)] = 1.0f / powf(rope_theta, i / (float)hd);  // llama2.c's
  const RopeScaling& r = rope_scaling;
  if (!r.freq_factors.empty()) {  // a GGUF's rope_freqs (gguf_shape checked its length and values)
    for (std::size_t i = 0; i < freq.size(); ++i) freq[i] /= r.freq_factors.at(i);
    return freq;
  }
  if (r.factor == 0) return freq;
  // Hugging Face's _compute_llama3_parameters.
  const double low_wavelen = r.original_max_position / double(r.low_freq_factor);
  const double high_wavelen = r.original_max_position / double(r.high_freq_factor);
  for (float& f : freq) {
    const double wavelen = 2 * M_PI / f;
    if (wavelen < high_wavelen) continue;  // high frequencies: unchanged
    if (wavelen > low_wavelen) {           // low frequencies: divided by the factor
      f = static_cast<float>(f / double(r.factor));
      continue;
    }
    const double smooth = (r.original_max_position / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    f = static_cast<float>((1 - smooth) * f / r.factor + smooth * f);
  }
  return freq;
}

namespace {
const std::vector<ModelShape>& presets() {
  static const std::vector<ModelShape> all = {
      // name          dim   hidden layers heads kv  vocab  seq   theta     eps   tied  qkv_bias rope_scaling
      {"tiny",          64,   128,   2,    4,    2,   256,   512,  10000.f,  1e-5f, true, false, {}},
      {"stories260k",   64,   172,   5,    8,    4,   512,   512,  10000.f,  1e-5f, true, false, {}},
      {"smollm2-135m", 576,  1536,  30,    9,    3, 49152,  8192, 100000.f,  1e-5f, true, false, {}},
      // speculative draft for smollm2-135m: its vocabulary, ~5 % of its weights, ~1/10 of its CPU decode time
      {"smollm2-draft", 128,  384,   4,    2,    1, 49152,  8192, 100000.f,  1e-5f, true, false, {}},
      {"llama2-7b",   4096, 11008,  32,   32,   32, 32000,  4096,  10000.f,  1e-5f, false, false, {}},
      // speculative draft for llama2-7b: its vocabulary, the shape of a 160M Llama draft (JackFram/llama-160m)
      {"llama2-draft", 768,  3072,  12,   12,   12, 32000,  2048,  10000.f,  1e-5f, false, false, {}},
      // Meta-Llama-3-8B and Qwen2.5-7B-Instruct (config.json), for synthetic runs at the shapes of
      // the Hugging Face checkpoints (model.source: hf) they stand in for
      {"llama3-8b",   4096, 14336,  32,   32,    8, 128256, 8192, 500000.f, 1e-5f, false, false, {}},
      {"qwen2.5-7b",  3584, 18944,  28,   28,    4, 152064, 32768, 1000000.f, 1e-6f, false, true, {}},
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
