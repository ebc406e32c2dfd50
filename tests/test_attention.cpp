// flash and flash_split vs naive (and the scalar reference): random inputs, contiguous and paged
// views, GQA ratios 1, 3, 8, decode (n_q = 1, k+1), chunked and full prefill, ragged batches.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "support.hpp"
#include "attention/flash_attention.hpp"
#include "attention/naive_attention.hpp"
#include "cpu/kernels.hpp"
#include "cpu/reference.hpp"

using namespace ablate;

namespace {

constexpr double kTol = 1e-5;
constexpr double kFloor = 0.1;

// One sequence's K/V: contiguous (page_size 0) or in shuffled pages (tests/support.hpp).
test::KvLayout kv_layout(const std::vector<float>& k, const std::vector<float>& v, int len, int ts, int page_size,
                         std::mt19937& rng) {
  return page_size == 0 ? test::contiguous(k, v, len, ts) : test::paged(k, v, len, ts, page_size, rng);
}

using Shape = test::AttentionShape;

// Two stored "future" tokens a causal kernel must ignore.
struct Case : test::AttentionCase {
  Case(Shape s_, std::mt19937& rng) : AttentionCase(s_, rng, 2) {}
};

// Outputs are convex combinations of V in [-1, 1]; the floor keeps near-zero outputs from
// dividing by ~0.
double err(const std::vector<float>& out, const std::vector<float>& expect, const Case& c) {
  return c.err(out, expect, kFloor);
}

// Runs naive, flash, flash_split (automatic and forced to 3 and 7 chunks) on contiguous and paged
// views of one case; every result must equal naive on the contiguous view within kTol.
void check_case(const Shape& s, std::mt19937& rng, std::initializer_list<int> page_sizes = {0, 1, 16, 48}) {
  Case c(s, rng);
  INFO("n_q=" << s.n_q << " q_pos0=" << s.q_pos0 << " heads=" << s.n_heads << "/" << s.n_kv_heads
              << " head_dim=" << s.head_dim);
  const test::KvLayout base = kv_layout(c.k, c.v, c.len, c.ts, 0, rng);
  auto expect = c.out_buffer();
  AttentionProblem pn = c.problem(base.view, expect.data());
  cpu::attention_naive({&pn, 1});
  if (s.n_q * s.n_heads * std::size_t(c.len) < 200000) {  // the double reference too, where cheap
    auto r = c.out_buffer();
    AttentionProblem pr = c.problem(base.view, r.data());
    ref::attention({&pr, 1});
    CHECK(err(expect, r, c) < kTol);
  }
  for (int ps : page_sizes) {
    INFO("page_size=" << ps << " (0 = contiguous)");
    const test::KvLayout kv = kv_layout(c.k, c.v, c.len, c.ts, ps, rng);
    {
      auto out = c.out_buffer();
      AttentionProblem p = c.problem(kv.view, out.data());
      cpu::attention_flash({&p, 1});
      INFO("flash");
      CHECK(err(out, expect, c) < kTol);
    }
    for (int force : {0, 3, 7}) {
      auto out = c.out_buffer();
      AttentionProblem p = c.problem(kv.view, out.data());
      cpu::attention_flash_split({&p, 1}, force);
      INFO("flash_split force_splits=" << force);
      CHECK(err(out, expect, c) < kTol);
    }
  }
}

}  // namespace

TEST_CASE("attention flash: decode (n_q = 1) and verification (n_q = k+1) equal naive", "[attention]") {
  std::mt19937 rng(11);
  const std::pair<int, int> heads[] = {{8, 8}, {9, 3}, {8, 1}};
  for (auto [h, kvh] : heads)
    for (int n_q : {1, 5})
      for (int q_pos0 : {0, 1, 63, 255, 300, 1037}) check_case({n_q, q_pos0, h, kvh, 64}, rng);
  check_case({1, 2999, 9, 3, 64}, rng, {0, 16});  // long decode: several key tiles per split
  check_case({4, 777, 4, 2, 24}, rng);            // head_dim not a SIMD multiple
}

TEST_CASE("attention flash: prefill and chunked prefill (q_pos0 > 0) equal naive", "[attention]") {
  std::mt19937 rng(12);
  const std::pair<int, int> heads[] = {{8, 8}, {9, 3}, {8, 1}};
  for (auto [h, kvh] : heads) {
    check_case({37, 0, h, kvh, 64}, rng);
    check_case({300, 0, h, kvh, 32}, rng, {0, 16});      // rows > row block, keys > key tile
    check_case({129, 517, h, kvh, 64}, rng, {0, 1, 48});  // a chunk after a 517-token prefix
  }
  check_case({2, 0, 9, 3, 64}, rng);
  check_case({1, 0, 9, 3, 64}, rng);  // one token, one key
}

