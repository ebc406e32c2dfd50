#pragma once
// A GGUF (v2/v3) reader for llama-architecture checkpoints: metadata, tensor infos, alignment,
// and tensors dequantised to fp32 (every type ggml_blocks.hpp decodes: F32, F16, BF16, Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0 and the K-quants Q2_K to Q6_K).
//
// The file is memory-mapped. Every offset, count and size read from it is bounds-checked: a
// truncated or malformed file throws GgufError naming the file and the field, never reads out of
// bounds. (tests/fuzz/fuzz_gguf.cpp drives the parser with libFuzzer.)
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "model/ggml_blocks.hpp"
#include "model/shape.hpp"

namespace ablate {

struct Weights;

class GgufError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// GGUF metadata value types (gguf.md).
enum class GgufType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9, U64 = 10,
  I64 = 11, F64 = 12,
};

// One metadata value. Scalars: integers in i/u (both set when representable), floats in f,
// strings in s. Arrays: elem_type, count, and the elements in ints / floats / strs by kind
// (nested arrays are parsed and bounds-checked but their elements are not kept).
struct GgufValue {
  GgufType type = GgufType::U8;
  std::int64_t i = 0;
  std::uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string s;
  GgufType elem_type = GgufType::U8;
  std::uint64_t count = 0;
  std::vector<std::int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strs;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;  // ne[0] first: the innermost (contiguous) dimension
  std::uint32_t type = 0;
  std::uint64_t offset = 0;         // from the start of the data section
  std::uint64_t n_elements = 0;
  std::uint64_t n_bytes = 0;
};

class GgufFile {
 public:
  // Maps and parses `path` (header, metadata, tensor infos; tensor data is only checked to lie
  // inside the file).
  explicit GgufFile(const std::string& path);
  // Parses bytes already in memory (not copied; must outlive the object). `name` stands in for
  // the path in errors. For the fuzzer and tests.
  GgufFile(const void* data, std::size_t size, std::string name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t data_offset() const { return data_offset_; }
  std::size_t file_size() const { return size_; }
  const std::map<std::string, GgufValue>& metadata() const { return meta_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  const GgufValue* find(const std::string& key) const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // Typed getters: throw GgufError naming the file and key when missing or of the wrong type.
  std::string get_string(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;  // any integer type
  double get_float(const std::string& key) const;      // any integer or float type
  bool get_bool(const std::string& key, bool fallback) const;
  std::optional<std::int64_t> get_int_opt(const std::string& key) const;
  std::optional<double> get_float_opt(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;

  // The tensor's raw bytes (inside the mapping) and its values as fp32.
  const std::uint8_t* tensor_data(const GgufTensorInfo& t) const;
  std::vector<float> dequantize(const GgufTensorInfo& t) const;

 private:
  void parse();
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;  // owned mapping (nullptr when parsing caller's memory)
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> meta_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

// The model shape from a llama- or qwen2-architecture GGUF's metadata (name = the file's stem).
ModelShape gguf_shape(const GgufFile& f);
// Weights from a llama or qwen2 GGUF: token_embd, blk.N.{attn_q,attn_k,attn_v,attn_output,
// ffn_gate,ffn_up,ffn_down,attn_norm,ffn_norm}, output_norm, output (absent = tied embeddings);
// qwen2 also blk.N.attn_{q,k,v}.bias; rope_freqs.weight (head_dim / 2 positive factors, Llama 3.x's
// scaled RoPE as llama.cpp stores it) becomes the shape's rope_scaling.freq_factors.
// keep_stored: the matrices (and the LM head) as StoredMatrix in the file's encoding, their fp32
// vectors left empty (dtype native); the embedding table and norms are fp32 either way.
Weights load_gguf(const GgufFile& f, bool keep_stored = false);
Weights load_gguf(const std::string& path);

}  // namespace ablate
