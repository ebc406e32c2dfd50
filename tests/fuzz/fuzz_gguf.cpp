// libFuzzer target for the GGUF reader: parse, then (when parsing succeeds) derive the llama
// shape, load the weights, dequantise every tensor and build the BPE tokenizer. Any input must
// end in success or a std::exception, never a crash, a sanitizer report or an out-of-bounds read.
// Built and run by tests/fuzz/run_fuzz_gguf.sh (clang, -fsanitize=fuzzer,address,undefined);
// not part of the default build.
#include <cstddef>
#include <cstdint>
#include <exception>

#include "model/bpe_tokenizer.hpp"
#include "model/gguf.hpp"
#include "model/weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ablate::GgufFile f(data, size, "fuzz.gguf");
    for (const auto& t : f.tensors()) {
      try {
        (void)f.dequantize(t);
      } catch (const std::exception&) {
      }
    }
    for (bool keep_stored : {false, true}) {  // keep_stored: dtype native's raw matrices
      try {
        (void)ablate::load_gguf(f, keep_stored);
      } catch (const std::exception&) {
      }
    }
    try {
      const ablate::BpeTokenizer tok(f);
      (void)tok.decode(tok.encode("Hello, world! 123 <|im_start|> Zürich"));
    } catch (const std::exception&) {
    }
  } catch (const std::exception&) {
  }
  return 0;
}
