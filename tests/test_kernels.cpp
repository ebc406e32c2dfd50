// CPU kernels vs their scalar references (kernels/cpu/reference.hpp), random inputs, fixed seeds.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <omp.h>
#include <random>
#include <vector>

#include "support.hpp"
#include "cpu/kernels.hpp"
#include "cpu/reference.hpp"

using namespace ablate;

namespace {

using test::random_vec;

// Largest |a - b| / max(floor, |b|).
double max_rel_err(const float* a, const float* b, std::size_t n, double floor = 1.0) {
  double worst = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = std::abs(double(a[i]) - b[i]) / std::max(floor, std::abs(double(b[i])));
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst;
}

// The largest |y - yr| of a product, relative to the sum of |terms| of its dot product:
// cancellation makes a plain relative error meaningless.
double worst_term_relative(const std::vector<float>& y, const std::vector<float>& yr, const std::vector<float>& x,
                           const std::vector<float>& w, int rows, int in, int out) {
  double worst = 0.0;
  for (int r = 0; r < rows; ++r)
    for (int o = 0; o < out; ++o) {
      double mag = 0.0;
      for (int i = 0; i < in; ++i) mag += std::abs(double(x[std::size_t(r) * in + i]) * w[std::size_t(o) * in + i]);
      const std::size_t k = std::size_t(r) * out + o;
      worst = std::max(worst, std::abs(double(y[k]) - yr[k]) / std::max(mag, 1e-30));
    }
  return worst;
}

}  // namespace

TEST_CASE("matmul matches the scalar reference", "[kernels][matmul]") {
  std::mt19937 rng(1);
  const std::pair<int, int> shapes[] = {{1, 1}, {7, 13}, {33, 65}, {576, 193}, {129, 1001}, {577, 1537}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17})  // the few-rows kernel's tiles and tails, then Eigen's GEMM
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      auto x = random_vec(std::size_t(rows) * in, rng), w = random_vec(std::size_t(out) * in, rng);
      std::vector<float> y(std::size_t(rows) * out), yr(y.size());
      cpu::matmul(y.data(), x.data(), w.data(), rows, in, out);
      ref::matmul(yr.data(), x.data(), w.data(), rows, in, out);
      CHECK(worst_term_relative(y, yr, x, w, rows, in, out) < 1e-5);
    }
}

TEST_CASE("matmul on the classifier shape (threaded GEMV)", "[kernels][matmul]") {
  std::mt19937 rng(2);
  const int in = 576, out = 49152;
  auto x = random_vec(in, rng), w = random_vec(std::size_t(out) * in, rng);
  std::vector<float> y(out), yr(out);
  cpu::matmul(y.data(), x.data(), w.data(), 1, in, out);
  ref::matmul(yr.data(), x.data(), w.data(), 1, in, out);
  CHECK(max_rel_err(y.data(), yr.data(), out, 1.0) < 1e-5);
}

TEST_CASE("matmul gives the same bits on every call: threads take rows as they free up, the pieces stay the same", "[kernels][matmul]") {
  // Threads claim pieces of w in whichever order they finish, so a piece's result must not depend
  // on the thread that computes it: 2 threads, every dtype, the GEMV, the few-rows tiles and the GEMM.
  std::mt19937 rng(12);
  const int in = 576, out = 1001;  // 1001 = 125 groups of 8 and a tail row; parallel at every row count
  const auto w = random_vec(std::size_t(out) * in, rng);
  std::vector<cpu::Bf16> wb(w.size());
  std::vector<cpu::Half> wh(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) wb[i] = cpu::to_bf16(w[i]), wh[i] = cpu::to_half(w[i]);
  const cpu::PackedQ8_0 wq = cpu::pack_q8_0(cpu::quantize_q8_0(w.data(), out, in), out, in);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(2);
  for (int rows : {1, 5, 40}) {
    const auto x = random_vec(std::size_t(rows) * in, rng);
    for (int dtype = 0; dtype < 4; ++dtype) {
      INFO("rows=" << rows << " dtype=" << dtype);
      std::vector<float> first(std::size_t(rows) * out), y(first.size());
      for (int call = 0; call < 20; ++call) {
        float* dst = call == 0 ? first.data() : y.data();
        switch (dtype) {
          case 0: cpu::matmul(dst, x.data(), w.data(), rows, in, out); break;
          case 1: cpu::matmul(dst, x.data(), wb.data(), rows, in, out); break;
          case 2: cpu::matmul(dst, x.data(), wh.data(), rows, in, out); break;
          default: cpu::matmul(dst, x.data(), wq, rows, in, out); break;
        }
        if (call > 0) REQUIRE(std::memcmp(y.data(), first.data(), y.size() * sizeof(float)) == 0);
      }
    }
  }
  omp_set_num_threads(threads);
}

