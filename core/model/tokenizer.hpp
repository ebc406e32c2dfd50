#pragma once
// The SentencePiece-style tokenizer of llama2.c checkpoints (tok512.bin and friends).
#include <string>
#include <unordered_map>
#include <vector>

namespace ablate {

class Llama2cTokenizer {
 public:
  static constexpr int kBos = 1;
  static constexpr int kEos = 2;

  Llama2cTokenizer(const std::string& path, int vocab_size);
  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  // The text of `token` following `prev` (after BOS one leading space is dropped; <0xHH> is a byte).
  std::string decode(int prev, int token) const;
  std::string decode(const std::vector<int>& tokens) const;  // tokens[0] is taken as following BOS
  // Byte-pair encoding by merge scores, as llama2.c does (a leading space is added, like SentencePiece).
  std::vector<int> encode(const std::string& text, bool bos, bool eos) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> ids_;
};

}  // namespace ablate
