// libFuzzer target for the llama2.c checkpoint reader (core/model/weights.cpp): the input is the
// checkpoint file. model_shape() (the header only) and load_llama2c() must each return or throw a
// std::runtime_error naming the file; nothing else (std::bad_alloc included: the file size is
// checked against the header before anything is allocated). Run by tests/fuzz/run_fuzz.sh llama2c.
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "base/experiment_config.hpp"
#include "fuzz_common.hpp"
#include "model/weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = ablate::fuzz::write_input(data, size, ".bin");
  ablate::ModelConfig cfg;
  cfg.source = "llama2c";
  cfg.path = path;
  try {
    const ablate::ModelShape s = ablate::model_shape(cfg);
    if (s.dim <= 0 || s.n_heads <= 0 || s.n_kv_heads <= 0 || s.vocab_size <= 0 || s.max_seq_len <= 0)
      ablate::fuzz::violated("model_shape accepted a header with a non-positive size");
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("model_shape (llama2c)", e);
  }
  try {
    const ablate::Weights w = ablate::load_llama2c(path);
    const auto& s = w.shape;
    if (w.token_embedding.size() != std::size_t(s.vocab_size) * s.dim || w.layers.size() != std::size_t(s.n_layers))
      ablate::fuzz::violated("load_llama2c returned weights of the wrong size");
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    ablate::fuzz::unexpected("load_llama2c", e);
  }
  return 0;
}