TEST_CASE("16-bit formats: every value round-trips, and rounding goes to the nearest (ties to even)", "[kernels][half]") {
  int checked = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const cpu::Half h{static_cast<std::uint16_t>(b)};
    const cpu::Bf16 g{static_cast<std::uint16_t>(b)};
    if (!std::isnan(cpu::to_float(h))) {
      CHECK(cpu::to_half(cpu::to_float(h)).bits == h.bits);
      ++checked;
    }
    if (!std::isnan(cpu::to_float(g))) CHECK(cpu::to_bf16(cpu::to_float(g)).bits == g.bits);
  }
  CHECK(checked == 65536 - 2046);  // all but the NaNs
  CHECK(cpu::to_float(cpu::to_half(1.0f)) == 1.0f);
  CHECK(cpu::to_float(cpu::to_half(65504.0f)) == 65504.0f);          // the largest fp16
  CHECK(std::isinf(cpu::to_float(cpu::to_half(65520.0f))));           // rounds up past it
  CHECK(cpu::to_float(cpu::to_half(5.9604645e-8f)) == 5.9604645e-8f); // the smallest subnormal
  CHECK(cpu::to_half(1.0f + 1.0f / 2048).bits == cpu::to_half(1.0f).bits);  // a tie: to even
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-70000.f, 70000.f);
  for (int i = 0; i < 20000; ++i) {
    const float f = i % 2 ? u(rng) : u(rng) * 1e-6f;
    for (int fmt = 0; fmt < 2; ++fmt) {
      const std::uint16_t b = fmt ? cpu::to_half(f).bits : cpu::to_bf16(f).bits;
      const auto val = [&](std::uint16_t x) {
        return double(fmt ? cpu::to_float(cpu::Half{x}) : cpu::to_float(cpu::Bf16{x}));
      };
      if (std::isinf(val(b))) continue;
      const double err = std::abs(val(b) - f);
      for (int d : {-1, 1}) {  // the neighbours are no closer
        const double other = val(static_cast<std::uint16_t>(b + d));
        if (std::isfinite(other) && (b & 0x7fff) != 0) CHECK(err <= std::abs(other - f));
      }
    }
  }
}

TEST_CASE("round_to_bf16 gives to_bf16's bits: ties to even, NaN quieted with its sign, infinities, subnormals", "[kernels][half]") {
  // The vectorised loop (AVX-512 or AVX2, whichever the build has) and its scalar tail.
  std::mt19937 rng(12);
  std::vector<float> src;
  for (std::uint32_t hi = 0; hi < 65536; hi += 7)  // every 7th bf16 value, with low halves at and around the tie
    for (std::uint32_t lo : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, static_cast<std::uint32_t>(rng() & 0xffff)})
      src.push_back(std::bit_cast<float>((hi << 16) | lo));
  for (float f : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 0.0f, -0.0f,
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(), std::nanf("")})
    src.push_back(f);
  src.push_back(std::bit_cast<float>(0xff800001u));  // a signalling NaN with the sign set
  std::vector<cpu::Bf16> got(src.size());
  cpu::round_to_bf16(got.data(), src.data(), src.size());
  int mismatches = 0;
  for (std::size_t i = 0; i < src.size(); ++i) mismatches += got[i].bits != cpu::to_bf16(src[i]).bits;
  CHECK(mismatches == 0);
  CHECK(src.size() % 8 != 0);  // a scalar tail ran too
}

TEST_CASE("matmul with bf16 and fp16 weights matches the scalar reference on the same weights", "[kernels][matmul][half]") {
  std::mt19937 rng(11);
  const std::pair<int, int> shapes[] = {{1, 1}, {7, 13}, {33, 65}, {576, 193}, {129, 1001}, {576, 1537}};
  for (int rows : {1, 2, 3, 4, 5, 16, 17, 70})  // few-rows kernels, then the GEMM (bf16 with vdpbf16ps: panels of w, tiles of 16 rows)
    for (auto [in, out] : shapes) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      auto x = random_vec(std::size_t(rows) * in, rng), w = random_vec(std::size_t(out) * in, rng);
      std::vector<cpu::Bf16> wb(w.size());
      std::vector<cpu::Half> wh(w.size());
      for (std::size_t i = 0; i < w.size(); ++i) wb[i] = cpu::to_bf16(w[i]), wh[i] = cpu::to_half(w[i]);
      std::vector<float> y(std::size_t(rows) * out), yr(y.size()), yh(y.size()), yhr(y.size());
      cpu::matmul(y.data(), x.data(), wb.data(), rows, in, out);
      ref::matmul(yr.data(), x.data(), wb.data(), rows, in, out);
      cpu::matmul(yh.data(), x.data(), wh.data(), rows, in, out);
      ref::matmul(yhr.data(), x.data(), wh.data(), rows, in, out);
      // The same rounded weights on both sides: only fp32 summation order differs.
      CHECK(worst_term_relative(y, yr, x, w, rows, in, out) < 1e-5);
      CHECK(worst_term_relative(yh, yhr, x, w, rows, in, out) < 1e-5);
    }
}

