// CUDA kernels vs the CPU kernels on the same inputs. A separate program so that machines without
// a GPU report it as skipped (exit 77, SKIP_RETURN_CODE in CTest) instead of failing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cmath>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <random>
#include <vector>

#include "cpu/kernels.hpp"
#include "cpu/reference.hpp"
#include "cuda/kernels.cuh"
#include "device.hpp"
#include "model/shape.hpp"
#include "../support.hpp"

using namespace ablate;

namespace {

using test::Dev;
using test::ok;
using test::random_vec;

struct Cublas {
  cublasHandle_t h = nullptr;
  Cublas() { REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~Cublas() { cublasDestroy(h); }
};

// p with its q, out, K and V on the device (a contiguous view: the block table is not read there).
AttentionProblem on_device(AttentionProblem p, const Dev<float>& q, const Dev<float>& k, const Dev<float>& v,
                           const Dev<float>& out) {
  p.q = q.ptr;
  p.out = out.ptr;
  p.kv.k_pool = k.ptr;
  p.kv.v_pool = v.ptr;
  p.kv.indices = nullptr;
  return p;
}

double max_rel_err(const std::vector<float>& a, const std::vector<float>& b, double floor = 1.0) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(double(a[i]) - b[i]) / std::max(floor, std::abs(double(b[i])));
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst;
}

}  // namespace

TEST_CASE("cuda matmul matches the CPU", "[cuda]") {
  std::mt19937 rng(1);
  Cublas cublas;
  for (int rows : {1, 3, 17})
    for (auto [in, out] : {std::pair{576, 576}, std::pair{577, 193}, std::pair{1536, 576}}) {
      INFO("rows=" << rows << " in=" << in << " out=" << out);
      auto x = random_vec(std::size_t(rows) * in, rng), w = random_vec(std::size_t(in) * out, rng);
      std::vector<float> y(std::size_t(rows) * out);
      Dev<float> dx(x), dw(w), dy(y);
      cuda::matmul(dy.ptr, dx.ptr, dw.ptr, rows, in, out, cublas.h, nullptr);
      cpu::matmul(y.data(), x.data(), w.data(), rows, in, out);
      // fp32 accumulation in another order differs by ~1e-5 relative here (H100: up to 2.7e-5 at
      // in=1536); TF32 math would show ~1e-3, which this bound catches.
      CHECK(max_rel_err(dy.host(), y) < 1e-4);
    }
}

