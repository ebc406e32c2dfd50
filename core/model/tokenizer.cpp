#include "model/tokenizer.hpp"

#include <cstdint>
#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

Llama2cTokenizer::Llama2cTokenizer(const std::string& path, int vocab_size) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(fmt::format("{}: cannot open tokenizer", path));
  int32_t max_len = 0;
  f.read(reinterpret_cast<char*>(&max_len), sizeof max_len);
  for (int i = 0; i < vocab_size; ++i) {
    float score = 0;
    int32_t len = 0;
    f.read(reinterpret_cast<char*>(&score), sizeof score);
    f.read(reinterpret_cast<char*>(&len), sizeof len);
    if (!f || len < 0 || len > 4096)
      throw std::runtime_error(fmt::format("{}: token {} is malformed (expected {} tokens)", path, i, vocab_size));
    std::string piece(static_cast<std::size_t>(len), '\0');
    f.read(piece.data(), len);
    if (!f) throw std::runtime_error(fmt::format("{}: truncated at token {}", path, i));
    ids_.emplace(piece, i);
    pieces_.push_back(std::move(piece));
    scores_.push_back(score);
  }
}

std::string Llama2cTokenizer::decode(int prev, int token) const {
  if (token < 0 || token >= vocab_size()) return {};
  std::string_view piece = pieces_[static_cast<std::size_t>(token)];
  if (prev == kBos && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
  unsigned byte = 0;
  if (piece.size() == 6 && std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1)
    return std::string(1, static_cast<char>(byte));
  return std::string(piece);
}

std::string Llama2cTokenizer::decode(const std::vector<int>& tokens) const {
  std::string out;
  int prev = kBos;
  for (int t : tokens) {
    out += decode(prev, t);
    prev = t;
  }
  return out;
}

std::vector<int> Llama2cTokenizer::encode(const std::string& text, bool bos, bool eos) const {
  std::vector<int> out;
  if (bos) out.push_back(kBos);
  if (!text.empty()) {
    if (auto it = ids_.find(" "); it != ids_.end()) out.push_back(it->second);  // SentencePiece's dummy prefix
  }
  // Start from UTF-8 code points (byte tokens <0xHH> = 3 + byte when a code point is unknown).
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = 1;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xF0) len = 4; else if (c >= 0xE0) len = 3; else if (c >= 0xC0) len = 2;
    len = std::min(len, text.size() - i);
    auto it = ids_.find(text.substr(i, len));
    if (it != ids_.end()) {
      out.push_back(it->second);
    } else {
      for (std::size_t b = 0; b < len; ++b) out.push_back(static_cast<unsigned char>(text[i + b]) + 3);
    }
    i += len;
  }
  // Repeatedly merge the adjacent pair whose merged piece has the best score.
  const std::size_t first = bos ? 1 : 0;
  while (true) {
    float best = -1e30f;
    int best_id = -1;
    std::size_t best_at = 0;
    for (std::size_t i = first; i + 1 < out.size(); ++i) {
      auto it = ids_.find(pieces_[static_cast<std::size_t>(out[i])] + pieces_[static_cast<std::size_t>(out[i + 1])]);
      if (it != ids_.end() && scores_[static_cast<std::size_t>(it->second)] > best) {
        best = scores_[static_cast<std::size_t>(it->second)];
        best_id = it->second;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    out[best_at] = best_id;
    out.erase(out.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  if (eos) out.push_back(kEos);
  return out;
}

}  // namespace ablate
