// A GGUF's tensors of one ggml type as ablate's loader decodes them: their fp32 values, tensor after
// tensor in file order, appended to OUT (raw little-endian float32). experiments/check_decode.py
// compares them with PyPI gguf's decoder, on real files rather than the fixture's random blocks.
//   build/default/experiments/dequantize_gguf models/SmolLM2-135M-Instruct.IQ3_S.requant.gguf IQ3_S /tmp/iq3_s.f32
#include <cstdio>
#include <string>

#include "model/ggml_blocks.hpp"
#include "model/gguf.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: dequantize_gguf FILE.gguf TYPE OUT.f32\n");
    return 2;
  }
  const ablate::GgufFile f(argv[1]);
  const std::string type = argv[2];
  std::FILE* out = std::fopen(argv[3], "wb");
  if (!out) {
    std::perror(argv[3]);
    return 1;
  }
  int n = 0;
  for (const auto& t : f.tensors()) {
    if (ablate::ggml_type_name(t.type) != type) continue;
    const std::vector<float> v = f.dequantize(t);
    if (std::fwrite(v.data(), sizeof(float), v.size(), out) != v.size()) {
      std::perror(argv[3]);
      return 1;
    }
    ++n;
  }
  std::printf("%d %s tensors\n", n, type.c_str());
  return std::fclose(out) == 0 ? 0 : 1;
}
