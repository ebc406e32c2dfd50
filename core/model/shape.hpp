#pragma once
// The shape of a Llama-architecture transformer, and the named presets.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ablate {

// Llama 3.1's RoPE scaling (Hugging Face rope_type "llama3"): frequencies whose wavelength is
// longer than original_max_position / low_freq_factor are divided by `factor`, those shorter than
// original_max_position / high_freq_factor are kept, and the band between is interpolated.
// A GGUF holds the same scaling as llama.cpp's per-pair divisors instead (tensor rope_freqs.weight):
// freq_factors, which then replace the formula.
struct RopeScaling {
  float factor = 0;  // 0: no scaling (unless freq_factors are given)
  float low_freq_factor = 1;
  float high_freq_factor = 4;
  int original_max_position = 8192;
  std::vector<float> freq_factors;  // head_dim / 2 divisors of the pairs' frequencies; empty: none

  bool active() const { return factor != 0 || !freq_factors.empty(); }
};

struct ModelShape {
  std::string name;
  int dim = 0;          // hidden size
  int hidden_dim = 0;   // SwiGLU FFN inner size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;   // < n_heads means grouped-query attention
  int vocab_size = 0;
  int max_seq_len = 0;  // longest position the model accepts
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tied_embeddings = true;  // LM head shares the token embedding
  bool qkv_bias = false;        // Q, K and V projections have biases (Qwen2)
  RopeScaling rope_scaling;     // inactive (factor 0, no freq_factors): plain RoPE

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head
  // Number of weight scalars, as the backend holds them (LM head counted once when tied).
  long long param_count() const;
  // K and V floats stored per token, summed over layers.
  long long kv_floats_per_token() const { return 2LL * n_layers * kv_dim(); }
  // RoPE's head_dim / 2 angular frequencies, pair i rotating by position * freq[i]: theta^(-2i/hd)
  // in llama2.c's float arithmetic, then rope_scaling applied when it is active: each divided by
  // its freq_factors entry (in float, as llama.cpp), or else the llama3 formula (in double).
  std::vector<float> rope_frequencies() const;
};

// Presets: tiny (tests), stories260k, smollm2-135m, llama2-7b, llama3-8b, qwen2.5-7b (the last three shape
// only: too big for CPU runs).
std::optional<ModelShape> find_preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace ablate
