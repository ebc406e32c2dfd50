#include "model/bpe_tokenizer.hpp"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstdint>
#include <functional>
#include <queue>
#include <stdexcept>

#include <fmt/format.h>
#include <utf8proc.h>

#include "base/experiment_config.hpp"
#include "base/paths.hpp"
#include "model/gguf.hpp"
#include "model/hf_checkpoint.hpp"
#include "model/weights.hpp"

namespace ablate {

namespace {

struct CodeRange {
  std::uint32_t lo, hi;
};
#include "model/unicode_ranges.inc"

template <std::size_t N>
bool in_ranges(const CodeRange (&r)[N], std::uint32_t cp) {
  const auto* it = std::upper_bound(std::begin(r), std::end(r), cp, [](std::uint32_t c, const CodeRange& x) { return c < x.lo; });
  return it != std::begin(r) && cp <= (it - 1)->hi;
}

constexpr std::uint32_t kInvalid = 0xFFFFFFFFu;  // a byte that is not valid UTF-8: its own "other" class

bool is_letter(std::uint32_t cp) { return cp != kInvalid && (cp < 0x80 ? (cp | 0x20) - 'a' < 26 : in_ranges(kLetterRanges, cp)); }
bool is_number(std::uint32_t cp) { return cp != kInvalid && (cp < 0x80 ? cp - '0' < 10 : in_ranges(kNumberRanges, cp)); }
bool is_space(std::uint32_t cp) {  // Unicode White_Space, as \s in the tokenizers' regex engines
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

struct Cp {
  std::uint32_t cp;
  std::size_t at, len;  // bytes in the text
};

// UTF-8 to code points; a byte that does not start a valid sequence becomes kInvalid (1 byte),
// so any byte string survives the round trip.
std::vector<Cp> code_points(const std::string& s) {
  std::vector<Cp> out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len = 0;
    std::uint32_t cp = 0, min = 0;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    bool ok = len > 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      else cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok && len > 1 && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (!ok) { len = 1; cp = kInvalid; }
    out.push_back({cp, i, len});
    i += len;
  }
  return out;
}

void append_utf8(std::string& s, std::uint32_t cp) {
  if (cp < 0x80) s += static_cast<char>(cp);
  else if (cp < 0x800) { s += static_cast<char>(0xC0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18)); s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); s += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the others for 256 + n.
struct ByteMap {
  std::string byte_str[256];
  std::unordered_map<std::uint32_t, unsigned char> cp_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const std::uint32_t cp = printable ? static_cast<std::uint32_t>(b) : static_cast<std::uint32_t>(256 + n++);
      append_utf8(byte_str[b], cp);
      cp_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// The GPT-2 split regex over cps[b, e):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void gpt2_split(const std::vector<Cp>& cps, std::size_t b, std::size_t e, std::vector<std::pair<std::size_t, std::size_t>>& out) {
  const auto other = [](std::uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); };
  std::size_t i = b;
  while (i < e) {
    const std::uint32_t c = cps[i].cp;
    if (c == '\'' && i + 1 < e) {
      const std::uint32_t c1 = cps[i + 1].cp, c2 = i + 2 < e ? cps[i + 2].cp : 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') { out.push_back({i, i + 2}); i += 2; continue; }
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) { out.push_back({i, i + 3}); i += 3; continue; }
    }
    std::size_t j = i + (c == ' ' ? 1 : 0);
    if (j < e) {
      bool (*cls)(std::uint32_t) = nullptr;
      if (is_letter(cps[j].cp)) cls = is_letter;
      else if (is_number(cps[j].cp)) cls = is_number;
      else if (other(cps[j].cp)) cls = +[](std::uint32_t x) { return !is_space(x) && !is_letter(x) && !is_number(x); };
      if (cls) {
        while (j < e && cls(cps[j].cp)) ++j;
        out.push_back({i, j});
        i = j;
        continue;
      }
    }
    // Whitespace: a run, less its last character when a non-space follows (that one then
    // prefixes the next word when it is ' ').
    std::size_t k = i;
    while (k < e && is_space(cps[k].cp)) ++k;
    if (k < e && k - i > 1) --k;
    out.push_back({i, k});
    i = k;
  }
}