TEST_CASE("cuda rmsnorm, swiglu, add, softmax match the CPU", "[cuda]") {
  std::mt19937 rng(2);
  const int rows = 5, dim = 576;
  auto x = random_vec(std::size_t(rows) * dim, rng, -3.0f, 3.0f), w = random_vec(dim, rng);
  {
    Dev<float> dx(x), dw(w);
    cuda::rmsnorm(dx.ptr, dx.ptr, dw.ptr, rows, dim, 1e-5f, nullptr);  // in place
    std::vector<float> expect(x.size());
    cpu::rmsnorm(expect.data(), x.data(), w.data(), rows, dim, 1e-5f);
    CHECK(max_rel_err(dx.host(), expect, 1e-6) < 1e-5);
  }
  {
    const std::size_t n = 100003;
    auto g = random_vec(n, rng, -8.0f, 8.0f), up = random_vec(n, rng);
    Dev<float> dg(g), du(up);
    cuda::swiglu(dg.ptr, du.ptr, n, nullptr);
    cpu::swiglu(g.data(), up.data(), n);
    CHECK(max_rel_err(dg.host(), g, 1e-6) < 1e-5);
    for (int rows : {1, 3}) {  // fused [gate | up] rows; rows 1 in place, as the decode step runs it
      const int hidden = 11008;
      auto gu = random_vec(std::size_t(rows) * 2 * hidden, rng, -8.0f, 8.0f);
      Dev<float> dgu(gu), dout(std::size_t(rows) * hidden);
      cuda::swiglu_rows(rows == 1 ? dgu.ptr : dout.ptr, dgu.ptr, rows, hidden, nullptr);
      std::vector<float> expect(std::size_t(rows) * hidden);
      cpu::swiglu_rows(expect.data(), gu.data(), rows, hidden);
      auto got = rows == 1 ? dgu.host() : dout.host();
      got.resize(expect.size());
      INFO("swiglu_rows rows=" << rows);
      CHECK(max_rel_err(got, expect, 1e-6) < 1e-5);
    }
    auto a = random_vec(n, rng), b = random_vec(n, rng);
    Dev<float> da(a), db(b);
    cuda::add(da.ptr, db.ptr, n, nullptr);
    cpu::add(a.data(), b.data(), n);
    CHECK(da.host() == a);
  }
  {  // argmax: ties go to the lowest index; a row of -inf gives 0, as on the CPU
    const int rows = 4, n = 32000;
    auto l = random_vec(std::size_t(rows) * n, rng, -10.0f, 10.0f);
    l[std::size_t(1) * n + 7] = l[std::size_t(1) * n + 31000] = 50.0f;  // a tie far apart
    l[std::size_t(2) * n + 5] = l[std::size_t(2) * n + 6] = 50.0f;      // adjacent
    for (int j = 0; j < n; ++j) l[std::size_t(3) * n + j] = -INFINITY;
    Dev<float> dl(l);
    Dev<int> dout{static_cast<std::size_t>(rows)};
    cuda::argmax_rows(dl.ptr, rows, n, dout.ptr, nullptr);
    std::vector<int> want(rows);
    cpu::argmax_rows(l.data(), rows, n, want.data());
    CHECK(dout.host() == want);
    CHECK(want[1] == 7);
    CHECK(want[2] == 5);
    CHECK(want[3] == 0);
  }
  for (int n : {1, 10, 49152}) {
    INFO("softmax n=" << n);
    const int srows = 3;
    auto s = random_vec(std::size_t(srows) * n, rng, -10.0f, 10.0f);
    s[0] = 1e4f;  // large inputs must not overflow
    Dev<float> ds(s);
    cuda::softmax(ds.ptr, srows, n, nullptr);
    for (int r = 0; r < srows; ++r) cpu::softmax(s.data() + std::size_t(r) * n, n);
    CHECK(max_rel_err(ds.host(), s, 1e-7) < 1e-5);
  }
}

TEST_CASE("cuda rope matches the CPU", "[cuda]") {
  std::mt19937 rng(3);
  const int rows = 7, n_heads = 9, head_dim = 64, row_stride = 576 + 2 * 192;
  auto x = random_vec(std::size_t(rows) * row_stride, rng);
  std::vector<int> pos = {0, 1, 2, 100, 511, 2047, 4095};
  Dev<float> dx(x);
  Dev<int> dpos(pos);
  cuda::rope(dx.ptr, rows, row_stride, n_heads, head_dim, dpos.ptr, 10000.0f, nullptr);
  cpu::rope(x.data(), rows, row_stride, n_heads, head_dim, pos.data(), 10000.0f);
  // Device powf may differ from glibc's by an ulp, which moves an angle of ~4e3 rad by ~2e-4.
  CHECK(max_rel_err(dx.host(), x) < 1e-3);
}

