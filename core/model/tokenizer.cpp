#include "model/tokenizer.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <queue>
#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

Llama2cTokenizer::Llama2cTokenizer(const std::string& path, int vocab_size) {
  if (vocab_size < 3)  // BOS and EOS are ids 1 and 2
    throw std::runtime_error(fmt::format("{}: a vocabulary of {} tokens; a llama2.c tokenizer has at least 3 (<unk>, <s>, </s>)",
                                         path, vocab_size));
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
  for (int b = 0; b < 256; ++b) {
    const auto it = ids_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = it == ids_.end() ? -1 : it->second;
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
      for (std::size_t b = 0; b < len; ++b) {  // byte fallback: <0xHH>, id 3 + HH in llama2.c's vocabularies
        const auto byte = static_cast<unsigned char>(text[i + b]);
        if (byte_ids_[byte] < 0)
          throw std::runtime_error(fmt::format("llama2.c tokenizer: byte 0x{:02X} at offset {} of the text has no piece and "
                                               "the vocabulary of {} has no byte token <0x{:02X}>",
                                               byte, i + b, pieces_.size(), byte));
        out.push_back(byte_ids_[byte]);
      }
    }
    i += len;
  }
  // Repeatedly merge the adjacent pair whose merged piece has the best score (leftmost among equal
  // scores; a score must beat -1e30, as in llama2.c). A heap of candidate pairs over a linked list
  // of symbols: O(n log n), where rescanning every pair per merge took O(n^2) (minutes for a long
  // prompt). An entry is stale once either side is gone or holds another piece.
  const int first = bos ? 1 : 0, n = static_cast<int>(out.size());
  std::vector<int> next(static_cast<std::size_t>(std::max(n, 0))), prev(next.size());
  std::vector<char> alive(next.size(), 1);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i > first ? i - 1 : -1;
  }
  struct Cand {
    float score;
    int left, right, left_id, right_id, id;
    bool operator<(const Cand& o) const { return score != o.score ? score < o.score : left > o.left; }  // top: best, leftmost
  };
  std::priority_queue<Cand> heap;
  std::string key;
  const auto push = [&](int l, int r) {
    if (l < first || r < 0) return;
    const auto L = static_cast<std::size_t>(out[l]), R = static_cast<std::size_t>(out[r]);
    key.assign(pieces_[L]).append(pieces_[R]);
    if (auto it = ids_.find(key); it != ids_.end() && scores_[static_cast<std::size_t>(it->second)] > -1e30f)
      heap.push({scores_[static_cast<std::size_t>(it->second)], l, r, out[l], out[r], it->second});
  };
  for (int i = first; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || out[c.left] != c.left_id || out[c.right] != c.right_id)
      continue;
    out[c.left] = c.id;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  std::size_t kept = 0;
  for (int i = 0; i < n; ++i)
    if (alive[i]) out[kept++] = out[i];
  out.resize(kept);
  if (eos) out.push_back(kEos);
  return out;
}

}  // namespace ablate
