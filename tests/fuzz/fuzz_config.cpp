// libFuzzer target for the YAML experiment loader: ablate::load_experiment_text(text, name,
// overrides). The input is the YAML text, then any number of NUL-separated `--set` overrides
// ("kv.memory_mb=64"), at most 8. A rejection must be an ablate::ConfigError; any other exception,
// a crash, a sanitizer report or a hang is a bug. Seeds: every file in configs/ plus
// tests/fuzz/corpus/config/ (overrides). Run by tests/fuzz/run_fuzz.sh config.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "config/load.hpp"
#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  for (std::size_t b = 0;;) {
    const std::size_t e = all.find('\0', b);
    parts.push_back(all.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos || parts.size() > 8) break;
    b = e + 1;
  }
  const std::vector<std::string> overrides(parts.begin() + 1, parts.end());
  try {
    const ablate::LoadedExperiment ex = ablate::load_experiment_text(parts[0], "fuzz.yaml", overrides);
    if (ex.points.empty()) ablate::fuzz::violated("a loaded experiment has no sweep points");
  } catch (const ablate::ConfigError&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("load_experiment_text", e);
  }
  return 0;
}