// Scaled RoPE (Llama 3.x): the frequency table the CPU backend uses (ModelShape::rope_frequencies
// with rope_scaling llama3, pairs in all three bands), on the device and on the host: the same
// angles, so only sincosf's last bits differ.
TEST_CASE("cuda rope with a frequency table (scaled RoPE) matches the CPU's", "[.][cuda][llama3]") {
  std::mt19937 rng(13);
  ModelShape s;
  s.dim = 576;
  s.n_heads = 9;
  s.rope_theta = 10000.0f;
  s.rope_scaling = {8.0f, 1.0f, 4.0f, 64, {}};
  const auto freq = s.rope_frequencies();
  REQUIRE(freq.size() == 32);
  const int rows = 7, n_heads = 9, head_dim = 64, row_stride = 576 + 2 * 192;
  auto x = random_vec(std::size_t(rows) * row_stride, rng);
  std::vector<int> pos = {0, 1, 2, 100, 511, 2047, 4095};
  Dev<float> dx(x), dfreq(freq);
  Dev<int> dpos(pos);
  cuda::rope(dx.ptr, rows, row_stride, n_heads, head_dim, dpos.ptr, cuda::RopeFreq{s.rope_theta, dfreq.ptr}, nullptr);
  const auto plain = x;
  cpu::rope(x.data(), rows, row_stride, n_heads, head_dim, pos.data(), freq.data());
  CHECK(max_rel_err(dx.host(), x) < 1e-4);
  // The table was used: plain RoPE on the device lands elsewhere.
  Dev<float> dplain(plain);
  cuda::rope(dplain.ptr, rows, row_stride, n_heads, head_dim, dpos.ptr, s.rope_theta, nullptr);
  CHECK(max_rel_err(dplain.host(), x) > 1e-2);
}

TEST_CASE("cuda add_bias_rows adds one bias row to every row, as cpu::add per row", "[.][cuda][qwen2]") {
  std::mt19937 rng(14);
  const int rows = 5, n = 1000;
  auto x = random_vec(std::size_t(rows) * n, rng);
  const auto bias = random_vec(std::size_t(n), rng);
  Dev<float> dx(x), db(bias);
  cuda::add_bias_rows(dx.ptr, db.ptr, rows, n, nullptr);
  for (int r = 0; r < rows; ++r) cpu::add(x.data() + std::size_t(r) * n, bias.data(), std::size_t(n));
  CHECK(dx.host() == x);
}

TEST_CASE("cuda attention_naive matches the CPU", "[cuda][attention]") {
  std::mt19937 rng(4);
  Cublas cublas;
  struct Case { int n_q, q_pos0, n_heads, n_kv_heads, head_dim; };
  for (Case c : {Case{1, 0, 8, 8, 64}, Case{1, 300, 9, 3, 64}, Case{5, 7, 8, 1, 8}, Case{33, 100, 9, 3, 64},
                 Case{64, 0, 9, 3, 64}}) {
    INFO("n_q=" << c.n_q << " q_pos0=" << c.q_pos0 << " heads=" << c.n_heads << "/" << c.n_kv_heads
                << " head_dim=" << c.head_dim);
    const int ts = c.n_kv_heads * c.head_dim, len = c.q_pos0 + c.n_q, qw = c.n_heads * c.head_dim;
    const int q_stride = qw + 2 * ts, out_stride = qw + 3;
    auto q = random_vec(std::size_t(c.n_q) * q_stride, rng, -2.0f, 2.0f);
    auto k = random_vec(std::size_t(len + 4) * ts, rng, -2.0f, 2.0f), v = random_vec(k.size(), rng);
    std::vector<float> out(std::size_t(c.n_q) * out_stride, 7.0f);
    std::vector<int32_t> zero = {0};

    AttentionProblem p;
    p.q_stride = q_stride;
    p.out_stride = out_stride;
    p.n_q = c.n_q;
    p.q_pos0 = c.q_pos0;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.scale = 1.0f / std::sqrt(float(c.head_dim));
    p.kv = {k.data(), v.data(), zero.data(), 1, len + 4, len + 4, ts};

    Dev<float> dq(q), dk(k), dv(v), dout(out);
    Dev<float> ws(std::vector<float>(cuda::attention_naive_workspace_bytes(p) / sizeof(float)));
    const AttentionProblem pd = on_device(p, dq, dk, dv, dout);
    cuda::attention_naive({&pd, 1}, ws.ptr, ws.n * sizeof(float), cublas.h, nullptr);

    p.q = q.data();
    p.out = out.data();
    cpu::attention_naive({&p, 1});
    CHECK(max_rel_err(dout.host(), out) < 1e-5);  // padding (7.0) compared too
  }
}

