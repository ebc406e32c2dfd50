// CUDA kernels vs the CPU kernels on the same inputs. A separate program so that machines without
// a GPU report it as skipped (exit 77, SKIP_RETURN_CODE in CTest) instead of failing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/kernels.hpp"
#include "cuda/kernels.cuh"

using namespace ablate;

namespace {

void ok(cudaError_t e) {
  if (e != cudaSuccess) FAIL(cudaGetErrorString(e));
}

// Device copy of a host vector; read back with host().
template <class T>
struct Dev {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    ok(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
    ok(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Dev() { cudaFree(ptr); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    ok(cudaDeviceSynchronize());
    ok(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

struct Cublas {
  cublasHandle_t h = nullptr;
  Cublas() { REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS); }
  ~Cublas() { cublasDestroy(h); }
};

std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
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
      CHECK(max_rel_err(dy.host(), y) < 1e-5);
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
    auto a = random_vec(n, rng), b = random_vec(n, rng);
    Dev<float> da(a), db(b);
    cuda::add(da.ptr, db.ptr, n, nullptr);
    cpu::add(a.data(), b.data(), n);
    CHECK(da.host() == a);
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
    AttentionProblem pd = p;
    pd.q = dq.ptr;
    pd.out = dout.ptr;
    pd.kv.k_pool = dk.ptr;
    pd.kv.v_pool = dv.ptr;
    pd.kv.indices = nullptr;
    cuda::attention_naive({&pd, 1}, ws.ptr, ws.n * sizeof(float), cublas.h, nullptr);

    p.q = q.data();
    p.out = out.data();
    cpu::attention_naive({&p, 1});
    CHECK(max_rel_err(dout.host(), out) < 1e-5);  // padding (7.0) compared too
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
