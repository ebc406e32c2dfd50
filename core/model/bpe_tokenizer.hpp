#pragma once
// GPT-2 byte-level BPE, built from a GGUF file's tokenizer metadata (tokenizer.ggml.model "gpt2":
// tokens, merges, token types, BOS/EOS ids, and the pre-tokenizer tokenizer.ggml.pre).
// Pre-tokenizers: "gpt-2"/"default" (the GPT-2 split regex), "smollm" (every digit split
// off on its own first, then the GPT-2 regex), "llama3" and "qwen2" (their split regexes, which keep
// a leading non-letter with a word and cut digits into runs of 3 / 1), as llama.cpp and Hugging
// Face tokenizers do. A tokenizer.json is read by model/hf_checkpoint.hpp's load_hf_tokenizer.
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/tokenizer.hpp"

namespace ablate {

class GgufFile;

class BpeTokenizer final : public Tokenizer {
 public:
  // Throws std::runtime_error naming the file for a tokenizer it does not support.
  explicit BpeTokenizer(const GgufFile& f);
  // A tokenizer from parts (tests): tokens in GPT-2's byte-to-unicode spelling, merges "a b".
  // `ignore_merges` (Hugging Face's BPE option, Llama 3): a pre-tokenized piece found whole in the
  // vocabulary is that token.
  BpeTokenizer(std::vector<std::string> tokens, std::vector<int> token_types, const std::vector<std::string>& merges,
               std::string pre, int bos, int eos, bool add_bos, bool ignore_merges = false);
  // Text between special tokens is put in Unicode NFC before it is split (tokenizer.json's
  // normalizer NFC, Qwen2's): decode(encode(text)) is then NFC(text).
  void set_nfc(bool on) { nfc_ = on; }

  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  std::vector<int> tokenize(const std::string& text) const override { return encode(text, add_bos_, true); }
  std::string detokenize(const std::vector<int>& tokens) const override { return decode(tokens); }
  std::string token_text(int /*prev*/, int token) const override { return decode_token(token); }

  // `parse_special`: control / user-defined tokens written in the text (e.g. "<|im_start|>") become
  // their ids; otherwise they are tokenized as plain text.
  std::vector<int> encode(const std::string& text, bool bos = false, bool parse_special = true) const;
  std::string decode(const std::vector<int>& tokens) const;
  std::string decode_token(int token) const;  // the token's bytes; "" for an id out of range
  const std::string& pre() const { return pre_; }
  // The pre-tokenizer's pieces of `text` (byte strings), exposed for tests.
  std::vector<std::string> pre_tokenize(const std::string& text) const;

 private:
  void init(const std::vector<std::string>& merges, const std::string& origin);
  void encode_piece(const std::string& piece, std::vector<int>& out) const;
  void encode_plain(const std::string& text, std::vector<int>& out) const;

  std::vector<std::string> tokens_;
  std::vector<int> types_;
  std::vector<std::string> bytes_;  // each token's decoded bytes
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<std::string, int> ranks_;  // "left right" -> merge rank
  std::vector<std::pair<std::string, int>> specials_;  // text -> id, longest first
  int byte_ids_[256];                                  // id of each single-byte token (-1: none)
  std::string pre_;
  bool split_digits_ = false;
  int bos_ = -1, eos_ = -1;
  bool add_bos_ = false;
  bool ignore_merges_ = false;
  bool nfc_ = false;
};

}  // namespace ablate
