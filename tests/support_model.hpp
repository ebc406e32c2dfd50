#pragma once
// Helpers for tests that compare whole forward passes of the CPU backend.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
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

}  // namespace ablate::test
