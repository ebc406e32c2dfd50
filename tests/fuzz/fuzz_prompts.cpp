// libFuzzer target for the prompts-file reader (core/model/prompts.cpp read_prompts). Input: one
// byte whose low bit picks the format (0: plain text, 1: JSONL), then the file. read_prompts must
// return prompts or throw a std::runtime_error naming file:line. Run by tests/fuzz/run_fuzz.sh prompts.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "fuzz_common.hpp"
#include "model/prompts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const bool jsonl = data[0] & 1;
  const std::string path = ablate::fuzz::write_input(data + 1, size - 1, jsonl ? ".jsonl" : ".txt");
  try {
    const auto prompts = ablate::read_prompts(path);
    if (prompts.empty()) ablate::fuzz::violated("read_prompts returned no prompts without an error");
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("read_prompts", e);
  }
  return 0;
}