// Llama 3's split regex (Qwen2's is the same with \p{N} for \p{N}{1,3}: max_digits 1) over cps[b, e):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Alternatives in order, each greedy, as a backtracking engine takes the first that matches.
void llama3_split(const std::vector<Cp>& cps, std::size_t b, std::size_t e, std::size_t max_digits,
                  std::vector<std::pair<std::size_t, std::size_t>>& out) {
  const auto at = [&](std::size_t i) { return i < e ? cps[i].cp : kInvalid - 1; };  // past the end: matches nothing
  const auto newline = [](std::uint32_t c) { return c == '\r' || c == '\n'; };
  const auto other = [](std::uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); };
  const auto lower = [](std::uint32_t c) { return c < 0x80 ? (c | 0x20) : c; };
  std::size_t i = b;
  while (i < e) {
    const std::uint32_t c = cps[i].cp;
    std::size_t j = i;
    if (c == '\'') {  // contractions, any case
      const std::uint32_t c1 = lower(at(i + 1)), c2 = lower(at(i + 2));
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') j = i + 2;
      else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) j = i + 3;
    }
    if (j == i && (is_letter(c) || (i + 1 < e && !newline(c) && !is_letter(c) && !is_number(c) && is_letter(at(i + 1))))) {
      j = is_letter(c) ? i : i + 1;
      while (j < e && is_letter(cps[j].cp)) ++j;
    }
    if (j == i && is_number(c))
      while (j < e && j - i < max_digits && is_number(cps[j].cp)) ++j;
    if (j == i && (other(c) || (c == ' ' && i + 1 < e && other(at(i + 1))))) {
      j = c == ' ' ? i + 1 : i;
      while (j < e && other(cps[j].cp)) ++j;
      while (j < e && newline(cps[j].cp)) ++j;
    }
    if (j == i) {  // whitespace
      std::size_t run = i;
      while (run < e && is_space(cps[run].cp)) ++run;
      std::size_t last_newline = e;
      for (std::size_t k = i; k < run; ++k)
        if (newline(cps[k].cp)) last_newline = k;
      if (last_newline != e) j = last_newline + 1;   // \s*[\r\n]+
      else if (run == e || run - i == 1) j = run;     // \s+(?!\S) at the end, or \s+
      else j = run - 1;                              // \s+(?!\S): the last space goes with the next word
    }
    out.push_back({i, j});
    i = j;
  }
}

}  // namespace

BpeTokenizer::BpeTokenizer(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw std::runtime_error(fmt::format("{}: tokenizer.ggml.model \"{}\" is not supported here (gpt2 byte-level BPE)", f.path(), model));
  const GgufValue* pre = f.find("tokenizer.ggml.pre");
  pre_ = pre && pre->type == GgufType::String ? pre->s : "default";
  if (pre_ == "llama-bpe") {  // llama.cpp's name for Llama 3's pre-tokenizer, whose BPE ignores merges
    pre_ = "llama3";
    ignore_merges_ = true;
  }
  tokens_ = f.get_string_array("tokenizer.ggml.tokens");
  if (const GgufValue* tt = f.find("tokenizer.ggml.token_type")) {
    if (tt->type != GgufType::Array || tt->ints.size() != tokens_.size())
      throw std::runtime_error(fmt::format("{}: tokenizer.ggml.token_type is not an integer array of {} entries", f.path(), tokens_.size()));
    types_.assign(tt->ints.begin(), tt->ints.end());
  }
  const auto id = [&](const char* key) {
    const auto v = f.get_int_opt(key);
    if (v && (*v < 0 || *v >= static_cast<std::int64_t>(tokens_.size())))
      throw std::runtime_error(fmt::format("{}: {} = {} is outside the vocabulary of {}", f.path(), key, *v, tokens_.size()));
    return v ? static_cast<int>(*v) : -1;
  };
  bos_ = id("tokenizer.ggml.bos_token_id");
  eos_ = id("tokenizer.ggml.eos_token_id");
  add_bos_ = f.get_bool("tokenizer.ggml.add_bos_token", false) && bos_ >= 0;
  init(f.get_string_array("tokenizer.ggml.merges"), f.path());
}

BpeTokenizer::BpeTokenizer(std::vector<std::string> tokens, std::vector<int> token_types,
                           const std::vector<std::string>& merges, std::string pre, int bos, int eos, bool add_bos,
                           bool ignore_merges)
    : tokens_(std::move(tokens)), types_(std::move(token_types)), pre_(std::move(pre)), bos_(bos), eos_(eos),
      add_bos_(add_bos), ignore_merges_(ignore_merges) {
  init(merges, "BpeTokenizer");
}

