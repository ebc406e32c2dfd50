// libFuzzer target for the safetensors reader: parse the header (nlohmann-json), then convert
// every tensor to fp32. Any input must end in success or a SafetensorsError, never a crash, a
// sanitizer report or an out-of-bounds read. Built and run by tests/fuzz/run_fuzz.sh (clang,
// -fsanitize=fuzzer,address,undefined); not part of the default build.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "model/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const ablate::SafetensorsFile f(data, size, "fuzz.safetensors");
    for (const auto& t : f.tensors()) {
      try {
        const auto v = f.to_float(t);
        if (v.size() != t.n_elements) std::abort();  // a tensor reads back at its shape's size
      } catch (const ablate::SafetensorsError&) {
      }
    }
  } catch (const ablate::SafetensorsError&) {
  }
  return 0;
}
