// Native kernels on a real file's matrices: for each matrix of a GGUF (or those whose name contains
// a filter), random inputs x of 1 and 32 rows through cpu::matmul on the file's own blocks, against
// the file's values (dequantized as ggml does) times x rounded to Q8_0 blocks in fp64, which is
// what native computes exactly but for fp32 sums; beside it, what the Q8_0 rounding of x itself
// moves (|W x^ - W x|). The unit tests check the kernels on random blocks; this checks them on the
// blocks llama.cpp's quantizer writes (negative scales, real scale ranges).
//   build/default/experiments/check_native models/SmolLM2-135M-Instruct.Q4_0.requant.gguf [blk.0.]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu_backend.hpp"
#include "cpu/kernels.hpp"
#include "model/ggml_blocks.hpp"
#include "model/gguf.hpp"

using namespace ablate;

namespace {
// y = x W^T through the kernel dtype native runs the tensor with (CpuBackend::make_stored_matrix);
// false for F32/F16/BF16 (whose inputs are not rounded to Q8_0) and for a type native cannot hold.
bool native_matmul(const GgufFile& f, const GgufTensorInfo& t, const float* x, float* y, int rows, int in, int out) {
  const auto type = static_cast<GgmlType>(t.type);
  if (type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16) return false;
  StoredMatrix m{t.name, t.type, std::size_t(out), std::size_t(in), {}};
  m.bytes.assign(f.tensor_data(t), f.tensor_data(t) + t.n_bytes);
  try {
    CpuBackend::make_stored_matrix({&m}).matmul(y, x, rows, in, out);
  } catch (const std::invalid_argument& e) {
    std::printf("%-28s %-7s skipped: %s\n", t.name.c_str(), ggml_type_name(t.type).c_str(), "no native kernel");
    return false;
  }
  return true;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: check_native FILE.gguf [NAME_FILTER]\n");
    return 2;
  }
  const GgufFile f(argv[1]);
  const std::string filter = argc > 2 ? argv[2] : "";
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  double worst_all = 0.0;
  int checked = 0;
  std::printf("%-28s %-7s %4s  %-12s %-12s %-10s\n", "tensor", "type", "rows", "|y - W x^|", "|W x^ - W x|", "max |W x|");
  for (const auto& t : f.tensors()) {
    if (t.dims.size() != 2 || t.name.find(filter) == std::string::npos) continue;
    const int in = int(t.dims[0]), out = int(t.dims[1]);
    const std::vector<float> w = f.dequantize(t);
    for (int rows : {1, 32}) {
      std::vector<float> x(std::size_t(rows) * in), y(std::size_t(rows) * out);
      for (float& v : x) v = normal(rng);
      if (!native_matmul(f, t, x.data(), y.data(), rows, in, out)) break;
      const std::vector<cpu::BlockQ8_0> xq = cpu::quantize_q8_0(x.data(), rows, in);
      double diff = 0.0, rounding = 0.0, scale = 0.0;
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < out; ++o) {
          double exact = 0.0, exact_q = 0.0;
          for (int i = 0; i < in; ++i) {
            const double wi = w[std::size_t(o) * in + i];
            exact += wi * x[std::size_t(r) * in + i];
            exact_q += wi * cpu::q8_0_value(&xq[std::size_t(r) * (in / 32)], i);
          }
          diff = std::max(diff, std::abs(y[std::size_t(r) * out + o] - exact_q));
          rounding = std::max(rounding, std::abs(exact_q - exact));
          scale = std::max(scale, std::abs(exact));
        }
      std::printf("%-28s %-7s %4d  %-12.3g %-12.3g %-10.3g\n", t.name.c_str(), ggml_type_name(t.type).c_str(), rows, diff, rounding, scale);
      worst_all = std::max(worst_all, diff / std::max(scale, 1e-30));
      ++checked;
    }
  }
  std::printf("%d products; largest |y - W x^| relative to max |W x|: %.3g\n", checked, worst_all);
  return 0;
}