TEST_CASE("cuda attention_decode_f32 matches the CPU for one query token", "[cuda][attention]") {
  std::mt19937 rng(5);
  struct Case { int q_pos0, n_heads, n_kv_heads, head_dim; };
  for (Case c : {Case{0, 8, 8, 64}, Case{36, 9, 3, 64}, Case{999, 32, 32, 128}, Case{4000, 8, 1, 24}}) {
    INFO("q_pos0=" << c.q_pos0 << " heads=" << c.n_heads << "/" << c.n_kv_heads << " head_dim=" << c.head_dim);
    const int ts = c.n_kv_heads * c.head_dim, len = c.q_pos0 + 1, qw = c.n_heads * c.head_dim;
    auto q = random_vec(std::size_t(qw + 2 * ts), rng, -2.0f, 2.0f);
    auto k = random_vec(std::size_t(len + 3) * ts, rng, -2.0f, 2.0f), v = random_vec(k.size(), rng);
    std::vector<float> out(std::size_t(qw + 3), 7.0f);
    std::vector<int32_t> zero = {0};
    AttentionProblem p;
    p.q_stride = qw + 2 * ts;
    p.out_stride = qw + 3;
    p.n_q = 1;
    p.q_pos0 = c.q_pos0;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.scale = 1.0f / std::sqrt(float(c.head_dim));
    p.kv = {k.data(), v.data(), zero.data(), 1, len + 3, len, ts};
    Dev<float> dq(q), dk(k), dv(v), dout(out);
    const AttentionProblem pd = on_device(p, dq, dk, dv, dout);
    cuda::attention_decode_f32(pd, nullptr);
    p.q = q.data();
    p.out = out.data();
    cpu::attention_naive({&p, 1});
    CHECK(max_rel_err(dout.host(), out) < 1e-5);  // padding (7.0) compared too
  }
}

// ---- flash attention kernels (fp16 / bf16) vs the CPU reference ------------------------------
// Inputs are rounded to the dtype on the device and read back, so the double-precision CPU
// reference (ref::attention) sees exactly the kernel's inputs; the only differences left are the
// kernel's fp32 arithmetic, P rounded to the dtype before the tensor-core P V (prefill) and the
// output rounding. Pass: |gpu - ref| <= tol * (1 + |ref|) everywhere; padding columns untouched.
// Every kernel/dtype prints one line: PASS/FAIL, cases, max abs error, worst error/tolerance.

namespace {

// Device buffer of n dtype elements (2 bytes each).
struct DevHalf {
  void* ptr = nullptr;
  std::size_t n = 0;
  explicit DevHalf(std::size_t n_) : n(n_) { ok(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * 2)); }
  ~DevHalf() { cudaFree(ptr); }
  DevHalf(const DevHalf&) = delete;
  DevHalf& operator=(const DevHalf&) = delete;
};

// Host floats -> dtype on the device; `rounded` gets the values as the device holds them.
void upload_as(DevHalf& dst, const std::vector<float>& src, cuda::DType t, std::vector<float>& rounded) {
  Dev<float> tmp(src);
  cuda::cast_from_float(dst.ptr, tmp.ptr, src.size(), t, nullptr);
  cuda::cast_to_float(tmp.ptr, dst.ptr, src.size(), t, nullptr);
  rounded = tmp.host();
}
std::vector<float> download_as(const DevHalf& src, cuda::DType t) {
  Dev<float> tmp(std::vector<float>(src.n));
  cuda::cast_to_float(tmp.ptr, src.ptr, src.n, t, nullptr);
  return tmp.host();
}

struct FlashCase {
  int n_q, q_pos0, n_heads, n_kv_heads, head_dim, page_size;  // page_size 0: contiguous (one page)
};