void BpeTokenizer::init(const std::vector<std::string>& merges, const std::string& origin) {
  if (pre_ == "smollm") split_digits_ = true;
  else if (pre_ != "gpt2" && pre_ != "gpt-2" && pre_ != "default" && pre_ != "llama3" && pre_ != "qwen2")
    throw std::runtime_error(fmt::format("{}: pre-tokenizer \"{}\" is not supported; supported: smollm, gpt-2, default, "
                                         "llama3, qwen2", origin, pre_));
  if (tokens_.empty() || tokens_.size() > (1u << 24)) throw std::runtime_error(fmt::format("{}: vocabulary of {} tokens", origin, tokens_.size()));
  if (!types_.empty() && types_.size() != tokens_.size())
    throw std::runtime_error(fmt::format("{}: {} token types for {} tokens", origin, types_.size(), tokens_.size()));
  if (types_.empty()) types_.assign(tokens_.size(), 1);
  const ByteMap& bm = byte_map();
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  bytes_.resize(tokens_.size());
  ids_.reserve(tokens_.size());
  for (std::size_t i = 0; i < tokens_.size(); ++i) {
    const int id = static_cast<int>(i);
    ids_.emplace(tokens_[i], id);
    const bool special = types_[i] == 3 || types_[i] == 4;  // control, user-defined: literal text
    if (special) {
      bytes_[i] = tokens_[i];
      if (!tokens_[i].empty()) specials_.emplace_back(tokens_[i], id);
      continue;
    }
    for (const Cp& c : code_points(tokens_[i])) {
      auto it = bm.cp_byte.find(c.cp);
      if (it != bm.cp_byte.end()) bytes_[i] += static_cast<char>(it->second);
      else bytes_[i] += tokens_[i].substr(c.at, c.len);
    }
  }
  for (int b = 0; b < 256; ++b)
    if (auto it = ids_.find(bm.byte_str[b]); it != ids_.end()) byte_ids_[b] = it->second;
  std::stable_sort(specials_.begin(), specials_.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  ranks_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) ranks_.emplace(merges[r], static_cast<int>(r));
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) const {
  const std::vector<Cp> cps = code_points(text);
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  if (split_digits_) {
    std::size_t run = 0;
    for (std::size_t i = 0; i < cps.size(); ++i) {
      if (!is_number(cps[i].cp)) continue;
      gpt2_split(cps, run, i, spans);
      spans.push_back({i, i + 1});
      run = i + 1;
    }
    gpt2_split(cps, run, cps.size(), spans);
  } else if (pre_ == "llama3" || pre_ == "qwen2") {
    llama3_split(cps, 0, cps.size(), pre_ == "llama3" ? 3 : 1, spans);
  } else {
    gpt2_split(cps, 0, cps.size(), spans);
  }
  std::vector<std::string> pieces;
  pieces.reserve(spans.size());
  for (auto [b, e] : spans)
    if (e > b) pieces.push_back(text.substr(cps[b].at, cps[e - 1].at + cps[e - 1].len - cps[b].at));
  return pieces;
}

