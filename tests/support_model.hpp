#pragma once
// Helpers for tests that compare whole forward passes of the CPU backend.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "attention/naive_attention.hpp"
#include "backend/cpu_backend.hpp"
#include "kv/contiguous_kv.hpp"

namespace ablate::test {

// Logits of every position of `toks` in one prefill pass.
inline std::vector<float> all_logits(CpuBackend& be, const std::vector<int>& toks) {
  const int n = static_cast<int>(toks.size());
  ContiguousKvCache kv(be.shape(), std::size_t(64) << 20, n, ContiguousKvCache::Reserve::MaxSeqLen, be.kv_storage());
  REQUIRE(kv.admit(0, n, 0));
  REQUIRE(kv.ensure(0, n));
  NaiveAttention att;
  ForwardBatch b;
  b.chunks.push_back({0, 0, toks, true});
  return be.forward(b, kv, att);
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - double(b[i])));
  return worst;
}

// `ablate generate` on one thread (the binary this build made), its stdout kept.
struct GenerateRun {
  std::string command, output;
  int rc = -1;
};
inline GenerateRun run_generate(const std::string& model, const std::string& extra_args) {
  GenerateRun r;
  r.command = "OMP_NUM_THREADS=1 '" + std::string(ABLATE_BINARY) + "' generate --model '" + model +
              "' --prompt 'The capital of France is' -n 4 " + extra_args + " 2>/dev/null";
  FILE* p = popen(r.command.c_str(), "r");
  REQUIRE(p);
  char buf[256];
  while (std::size_t k = std::fread(buf, 1, sizeof buf, p)) r.output.append(buf, k);
  r.rc = pclose(p);
  return r;
}

}  // namespace ablate::test