enum class FlashKernel { prefill, decode, split };
const char* kernel_name(FlashKernel k) {
  return k == FlashKernel::prefill ? "attention_flash (prefill)"
         : k == FlashKernel::decode ? "attention_flash_decode (paged decode)"
                                    : "attention_flash_split (split-KV + reduce)";
}

struct FlashResult {
  double max_abs = 0.0, worst_ratio = 0.0;  // worst |err| / (tol * (1 + |ref|))
  bool padding_ok = true;
};

// One problem's buffers: the inputs as the device holds them (rounded to dtype) for the CPU
// reference, and the device problem.
struct FlashBuilt {
  FlashCase c;
  int qw = 0, out_stride = 0;
  std::vector<int32_t> indices;
  std::vector<float> qr, kr, vr, outr;
  std::unique_ptr<DevHalf> dq, dk, dv, dout;
  std::unique_ptr<Dev<int32_t>> didx;
  AttentionProblem host, dev;  // host: pointers into qr/kr/vr/outr; dev: device pointers
};

std::unique_ptr<FlashBuilt> build_flash_case(const FlashCase& c, cuda::DType t, std::mt19937& rng) {
  auto b = std::make_unique<FlashBuilt>();
  b->c = c;
  const int hd = c.head_dim, ts = c.n_kv_heads * hd, L = c.q_pos0 + c.n_q;
  b->qw = c.n_heads * hd;
  const int q_stride = b->qw + 2 * ts;
  b->out_stride = b->qw + 8;
  const int len = L + 3;  // stored "future" tokens a causal kernel must not read
  const int ps = c.page_size > 0 ? c.page_size : len;
  const int pages = (len + ps - 1) / ps, pool_pages = pages + 2;
  std::vector<int32_t> order(pool_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  b->indices.assign(order.begin(), order.begin() + pages);
  if (c.page_size == 0) b->indices = {0};

  auto q = random_vec(std::size_t(c.n_q) * q_stride, rng, -2.0f, 2.0f);
  auto k = random_vec(std::size_t(pool_pages) * ps * ts, rng, -2.0f, 2.0f);
  auto v = random_vec(k.size(), rng, -1.0f, 1.0f);
  std::vector<float> out(std::size_t(c.n_q) * b->out_stride, 7.0f);
  b->dq = std::make_unique<DevHalf>(q.size());
  b->dk = std::make_unique<DevHalf>(k.size());
  b->dv = std::make_unique<DevHalf>(v.size());
  b->dout = std::make_unique<DevHalf>(out.size());
  upload_as(*b->dq, q, t, b->qr);
  upload_as(*b->dk, k, t, b->kr);
  upload_as(*b->dv, v, t, b->vr);
  upload_as(*b->dout, out, t, b->outr);
  b->didx = std::make_unique<Dev<int32_t>>(b->indices);

  AttentionProblem& p = b->host;
  p.q_stride = q_stride;
  p.out_stride = b->out_stride;
  p.n_q = c.n_q;
  p.q_pos0 = c.q_pos0;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = hd;
  p.scale = 1.0f / std::sqrt(float(hd));
  p.kv = {nullptr, nullptr, nullptr, pages, ps, len, ts};
  b->dev = p;  // device pointers, dtype elements
  b->dev.q = static_cast<const float*>(b->dq->ptr);
  b->dev.out = static_cast<float*>(b->dout->ptr);
  b->dev.kv.k_pool = static_cast<const float*>(b->dk->ptr);
  b->dev.kv.v_pool = static_cast<const float*>(b->dv->ptr);
  b->dev.kv.indices = b->didx->ptr;
  p.q = b->qr.data();
  p.out = b->outr.data();
  p.kv.k_pool = b->kr.data();
  p.kv.v_pool = b->vr.data();
  p.kv.indices = b->indices.data();
  return b;
}

// A batch of cases in one call of one kernel (version 1 .. kDecodeVersions of the decode kernels); splits
// only for FlashKernel::split (0 = automatic). The worst error over the batch.
// planned: through make_decode_plan and attention_decode_planned (the CUDA backend's way, split
// counts automatic), with the pools' pointers shifted back by some elements that layer_delta
// then adds again.
FlashResult run_flash_batch(const std::vector<FlashCase>& cases, FlashKernel kernel, cuda::DType t, int splits,
                            int version, std::mt19937& rng, bool planned = false) {
  const double tol = t == cuda::DType::f16 ? 2e-3 : 1.6e-2;
  std::vector<std::unique_ptr<FlashBuilt>> built;
  std::vector<AttentionProblem> dev, host;
  for (const FlashCase& c : cases) {
    built.push_back(build_flash_case(c, t, rng));
    dev.push_back(built.back()->dev);
    host.push_back(built.back()->host);
  }
  if (planned) {
    const bool split = kernel == FlashKernel::split;
    const long long delta = 64;  // elements: keeps the 16-byte alignment
    std::vector<int> counts(dev.size(), 1);
    int rows = 0;
    for (std::size_t i = 0; i < dev.size(); ++i) {
      rows += dev[i].n_q;
      if (split) counts[i] = cuda::attention_flash_split_count(dev, i);
    }
    std::vector<AttentionProblem> shifted = dev;  // pointers hold 2-byte elements: shift by bytes
    for (std::size_t i = 0; i < dev.size(); ++i) {
      shifted[i].kv.k_pool = reinterpret_cast<const float*>(reinterpret_cast<const char*>(dev[i].kv.k_pool) - delta * 2);
      shifted[i].kv.v_pool = reinterpret_cast<const float*>(reinterpret_cast<const char*>(dev[i].kv.v_pool) - delta * 2);
    }
    const cuda::DecodePlan plan = cuda::make_decode_plan(shifted, counts, t);
    Dev<unsigned char> dplan(plan.bytes);
    const std::size_t wsb = cuda::attention_flash_split_workspace_bytes(dev, split ? 0 : 1);
    Dev<float> ws(std::vector<float>(std::max<std::size_t>(wsb / sizeof(float), 1)));
    const int bound = split ? cuda::attention_flash_split_bound(rows, dev.front().n_heads) : 1;
    cuda::attention_decode_planned(plan, dplan.ptr, bound, split, delta, ws.ptr, nullptr, version);
    ok(cudaDeviceSynchronize());
  } else if (kernel == FlashKernel::prefill) {
    cuda::attention_flash(dev, t, nullptr, version);
  } else if (kernel == FlashKernel::decode) {
    cuda::attention_flash_decode(dev, t, nullptr, version);
  } else {
    const std::size_t wsb = cuda::attention_flash_split_workspace_bytes(dev, splits);
    Dev<float> ws(std::vector<float>(std::max<std::size_t>(wsb / sizeof(float), 1)));
    cuda::attention_flash_split(dev, t, ws.ptr, wsb, nullptr, splits, version);
    ok(cudaDeviceSynchronize());
  }
  ok(cudaGetLastError());
  ref::attention(host);

  FlashResult r;
  for (const auto& b : built) {
    const std::vector<float> got = download_as(*b->dout, t);
    for (int i = 0; i < b->c.n_q; ++i)
      for (int j = 0; j < b->out_stride; ++j) {
        const std::size_t e = std::size_t(i) * b->out_stride + j;
        if (j >= b->qw) {
          if (got[e] != 7.0f) r.padding_ok = false;
          continue;
        }
        const double err = std::abs(double(got[e]) - b->outr[e]);
        r.max_abs = std::isnan(err) ? INFINITY : std::max(r.max_abs, err);
        r.worst_ratio = std::isnan(err) ? INFINITY : std::max(r.worst_ratio, err / (tol * (1.0 + std::abs(b->outr[e]))));
      }
  }
  return r;
}

void run_flash_suite(FlashKernel kernel, const std::vector<FlashCase>& cases, std::initializer_list<int> split_opts,
                     int version = 2) {
  std::mt19937 rng(40 + int(kernel));
  for (cuda::DType t : {cuda::DType::f16, cuda::DType::bf16}) {
    FlashResult worst;
    int n = 0, failed = 0;
    for (const FlashCase& c : cases)
      for (int splits : split_opts) {
        INFO(kernel_name(kernel) << " " << cuda::dtype_name(t) << " n_q=" << c.n_q << " q_pos0=" << c.q_pos0 << " heads="
                                 << c.n_heads << "/" << c.n_kv_heads << " head_dim=" << c.head_dim
                                 << " page_size=" << c.page_size << " splits=" << splits << " version=" << version);
        FlashResult r;
        try {
          r = run_flash_batch({c}, kernel, t, splits, version, rng);
        } catch (const std::exception& e) {
          FAIL(kernel_name(kernel) << " threw: " << e.what());
        }
        ++n;
        const bool pass = r.worst_ratio <= 1.0 && r.padding_ok;
        if (!pass) {
          ++failed;
          std::printf("  FAIL case: %s v%d %s n_q=%d q_pos0=%d heads=%d/%d hd=%d page=%d splits=%d max|err|=%.3g err/tol=%.3g "
                      "pad_ok=%d\n", kernel_name(kernel), version, cuda::dtype_name(t), c.n_q, c.q_pos0, c.n_heads,
                      c.n_kv_heads, c.head_dim, c.page_size, splits, r.max_abs, r.worst_ratio, int(r.padding_ok));
        }
        CHECK(r.padding_ok);
        CHECK(r.worst_ratio <= 1.0);
        worst.max_abs = std::max(worst.max_abs, r.max_abs);
        worst.worst_ratio = std::max(worst.worst_ratio, r.worst_ratio);
      }
    std::printf("%s %s v%d: %s  %d cases (%d failed)  max|err| = %.3g  worst err/tol = %.3g  (tol %.1g x (1 + |ref|))\n",
                failed ? "FAIL" : "PASS", kernel_name(kernel), version, cuda::dtype_name(t), n, failed, worst.max_abs,
                worst.worst_ratio, t == cuda::DType::f16 ? 2e-3 : 1.6e-2);
    std::fflush(stdout);
  }
}

}  // namespace

