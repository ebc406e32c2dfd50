// libFuzzer target for the llama2.c checkpoint reader (core/model/weights.cpp): the input is the
// checkpoint file (and, resized to its header's size, a second one; see below). model_shape()
// (the header only) and load_llama2c() must each return or throw a std::runtime_error naming the
// file; nothing else (std::bad_alloc included: the file size is checked against the header before
// anything is allocated). Run by tests/fuzz/run_fuzz.sh llama2c.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "base/experiment_config.hpp"
#include "fuzz_common.hpp"
#include "model/weights.hpp"

namespace {

void check(const std::uint8_t* data, std::size_t size) {
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
}

}  // namespace

// The input as it is, then (when its header is plausible and the sizes are small) the input
// resized to exactly what its header implies: the reader checks the file size first, so without
// this almost every mutated header stops there and the tensor reads are never reached.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check(data, size);
  if (size < 28) return 0;
  std::int32_t h[7];
  std::memcpy(h, data, sizeof h);
  const long long dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], vocab = std::llabs(h[5]), seq = h[6];
  if (dim <= 0 || dim > 256 || hidden <= 0 || hidden > 256 || layers <= 0 || layers > 4 || heads <= 0 || kv_heads <= 0 ||
      vocab > 256 || seq <= 0 || seq > 256 || dim % heads != 0)
    return 0;
  const long long hd = dim / heads, kv = kv_heads * hd;
  const long long floats = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim + seq * hd +
                           (h[5] < 0 ? vocab * dim : 0);
  const std::size_t want = 28 + static_cast<std::size_t>(floats) * 4;
  if (floats <= 0 || want > (std::size_t{4} << 20) || want == size) return 0;
  std::vector<std::uint8_t> fitted(want, 0);
  std::memcpy(fitted.data(), data, std::min(size, want));
  check(fitted.data(), fitted.size());
  return 0;
}
