#pragma once
// Tokenizers: the common interface, and the SentencePiece-style tokenizer of llama2.c checkpoints
// (tok512.bin and friends). The GPT-2 byte-level BPE of GGUF files is model/bpe_tokenizer.hpp.
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ablate {

struct ModelConfig;

// What `ablate generate` and text workloads need from a tokenizer.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;  // -1: none
  virtual int eos_id() const = 0;  // -1: none
  // A prompt's token ids (with BOS when the model's tokenizer adds one).
  virtual std::vector<int> tokenize(const std::string& text) const = 0;
  // The text of generated tokens (`tokens` continue a prompt).
  virtual std::string detokenize(const std::vector<int>& tokens) const = 0;
  // The bytes of one token, following `prev` (for streaming output).
  virtual std::string token_text(int prev, int token) const = 0;
};

// The tokenizer of a model config: gguf = the file's own (BPE), hf = the folder's tokenizer.json (BPE),
// llama2c = model.tokenizer.
// Throws std::runtime_error when the config has none.
std::unique_ptr<Tokenizer> load_tokenizer(const ModelConfig& cfg);

class Llama2cTokenizer final : public Tokenizer {
 public:
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;

  // Reads vocab_size (>= 3: <unk>, <s>, </s> come first) pieces; throws std::runtime_error naming
  // the file on a short or malformed one.
  Llama2cTokenizer(const std::string& path, int vocab_size);
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int bos_id() const override { return kBos; }
  // The token that ends a generation: llama2.c's TinyStories models delimit stories with BOS (1),
  // never EOS (2), and llama2.c's run.c stops when it samples BOS; so does ablate.
  static constexpr int kStop = kBos;
  int eos_id() const override { return kStop; }
  std::vector<int> tokenize(const std::string& text) const override { return encode(text, true, false); }
  std::string detokenize(const std::vector<int>& tokens) const override { return decode(tokens); }
  std::string token_text(int prev, int token) const override { return decode(prev, token); }
  // The text of `token` following `prev` (after BOS one leading space is dropped; <0xHH> is a byte).
  std::string decode(int prev, int token) const;
  std::string decode(const std::vector<int>& tokens) const;  // tokens[0] is taken as following BOS
  // Byte-pair encoding by merge scores, as llama2.c does (a leading space is added, like SentencePiece).
  // A code point with no piece of its own becomes its bytes' <0xHH> tokens; throws
  // std::runtime_error naming the byte when the vocabulary has no such token.
  std::vector<int> encode(const std::string& text, bool bos, bool eos) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
  int byte_ids_[256];  // id of each byte's <0xHH> piece (-1: none)
};

}  // namespace ablate