// Every prefill version. The cases include n_q above 128 (several of version 5's 128-row
// blocks), rows past n_q in the last block, and chunks (q_pos0 > 0) whose block mixes fully
// visible and masked tiles.
TEST_CASE("cuda attention_flash (prefill) matches the CPU reference, fp16 and bf16", "[cuda][attention]") {
  for (int version = 1; version <= 5; ++version)
    run_flash_suite(FlashKernel::prefill,
                    {{1, 0, 8, 8, 64, 0}, {37, 0, 9, 3, 64, 0}, {37, 0, 9, 3, 64, 16}, {100, 29, 9, 3, 64, 16},
                     {130, 70, 8, 1, 128, 0}, {64, 0, 32, 32, 128, 16}, {5, 300, 9, 3, 64, 7}, {257, 0, 8, 1, 64, 32},
                     {200, 500, 4, 4, 128, 16}, {1000, 0, 9, 3, 64, 16}, {300, 1, 4, 2, 128, 16}, {129, 0, 2, 1, 128, 0}},
                    {0}, version);
}

// Version 3 stages the page table 512 entries at a time: 1500 one-token pages take three
// windows, 9000 tokens in pages of 16 two.
TEST_CASE("cuda attention_flash_decode (paged) matches the CPU reference, fp16 and bf16", "[cuda][attention]") {
  for (int version = 1; version <= cuda::kDecodeVersions; ++version)
    run_flash_suite(FlashKernel::decode,
                    {{1, 0, 8, 8, 64, 0}, {1, 100, 9, 3, 64, 16}, {1, 1000, 8, 1, 64, 16}, {5, 777, 9, 3, 64, 16},
                     {1, 4000, 32, 32, 128, 16}, {4, 2500, 8, 1, 128, 0}, {1, 33, 9, 3, 64, 1}, {1, 1500, 8, 1, 64, 1},
                     {2, 9000, 4, 4, 128, 16}, {3, 383, 32, 32, 128, 16}},
                    {0}, version);
}