TEST_CASE("rmsnorm matches the scalar reference, also in place", "[kernels][rmsnorm]") {
  std::mt19937 rng(3);
  for (int rows : {1, 4, 70})
    for (int dim : {7, 576}) {
      INFO("rows=" << rows << " dim=" << dim);
      auto x = random_vec(std::size_t(rows) * dim, rng, -3.0f, 3.0f), w = random_vec(dim, rng);
      std::vector<float> out(x.size()), expect(x.size());
      cpu::rmsnorm(out.data(), x.data(), w.data(), rows, dim, 1e-5f);
      ref::rmsnorm(expect.data(), x.data(), w.data(), rows, dim, 1e-5f);
      CHECK(max_rel_err(out.data(), expect.data(), out.size(), 1e-6) < 1e-5);
      cpu::rmsnorm(x.data(), x.data(), w.data(), rows, dim, 1e-5f);
      CHECK(x == out);
    }
}

TEST_CASE("rope matches llama2.c's loop", "[kernels][rope]") {
  std::mt19937 rng(4);
  struct Case { int rows, n_heads, head_dim, row_stride; };
  for (Case c : {Case{1, 9, 64, 576}, Case{5, 3, 64, 192 + 576}, Case{3, 4, 8, 40}, Case{2, 1, 2, 2}})
    for (float theta : {10000.0f, 100000.0f}) {
      INFO("rows=" << c.rows << " heads=" << c.n_heads << " head_dim=" << c.head_dim << " theta=" << theta);
      auto x = random_vec(std::size_t(c.rows) * c.row_stride, rng);
      std::vector<int> pos(c.rows);
      for (int r = 0; r < c.rows; ++r) pos[r] = int(rng() % 5000);
      pos[0] = 0;
      auto expect = x;
      cpu::rope(x.data(), c.rows, c.row_stride, c.n_heads, c.head_dim, pos.data(), theta);
      ref::rope(expect.data(), c.rows, c.row_stride, c.n_heads, c.head_dim, pos.data(), theta);
      CHECK(max_rel_err(x.data(), expect.data(), x.size(), 1.0) < 1e-6);
    }
}

TEST_CASE("softmax sums to 1, matches the reference and survives large inputs", "[kernels][softmax]") {
  std::mt19937 rng(5);
  for (int n : {1, 10, 49152}) {
    INFO("n=" << n);
    auto x = random_vec(n, rng, -10.0f, 10.0f), expect = x;
    cpu::softmax(x.data(), n);
    ref::softmax(expect.data(), n);
    CHECK(std::accumulate(x.begin(), x.end(), 0.0) == Approx(1.0).epsilon(1e-5));
    CHECK(max_rel_err(x.data(), expect.data(), n, 1e-7) < 1e-5);
  }
  std::vector<float> big = {1e4f, -1e4f, 88.0f, 1e4f - 1.0f, -3e38f, 3e38f};
  auto expect = big;
  cpu::softmax(big.data(), int(big.size()));
  ref::softmax(expect.data(), int(expect.size()));
  for (float p : big) CHECK(std::isfinite(p));
  CHECK(big[5] == Approx(1.0));
  CHECK(max_rel_err(big.data(), expect.data(), big.size(), 1e-7) < 1e-5);
}

TEST_CASE("swiglu and add match the scalar reference", "[kernels][swiglu]") {
  std::mt19937 rng(6);
  const std::size_t n = 1537;
  auto g = random_vec(n, rng, -8.0f, 8.0f), up = random_vec(n, rng), expect = g;
  cpu::swiglu(g.data(), up.data(), n);
  ref::swiglu(expect.data(), up.data(), n);
  CHECK(max_rel_err(g.data(), expect.data(), n, 1e-6) < 1e-5);

  // swiglu_rows on fused [gate | up] rows equals swiglu row by row (the CPU backend's way).
  const int rows = 3, hidden = 517;
  auto gu = random_vec(std::size_t(rows) * 2 * hidden, rng, -8.0f, 8.0f), by_row = gu;
  std::vector<float> fused(std::size_t(rows) * hidden);
  cpu::swiglu_rows(fused.data(), gu.data(), rows, hidden);
  for (int r = 0; r < rows; ++r) {
    float* row = by_row.data() + std::size_t(r) * 2 * hidden;
    cpu::swiglu(row, row + hidden, hidden);
    for (int j = 0; j < hidden; ++j) CHECK(fused[std::size_t(r) * hidden + j] == row[j]);
  }
  cpu::swiglu_rows(gu.data(), gu.data(), 1, hidden);  // in place at one row
  for (int j = 0; j < hidden; ++j) CHECK(gu[std::size_t(j)] == fused[std::size_t(j)]);

  auto x = random_vec(n, rng), y = random_vec(n, rng), sum = x;
  cpu::add(x.data(), y.data(), n);
  ref::add(sum.data(), y.data(), n);
  CHECK(x == sum);
}