TEST_CASE("attention flash: ragged batch of prefill and decode problems", "[attention]") {
  std::mt19937 rng(13);
  const Shape shapes[] = {{1, 900, 9, 3, 64}, {33, 0, 9, 3, 64}, {5, 40, 9, 3, 64}, {1, 0, 9, 3, 64}, {200, 70, 9, 3, 64}};
  std::vector<std::unique_ptr<Case>> cases;
  std::vector<std::unique_ptr<test::KvLayout>> kvs;
  std::vector<std::vector<float>> expect, out_f, out_s;
  std::vector<AttentionProblem> pn, pf, psplit;
  int ps = 16;
  for (const Shape& s : shapes) {
    cases.push_back(std::make_unique<Case>(s, rng));
    kvs.push_back(std::make_unique<test::KvLayout>(kv_layout(cases.back()->k, cases.back()->v, cases.back()->len, cases.back()->ts, ps, rng)));
    ps = ps == 16 ? 0 : 16;
    expect.push_back(cases.back()->out_buffer());
    out_f.push_back(cases.back()->out_buffer());
    out_s.push_back(cases.back()->out_buffer());
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    pn.push_back(cases[i]->problem(kvs[i]->view, expect[i].data()));
    pf.push_back(cases[i]->problem(kvs[i]->view, out_f[i].data()));
    psplit.push_back(cases[i]->problem(kvs[i]->view, out_s[i].data()));
  }
  NaiveAttention naive;
  FlashAttention flash;
  FlashSplitAttention split;
  naive.forward(pn);
  flash.forward(pf);
  for (int force : {0, 4}) {
    cpu::attention_flash_split(psplit, force);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      INFO("problem " << i << " force_splits=" << force);
      CHECK(err(out_f[i], expect[i], *cases[i]) < kTol);
      CHECK(err(out_s[i], expect[i], *cases[i]) < kTol);
    }
  }
  split.forward(psplit);
  for (std::size_t i = 0; i < cases.size(); ++i) CHECK(err(out_s[i], expect[i], *cases[i]) < kTol);
  CHECK(flash.name() == "flash");
  CHECK(split.name() == "flash_split");
}

TEST_CASE("attention flash: workspace is linear (flat in kv_len), naive's quadratic, split plan", "[attention]") {
  std::vector<float> dummy(1);
  std::vector<int32_t> zero = {0};
  auto problem = [&](int n_q, int ctx, int heads, int kv_heads, int hd) {
    AttentionProblem p;
    p.n_q = n_q;
    p.q_pos0 = ctx - n_q;
    p.n_heads = heads;
    p.n_kv_heads = kv_heads;
    p.head_dim = hd;
    p.kv = {dummy.data(), dummy.data(), zero.data(), 1, ctx, ctx, kv_heads * hd};
    return p;
  };
  // Prefill: naive grows 4x per doubling, flash not at all beyond one tile.
  const auto n1 = cpu::attention_naive_workspace_bytes(problem(2048, 2048, 9, 3, 64));
  const auto n2 = cpu::attention_naive_workspace_bytes(problem(4096, 4096, 9, 3, 64));
  const auto f1 = cpu::attention_flash_workspace_bytes(problem(2048, 2048, 9, 3, 64));
  const auto f2 = cpu::attention_flash_workspace_bytes(problem(4096, 4096, 9, 3, 64));
  CHECK(double(n2) / double(n1) > 3.8);
  CHECK(f2 == f1);
  CHECK(f1 < n1 / 100);
  // Decode grows with nothing but the group rows.
  CHECK(cpu::attention_flash_workspace_bytes(problem(1, 16384, 9, 3, 64)) ==
        std::size_t(3) * (2 * 64 + cpu::kFlashKeyBlock + 2) * sizeof(float));

  // One long decode on 2 threads is split; a prefill, one thread, or 64 sequences are not.
  const AttentionProblem dec = problem(1, 16384, 9, 3, 64);
  CHECK(cpu::attention_flash_split_count({&dec, 1}, 2, 0) > 1);
  CHECK(cpu::attention_flash_split_count({&dec, 1}, 1, 0) == 1);
  const AttentionProblem pre = problem(4096, 4096, 9, 3, 64);
  CHECK(cpu::attention_flash_split_count({&pre, 1}, 2, 0) == 1);
  std::vector<AttentionProblem> many(64, problem(1, 16384, 32, 32, 128));
  CHECK(cpu::attention_flash_split_count(many, 2, 0) == 1);
  const AttentionProblem shortdec = problem(1, 300, 9, 3, 64);
  CHECK(cpu::attention_flash_split_count({&shortdec, 1}, 2, 0) == 1);  // too few keys to split
  CHECK(cpu::attention_flash_split_workspace_bytes(dec, 2) > 2 * cpu::attention_flash_workspace_bytes(dec));
}