TEST_CASE("cuda attention_flash_split (split-KV + reduction) matches the CPU reference, fp16 and bf16", "[cuda][attention]") {
  for (int version = 1; version <= cuda::kDecodeVersions; ++version)
    run_flash_suite(FlashKernel::split,
                    {{1, 0, 8, 8, 64, 0}, {1, 100, 9, 3, 64, 16}, {1, 3000, 8, 1, 64, 16}, {5, 777, 9, 3, 64, 16},
                     {1, 9000, 32, 32, 128, 16}, {4, 2500, 8, 1, 128, 0}, {3, 17, 9, 3, 64, 1}},
                    {0, 3, 16, 64}, version);
}

// Version 2 launches a whole batch at once, 32 problems a launch: 45 sequences of different
// lengths, query counts and page sizes (the speculative verify's k+1 queries included), in one
// call, must each match the reference, split or not.
TEST_CASE("cuda decode kernels on a batch of 45 sequences in one call match the CPU reference", "[cuda][attention]") {
  std::mt19937 rng(77);
  std::vector<FlashCase> batch;
  const int sizes[] = {1, 1, 1, 2, 5};
  const int pages[] = {16, 1, 7, 0, 16};
  // 36 problems of head_dim 64, then 9 of 128: launches of 32, 4 and 9 (groups break at 32 and
  // where the head size changes).
  for (int k = 0; k < 45; ++k) batch.push_back({sizes[k % 5], (k * 397) % 3000, 8, 2, k < 36 ? 64 : 128, pages[k % 5]});
  for (cuda::DType t : {cuda::DType::f16, cuda::DType::bf16})
    for (FlashKernel kernel : {FlashKernel::decode, FlashKernel::split})
      for (int version = 1; version <= cuda::kDecodeVersions; ++version)
        for (int splits : kernel == FlashKernel::split ? std::vector<int>{0, 5} : std::vector<int>{0}) {
          INFO(kernel_name(kernel) << " v" << version << " " << cuda::dtype_name(t) << " splits=" << splits);
          const FlashResult r = run_flash_batch(batch, kernel, t, splits, version, rng);
          std::printf("%s batch of 45, %s v%d splits=%d: max|err| = %.3g  worst err/tol = %.3g\n", kernel_name(kernel),
                      cuda::dtype_name(t), version, splits, r.max_abs, r.worst_ratio);
          CHECK(r.padding_ok);
          CHECK(r.worst_ratio <= 1.0);
        }
  // The planned form (a device plan, a fixed grid, layer_delta), as the CUDA backend runs it.
  for (cuda::DType t : {cuda::DType::f16, cuda::DType::bf16})
    for (FlashKernel kernel : {FlashKernel::decode, FlashKernel::split})
      for (int version = 2; version <= cuda::kDecodeVersions; ++version) {
        INFO("planned " << kernel_name(kernel) << " v" << version << " " << cuda::dtype_name(t));
        const FlashResult r = run_flash_batch(batch, kernel, t, 0, version, rng, true);
        std::printf("planned %s v%d batch of 45, %s: max|err| = %.3g  worst err/tol = %.3g\n", kernel_name(kernel),
                    version, cuda::dtype_name(t), r.max_abs, r.worst_ratio);
        CHECK(r.padding_ok);
        CHECK(r.worst_ratio <= 1.0);
      }
}

int main(int argc, char** argv) {
  std::string why;
  if (!cuda::cuda_device_available(&why)) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
