// libFuzzer target for the llama2.c tokenizer reader and its encoder/decoder
// (core/model/tokenizer.cpp). Input: u16 vocab_size (little-endian), u16 text length n, n bytes
// of text, then the tokenizer file (tok512.bin's format). The reader must return or throw a
// std::runtime_error; when it returns, encoding the text must give ids inside the vocabulary
// (the model indexes its embedding with them) or throw a std::runtime_error, and decoding any id
// must not crash. Run by tests/fuzz/run_fuzz.sh llama2c_tokenizer.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fuzz_common.hpp"
#include "model/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  std::uint16_t vocab = 0, n = 0;
  std::memcpy(&vocab, data, 2);
  std::memcpy(&n, data + 2, 2);
  data += 4;
  size -= 4;
  n = static_cast<std::uint16_t>(std::min<std::size_t>(n, size));
  const std::string text(reinterpret_cast<const char*>(data), n);
  const std::string path = ablate::fuzz::write_input(data + n, size - n, ".tok.bin");
  try {
    const ablate::Llama2cTokenizer tok(path, vocab);
    if (tok.vocab_size() != vocab) ablate::fuzz::violated("tokenizer has a different vocabulary size than asked for");
    for (bool bos : {false, true}) {
      std::vector<int> ids;
      try {
        ids = tok.encode(text, bos, bos);
      } catch (const std::runtime_error&) {
        continue;
      }
      for (int id : ids)
        if (id < 0 || id >= tok.vocab_size()) ablate::fuzz::violated("encode gave a token id outside the vocabulary");
      (void)tok.decode(ids);
    }
    for (int id : {-1, 0, 1, 2, 3, vocab - 1, static_cast<int>(vocab), 1 << 30}) (void)tok.decode(ablate::Llama2cTokenizer::kBos, id);
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("Llama2cTokenizer", e);
  }
  return 0;
}
