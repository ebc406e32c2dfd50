#pragma once
// Hugging Face checkpoint folders (model.source: hf): config.json, model.safetensors or shards
// listed in model.safetensors.index.json, and tokenizer.json (model/bpe_tokenizer.hpp reads that).
//
// Architectures: LlamaForCausalLM (Llama 2 / 3.x, SmolLM2, TinyLlama; rope_scaling llama3),
// MistralForCausalLM without a sliding window, Qwen2ForCausalLM (Q/K/V biases). Weights are
// F32, F16 or BF16, widened to fp32. Hugging Face orders each head's Q and K rows for RoPE by
// rotate_half (pairs i, i + head_dim/2); the backends rotate adjacent pairs (llama2.c, GGUF), so
// the loader permutes those rows (and the Q/K biases) as llama.cpp's converter does.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "model/shape.hpp"

namespace ablate {

struct Weights;
struct StoredMatrix;
class BpeTokenizer;

struct HfConfig {
  std::string folder;
  std::string architecture;  // architectures[0]
  ModelShape shape;          // name = the folder's name
  int bos_token_id = -1;     // -1: none; the first of a list
  int eos_token_id = -1;
};

// Hugging Face's per-head row order for RoPE (rotate_half: pairs i, i + hd/2) to the backends'
// adjacent pairs (2i, 2i + 1): new row h*hd + 2i + s is old row h*hd + s*hd/2 + i (llama.cpp's
// convert_hf_to_gguf permute). w is [n_heads * hd][cols]; `cols` = 1 for a bias; empty stays empty.
std::vector<float> interleave_rope_rows(const std::vector<float>& w, int n_heads, int hd, std::size_t cols);
// The same reordering of a matrix kept in its stored encoding (dtype native): whole rows of bytes.
void interleave_rope_rows(StoredMatrix& m, int n_heads, int hd);

// Reads and checks `folder`/config.json. Throws std::runtime_error naming the file and the field
// (a missing config.json, an unsupported architecture or rope_scaling type, a value out of range).
HfConfig read_hf_config(const std::string& folder);
// The weights of `folder`: every tensor's shape checked against config.json, errors naming the
// safetensors file (or the index's missing shard) and the tensor.
// keep_stored (dtype native): the matrices also stay as stored (F32, F16 or BF16 bytes, as a
// GGUF's of the same type), the fp32 ones left empty; vectors and the embedding are fp32 always.
Weights load_hf(const std::string& folder, bool keep_stored = false);
// The shape, after checking without reading them that every tensor config.json implies is in the
// safetensors files (headers only: shard present, name, shape, dtype). What `ablate validate` runs.
ModelShape check_hf_checkpoint(const std::string& folder);
// `folder`/tokenizer.json as the byte-level BPE tokenizer: model.type BPE (vocab, merges,
// ignore_merges), the added tokens (parsed out of text), the pre-tokenizer (ByteLevel's GPT-2 regex,
// SmolLM2's Digits(individual) + ByteLevel, or Llama 3's / Qwen2's Split regex + ByteLevel), a BOS
// when the post-processor's template starts with one; BOS/EOS ids from config.json. Anything else
// (another model type, pre-tokenizer or normalizer than NFC) throws, naming the file and field.
std::unique_ptr<BpeTokenizer> load_hf_tokenizer(const std::string& folder);

}  // namespace ablate
