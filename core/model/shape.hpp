#pragma once
// The shape of a Llama-architecture transformer, and the named presets.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ablate {

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

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head
  // Number of weight scalars, as the backend holds them (LM head counted once when tied).
  long long param_count() const;
  // K and V floats stored per token, summed over layers.
  long long kv_floats_per_token() const { return 2LL * n_layers * kv_dim(); }
};

// Presets: tiny (tests), stories260k, smollm2-135m, llama2-7b (shape only; too big for CPU runs).
std::optional<ModelShape> find_preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace ablate