void BpeTokenizer::encode_piece(const std::string& piece, std::vector<int>& out) const {
  const ByteMap& bm = byte_map();
  if (ignore_merges_) {  // Llama 3: a piece that is a token of its own is that token, merges or not
    std::string spelled;
    for (unsigned char ch : piece) spelled += bm.byte_str[ch];
    if (auto it = ids_.find(spelled); it != ids_.end() && types_[static_cast<std::size_t>(it->second)] != 3 &&
                                      types_[static_cast<std::size_t>(it->second)] != 4) {
      out.push_back(it->second);
      return;
    }
  }
  // Symbols as a linked list over the piece's bytes; merging is into the left symbol.
  struct Sym {
    std::string text;
    int prev, next;  // -1: none
    bool alive = true;
  };
  std::vector<Sym> sym;
  sym.reserve(piece.size());
  for (std::size_t i = 0; i < piece.size(); ++i)
    sym.push_back({bm.byte_str[static_cast<unsigned char>(piece[i])], static_cast<int>(i) - 1,
                   i + 1 < piece.size() ? static_cast<int>(i) + 1 : -1});
  // Merge the adjacent pair of lowest rank (leftmost among equals) until none is in the merge list:
  // a heap of candidate pairs, O(n log n) (the textbook loop rescans every pair per merge: O(n^2),
  // minutes for a 16 KB word). An entry is stale once either side changed; `len` catches the
  // right side having grown, `alive` and adjacency the rest.
  struct Cand {
    int rank, left, right;
    std::size_t len;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  std::string key;
  const auto push = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    key.assign(sym[l].text).append(" ").append(sym[r].text);
    if (auto it = ranks_.find(key); it != ranks_.end()) heap.push({it->second, l, r, sym[l].text.size() + sym[r].text.size()});
  };
  for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym &l = sym[c.left], &r = sym[c.right];
    if (!l.alive || !r.alive || l.next != c.right || l.text.size() + r.text.size() != c.len) continue;
    l.text += r.text;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    push(l.prev, c.left);
    push(c.left, l.next);
  }
  for (const auto& sy : sym) {
    if (!sy.alive) continue;
    const std::string& s = sy.text;
    if (auto it = ids_.find(s); it != ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    for (const Cp& c : code_points(s)) {  // not in the vocabulary: its bytes one by one
      auto b = bm.cp_byte.find(c.cp);
      const int id = b == bm.cp_byte.end() ? -1 : byte_ids_[b->second];
      if (id < 0)  // SmolLM2's vocabulary, for one, lacks 21 bytes (0x04, 0xC0, 0xF5..0xFF, ...)
        throw std::runtime_error(fmt::format("BPE tokenizer: the text has byte 0x{:02X}, which has no token in this vocabulary "
                                             "of {} (\"{}\" in GPT-2's byte spelling); the text cannot be encoded",
                                             b == bm.cp_byte.end() ? 0 : b->second, tokens_.size(),
                                             b == bm.cp_byte.end() ? "?" : bm.byte_str[b->second]));
      out.push_back(id);
    }
  }
}

void BpeTokenizer::encode_plain(const std::string& text, std::vector<int>& out) const {
  if (nfc_ && !text.empty()) {
    // utf8proc_NFC's flags, with the length given (the text may hold NULs). Invalid UTF-8 has no
    // normal form (utf8proc refuses it): such text is split as it is.
    utf8proc_uint8_t* n = nullptr;
    const utf8proc_ssize_t len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                              static_cast<utf8proc_ssize_t>(text.size()), &n, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (len >= 0) {
      const std::string normal(reinterpret_cast<const char*>(n), static_cast<std::size_t>(len));
      std::free(n);
      for (const auto& piece : pre_tokenize(normal)) encode_piece(piece, out);
      return;
    }
  }
  for (const auto& piece : pre_tokenize(text)) encode_piece(piece, out);
}

std::vector<int> BpeTokenizer::encode(const std::string& text, bool bos, bool parse_special) const {
  std::vector<int> out;
  if (bos && bos_ >= 0) out.push_back(bos_);
  if (!parse_special || specials_.empty()) {
    encode_plain(text, out);
    return out;
  }
  std::size_t start = 0, i = 0;
  while (i < text.size()) {
    const std::pair<std::string, int>* hit = nullptr;
    for (const auto& sp : specials_)  // longest first
      if (text.compare(i, sp.first.size(), sp.first) == 0) {
        hit = &sp;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    encode_plain(text.substr(start, i - start), out);
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  encode_plain(text.substr(start), out);
  return out;
}

std::string BpeTokenizer::decode_token(int token) const {
  if (token < 0 || token >= vocab_size()) return {};
  return bytes_[static_cast<std::size_t>(token)];
}

std::string BpeTokenizer::decode(const std::vector<int>& tokens) const {
  std::string s;
  for (int t : tokens) s += decode_token(t);
  return s;
}

std::unique_ptr<Tokenizer> load_tokenizer(const ModelConfig& cfg) {
  if (cfg.source == "gguf") {
    const GgufFile f(expand_path(cfg.gguf));
    return std::make_unique<BpeTokenizer>(f);
  }
  if (cfg.source == "hf") return load_hf_tokenizer(expand_path(cfg.path));
  if (cfg.source == "llama2c") {
    if (cfg.tokenizer.empty()) throw std::runtime_error("model.tokenizer is not set (a llama2.c tokenizer .bin)");
    const ModelShape s = model_shape(cfg);
    return std::make_unique<Llama2cTokenizer>(expand_path(cfg.tokenizer), s.vocab_size);
  }
  throw std::runtime_error(fmt::format("model.source {} has no tokenizer (synthetic weights)", cfg.source));
}

}  // namespace ablate