// ---- attention ----------------------------------------------------------------------------------

namespace {

using AttnCase = test::AttentionShape;
constexpr float kPad = test::kOutPad;

// Three stored "future" tokens with large keys that a causal kernel must ignore.
struct AttnData : test::AttentionCase {
  AttnData(AttnCase c, std::mt19937& rng) : AttentionCase(c, rng, 3, 50.0f) {}
};

double attn_err(const std::vector<float>& out, const std::vector<float>& expect, const AttnData& d) {
  return d.err(out, expect, 1.0);
}

}  // namespace

TEST_CASE("attention_naive matches the reference, contiguous and paged views", "[kernels][attention]") {
  std::mt19937 rng(7);
  const std::pair<int, int> heads[] = {{8, 8}, {9, 3}, {8, 1}};
  for (int n_q : {1, 5, 33})
    for (int q_pos0 : {0, 7, 100})
      for (auto [n_heads, n_kv_heads] : heads)
        for (int head_dim : {8, 64}) {
          AttnData d({n_q, q_pos0, n_heads, n_kv_heads, head_dim}, rng);
          INFO("n_q=" << n_q << " q_pos0=" << q_pos0 << " heads=" << n_heads << "/" << n_kv_heads << " head_dim=" << head_dim);
          const std::size_t out_size = std::size_t(n_q) * d.out_stride;

          test::KvLayout base = test::contiguous(d.k, d.v, d.len, d.ts);
          std::vector<float> expect(out_size, kPad), out_contig(out_size, kPad);
          AttentionProblem pr = d.problem(base.view, expect.data());
          ref::attention({&pr, 1});
          AttentionProblem pc = d.problem(base.view, out_contig.data());
          cpu::attention_naive({&pc, 1});
          CHECK(attn_err(out_contig, expect, d) < 1e-5);

          for (int page_size : {1, 16, 128}) {
            INFO("page_size=" << page_size);
            test::KvLayout l = test::paged(d.k, d.v, d.len, d.ts, page_size, rng);
            std::vector<float> out(out_size, kPad);
            AttentionProblem pp = d.problem(l.view, out.data());
            cpu::attention_naive({&pp, 1});
            CHECK(attn_err(out, out_contig, d) < 1e-5);
          }
        }
}

TEST_CASE("attention_naive runs a ragged batch of problems in one call", "[kernels][attention]") {
  std::mt19937 rng(8);
  const AttnCase cases[] = {{1, 200, 9, 3, 64}, {40, 0, 9, 3, 64}, {6, 17, 9, 3, 64}, {1, 0, 9, 3, 64}};
  std::vector<AttnData> data;
  std::vector<test::KvLayout> layouts;
  for (const AttnCase& c : cases) {
    data.emplace_back(c, rng);
    layouts.push_back(data.size() % 2 ? test::paged(data.back().k, data.back().v, data.back().len, data.back().ts, 16, rng)
                                      : test::contiguous(data.back().k, data.back().v, data.back().len, data.back().ts));
  }
  std::vector<std::vector<float>> out, expect;
  std::vector<AttentionProblem> problems, refs;
  for (std::size_t i = 0; i < data.size(); ++i) {
    out.emplace_back(std::size_t(data[i].s.n_q) * data[i].out_stride, kPad);
    expect.push_back(out.back());
  }
  for (std::size_t i = 0; i < data.size(); ++i) {
    problems.push_back(data[i].problem(layouts[i].view, out[i].data()));
    refs.push_back(data[i].problem(layouts[i].view, expect[i].data()));
  }
  cpu::attention_naive(problems);
  ref::attention(refs);
  for (std::size_t i = 0; i < data.size(); ++i) {
    INFO("problem " << i);
    CHECK(attn_err(out[i], expect[i], data[i]) < 1e-5);
  }
  CHECK(cpu::attention_naive_workspace_bytes(problems[1]) == std::size_t(40 * 3) * (40 + 2 * 64) * sizeof(float));
}
