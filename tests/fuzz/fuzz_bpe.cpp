// libFuzzer target for the GPT-2 byte-level BPE tokenizer (core/model/bpe_tokenizer.cpp) on
// arbitrary bytes. Input: one flags byte (bit 0: parse special tokens, bit 1: the "smollm"
// pre-tokenizer instead of "gpt2", bit 2: a vocabulary that lacks some byte tokens), then the text.
//  - the pre-tokenizer's pieces concatenate to the text;
//  - decode(encode(text)) gives back the text's bytes and every id lies inside the vocabulary;
//  - or, only when the text has a byte that has no token (SmolLM2 lacks 21 of the 256), encode
//    throws a std::runtime_error naming the byte.
// Also the SmolLM2 tokenizer when models/SmolLM2-135M-Instruct.Q4_1.gguf (or $ABLATE_FUZZ_BPE_GGUF)
// is there. Run by tests/fuzz/run_fuzz.sh bpe.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "model/bpe_tokenizer.hpp"
#include "model/gguf.hpp"

namespace {

// GPT-2's bytes_to_unicode(), as UTF-8 strings.
std::string byte_token(int b) {
  static std::vector<std::string> spelled = [] {
    std::vector<std::string> out(256);
    int n = 0;
    for (int c = 0; c < 256; ++c) {
      const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      const unsigned cp = printable ? static_cast<unsigned>(c) : 256u + static_cast<unsigned>(n++);
      std::string s;
      if (cp < 0x80) s += static_cast<char>(cp);
      else { s += static_cast<char>(0xC0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3F)); }
      out[static_cast<std::size_t>(c)] = s;
    }
    return out;
  }();
  return spelled[static_cast<std::size_t>(b)];
}

std::unique_ptr<ablate::BpeTokenizer> small(const std::string& pre, bool complete) {
  std::vector<std::string> tokens;
  std::vector<int> types;
  for (int b = 0; b < 256; ++b) {
    if (!complete && (b == 0 || b >= 0xF5)) continue;  // never in valid UTF-8 but NUL
    tokens.push_back(byte_token(b));
    types.push_back(1);
  }
  const std::string G = byte_token(' ');  // "Ġ"
  const std::vector<std::string> merges = {G + " t", "h e", G + "t he", "i n", G + " a", "e r", "1 2", "12 3",
                                           "Ã ©", G + " " + G, "' s", "in g", "Ġ Z", "Ã ¼"};
  for (const char* t : {"Ġt", "he", "Ġthe", "in", "Ġa", "er", "12", "123", "Ã©", "ĠĠ", "'s", "ing", "ĠZ", "Ã¼"}) {
    tokens.push_back(t);
    types.push_back(1);
  }
  for (const char* t : {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>"}) {
    tokens.push_back(t);
    types.push_back(3);
  }
  const int bos = static_cast<int>(tokens.size()) - 1;
  return std::make_unique<ablate::BpeTokenizer>(tokens, types, merges, pre, bos, bos - 2, true);
}

struct Real {
  std::unique_ptr<ablate::GgufFile> file;
  std::unique_ptr<ablate::BpeTokenizer> tok;
};
Real real() {
  const char* env = std::getenv("ABLATE_FUZZ_BPE_GGUF");
  const std::string path = env && *env ? env : ABLATE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  Real r;
  if (!std::filesystem::exists(path)) return r;
  r.file = std::make_unique<ablate::GgufFile>(path);
  r.tok = std::make_unique<ablate::BpeTokenizer>(*r.file);
  return r;
}

// Whether each byte alone encodes (has a token). A text may fail to encode only when it holds
// one of the bytes that do not.
struct Subject {
  const ablate::BpeTokenizer* tok;
  bool encodes[256];
  explicit Subject(const ablate::BpeTokenizer* t) : tok(t) {
    for (int b = 0; b < 256; ++b) {
      try {
        (void)t->encode(std::string(1, static_cast<char>(b)), false, false);
        encodes[b] = true;
      } catch (const std::runtime_error&) {
        encodes[b] = false;
      }
    }
  }
};

void check(const Subject& sub, const std::string& text, bool parse_special) {
  const ablate::BpeTokenizer& tok = *sub.tok;
  std::string joined;
  for (const auto& p : tok.pre_tokenize(text)) {
    if (p.empty()) ablate::fuzz::violated("pre_tokenize gave an empty piece");
    joined += p;
  }
  if (joined != text) ablate::fuzz::violated("pre_tokenize pieces do not concatenate to the text");
  std::vector<int> ids;
  try {
    ids = tok.encode(text, false, parse_special);
  } catch (const std::runtime_error& e) {
    for (unsigned char c : text)
      if (!sub.encodes[c]) return;  // the clear error for a byte without a token
    ablate::fuzz::unexpected("BpeTokenizer::encode (every byte of the text has a token)", e);
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("BpeTokenizer::encode", e);
  }
  for (int id : ids)
    if (id < 0 || id >= tok.vocab_size()) ablate::fuzz::violated("encode gave an id outside the vocabulary");
  if (tok.decode(ids) != text) ablate::fuzz::violated("decode(encode(text)) != text");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static const auto smollm = small("smollm", true), gpt2 = small("gpt2", true), partial = small("smollm", false);
  static const Subject s_smollm(smollm.get()), s_gpt2(gpt2.get()), s_partial(partial.get());
  static const Real smollm2 = real();
  static const std::unique_ptr<Subject> s_real = smollm2.tok ? std::make_unique<Subject>(smollm2.tok.get()) : nullptr;
  const unsigned flags = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool special = flags & 1;
  check((flags & 4) ? s_partial : (flags & 2) ? s_gpt2 : s_smollm, text, special);
  if (s_real) check(*s_real, text, special);
  return 0;
}
