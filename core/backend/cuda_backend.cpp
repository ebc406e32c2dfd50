#include "backend/cuda_backend.hpp"

#include <stdexcept>

#if !defined(ABLATE_HAVE_CUDA)

namespace ablate {

// A build without nvcc: the backend exists only to say so.
void cuda_backend_check_device() { throw std::runtime_error("no CUDA device: this build has no CUDA (nvcc not found)"); }
struct CudaBackend::Impl {};
CudaBackend::CudaBackend(const Weights&, CudaBackendOptions) { cuda_backend_check_device(); }
CudaBackend::~CudaBackend() = default;
std::string CudaBackend::device_name() const { return ""; }
const ModelShape& CudaBackend::shape() const { throw std::logic_error("no CUDA backend"); }
std::size_t CudaBackend::weights_bytes() const { return 0; }
double CudaBackend::bits_per_weight() const { return 0.0; }
const std::vector<float>& CudaBackend::forward(const ForwardBatch&, KvCache&, Attention&) {
  throw std::logic_error("no CUDA backend");
}
const std::vector<int>& CudaBackend::forward_argmax(const ForwardBatch&, KvCache&, Attention&) {
  throw std::logic_error("no CUDA backend");
}
const std::vector<int>& CudaBackend::forward_sample(const ForwardBatch&, KvCache&, Attention&, const Sampler&,
                                                    std::span<const double>) {
  throw std::logic_error("no CUDA backend");
}
KvStorage CudaBackend::kv_storage() const { return {}; }
std::size_t CudaBackend::peak_device_bytes() const { return 0; }
void CudaBackend::set_cuda_graphs(bool) {}
void CudaBackend::set_cuda_pdl(bool) {}
void CudaBackend::set_cuda_l2_prefetch(bool) {}
void CudaBackend::set_flash_decode_version(int) {}
void CudaBackend::set_kv_dtype(const std::string&) {}
std::optional<double> CudaBackend::last_forward_device_s() const { return std::nullopt; }
CudaGraphStats CudaBackend::graph_stats() const { return {}; }

}  // namespace ablate

#else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include <fmt/format.h>

#include "attention/attention.hpp"
#include "cuda/bf16.cuh"
#include "cuda/kernels.cuh"
#include "base/nvtx.hpp"
#include "base/sampler.hpp"
#include "kv/kv_cache.hpp"
#include "model/gguf.hpp"

namespace ablate {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(fmt::format("cuda backend: {}: {}", what, cudaGetErrorString(e)));
}

// Device memory (cudaMalloc) or pinned host memory (cudaMallocHost: copies from it are queued,
// not staged through the driver).
struct DeviceMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMalloc(p, bytes); }
  static void release(void* p) { cudaFree(p); }
  static constexpr const char* kAllocate = "cudaMalloc";
};
struct PinnedMemory {
  static cudaError_t allocate(void** p, std::size_t bytes) { return cudaMallocHost(p, bytes); }
  static void release(void* p) { cudaFreeHost(p); }
  static constexpr const char* kAllocate = "cudaMallocHost";
};

// One allocation; grows (never shrinks) on reserve().
template <class Memory>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  Buffer& operator=(Buffer&&) = delete;
  ~Buffer() { Memory::release(ptr_); }
  void reserve(std::size_t bytes) {
    if (bytes <= bytes_) return;
    Memory::release(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    check(Memory::allocate(&ptr_, bytes), Memory::kAllocate);
    bytes_ = bytes;
  }
  template <class T = void>
  T* get() const { return static_cast<T*>(ptr_); }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};
using DeviceBuffer = Buffer<DeviceMemory>;
using PinnedBuffer = Buffer<PinnedMemory>;

}  // namespace

void cuda_backend_check_device() {
  std::string why;
  if (!cuda::cuda_device_available(&why)) throw std::runtime_error("no CUDA device: " + why);
}

struct CudaBackend::Impl {
  ModelShape shape;
  bool half = false;                          // 16-bit weights (dtype bf16 or fp16)
  cuda::DType half_type = cuda::DType::bf16;  // which
  cuda::KvElem kv_type = cuda::KvElem::bf16;  // the KV pools' element type (kv_dtype)
  KvDtype kv_dtype = KvDtype::bf16;           // the same, in the KV caches' vocabulary
  std::string dtype;                          // the weights' (options.dtype), for kv_dtype auto
  std::string device;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  std::size_t weights_bytes = 0;
  std::size_t peak_used = 0;

  // Weights: matrices in the weight dtype, fused like the CPU backend's (wqkv, w13); norms, the
  // Q/K/V biases and the embedding table (a gather, not a matmul) in fp32.
  struct Layer {
    DeviceBuffer rms_att, wqkv, wo, rms_ffn, w13, w2;
    DeviceBuffer bqkv;  // [bq | bk | bv] when shape.qkv_bias (Qwen2); else unallocated (nullptr)
  };
  std::vector<Layer> layers;
  DeviceBuffer embedding, rms_final, lm_head;
  // Scaled RoPE (shape.rope_scaling active): the CPU backend's frequency table, head_dim / 2 floats.
  // Plain RoPE keeps computing them on the device (unallocated: nullptr), its bits unchanged.
  DeviceBuffer rope_freq;
  cuda::RopeFreq rope() const { return {shape.rope_theta, rope_freq.get<float>()}; }

  // KV pools, sized to the cache in use (pool_elements each).
  DeviceBuffer k_pool, v_pool;
  // Flash prefill over KV of another type than the weights': the chunks' K/V widened to 16 bits,
  // read as one page each through zero_page (a device 0).
  DeviceBuffer widened_k, widened_v, zero_page;
  std::size_t pool_elements = 0;

  // Activations and step inputs (grown to the largest batch seen).
  DeviceBuffer x, xb, qkv, att, h13, h, logits, x16, q16, att16;
  DeviceBuffer tokens, positions, kv_offsets, pages, out_rows;
  DeviceBuffer gathered_k, gathered_v, scores, split_workspace, plan_buffer;
  std::vector<float> host_logits;
  std::vector<int> host_ids;
  DeviceBuffer ids;  // each logit row's token (greedy decoding: the argmax; sampling: drawn)
  DeviceBuffer uniforms, sample_workspace;  // sampling on the device (cuda::sample_rows)
  PinnedBuffer staging_inputs;              // the step inputs on their way to the device

  // CUDA graphs (cuda_graphs: true): one executable graph per step shape (key), captured the
  // second time the shape occurs (the first runs eagerly, so that cuBLAS and module loading
  // initialise outside a capture) and replayed from then on. Any buffer that moves invalidates
  // them all.
  // The forward pass's device time: events around everything it enqueues (inputs in, kernels,
  // logits out), read after the closing synchronisation.
  cudaEvent_t forward_begin = nullptr, forward_end = nullptr;
  double last_device_s = -1.0;
  std::size_t host_workspace = 0;  // the last forward pass's workspace bytes (device buffers but the pools)

  bool cuda_graphs = false;
  bool cuda_pdl = false;
  bool cuda_l2_prefetch = false;
  int flash_decode_version = 0;  // 0: cuda::attention_decode_version's choice
  std::map<std::string, cudaGraphExec_t> graphs;
  std::set<std::string> seen;
  long long steps = 0, graph_replays = 0, graph_captures = 0;

  ~Impl() {
    drop_graphs();
    if (forward_begin) cudaEventDestroy(forward_begin);
    if (forward_end) cudaEventDestroy(forward_end);
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
  }

  void drop_graphs() {
    for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
    graphs.clear();
    seen.clear();
  }

  // buf holds at least `needed` bytes (default: capacity); when it must grow it grows to
  // `capacity`, and captured graphs, which hold its old address, are dropped.
  void grow(DeviceBuffer& buf, std::size_t capacity, std::size_t needed = 0) {
    needed = std::max<std::size_t>(needed ? needed : capacity, 1);
    if (buf.bytes() >= needed) return;
    buf.reserve(std::max(capacity, needed));
    drop_graphs();
  }

  template <class F>
  void replay(const std::string& key, F&& enqueue) {
    if (auto it = graphs.find(key); it != graphs.end()) {
      check(cudaGraphLaunch(it->second, stream), "cuda_graphs: launch");
      ++graph_replays;
      return;
    }
    if (seen.insert(key).second) return enqueue();  // first time: eagerly
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cuda_graphs: begin capture");
    cudaGraph_t graph = nullptr;
    try {
      enqueue();
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    check(cudaStreamEndCapture(stream, &graph), "cuda_graphs: capture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(e, "cuda_graphs: instantiate");
    graphs.emplace(key, exec);
    ++graph_captures;
    check(cudaGraphLaunch(exec, stream), "cuda_graphs: launch");
    ++graph_replays;
  }

  cuda::KvElem kv_elem() const { return kv_type; }
  std::size_t weight_elem_bytes() const { return half ? 2 : 4; }
  // src (fp32) -> dst in the 16-bit weight type.
  void to_half(void* dst, const float* src, std::size_t n) {
    if (half_type == cuda::DType::bf16) cuda::to_bf16(static_cast<cuda::bf16_bits*>(dst), src, n, stream);
    else cuda::cast_from_float(dst, src, n, cuda::DType::f16, stream);
  }
  void gemv(float* y, const float* x, const DeviceBuffer& w, int in, int out, bool accumulate, int version,
            const float* norm_weight = nullptr, float norm_eps = 0.0f, cuda::L2Prefetch next = {}) {
    if (half_type == cuda::DType::bf16)
      cuda::gemv_bf16(y, x, w.get<cuda::bf16_bits>(), in, out, accumulate, stream, version, norm_weight, norm_eps, next);
    else
      cuda::gemv_f16(y, x, w.get<cuda::f16_bits>(), in, out, accumulate, stream, version, norm_weight, norm_eps, next);
  }

  void note_memory() {
    std::size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) peak_used = std::max(peak_used, total - free);
  }

  // Rows of `parts` stacked into one device matrix in the weight dtype.
  void upload_matrix(DeviceBuffer& dst, std::initializer_list<const std::vector<float>*> parts, DeviceBuffer& staging) {
    std::size_t n = 0;
    for (auto* p : parts) n += p->size();
    dst.reserve(n * weight_elem_bytes());
    weights_bytes += n * weight_elem_bytes();
    std::size_t at = 0;
    for (auto* p : parts) {
      if (!half) {
        check(cudaMemcpy(dst.get<float>() + at, p->data(), p->size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
      } else {
        staging.reserve(p->size() * sizeof(float));
        check(cudaMemcpy(staging.get(), p->data(), p->size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
        to_half(dst.get<std::uint16_t>() + at, staging.get<float>(), p->size());
      }
      at += p->size();
    }
  }
  void upload_f32(DeviceBuffer& dst, const float* src, std::size_t n) {
    dst.reserve(n * sizeof(float));
    weights_bytes += n * sizeof(float);
    check(cudaMemcpy(dst.get(), src, n * sizeof(float), cudaMemcpyHostToDevice), "upload");
  }

  // y[rows][out] = x[rows][in] W^T in the weight dtype, fp32 in and out.
  void matmul(float* y, const float* xin, const DeviceBuffer& w, int rows, int in, int out) {
    if (!half) return cuda::matmul(y, xin, w.get<float>(), rows, in, out, cublas, stream);
    if (rows == 1) return gemv(y, xin, w, in, out, false, gemv_version_for(in, out));
    // x16 holds rows x in: forward() sized it for the step.
    to_half(x16.get(), xin, static_cast<std::size_t>(rows) * in);
    if (half_type == cuda::DType::bf16)
      cuda::matmul_bf16(y, x16.get<cuda::bf16_bits>(), w.get<cuda::bf16_bits>(), rows, in, out, cublas, stream);
    else
      cuda::matmul_f16(y, x16.get<cuda::f16_bits>(), w.get<cuda::f16_bits>(), rows, in, out, cublas, stream);
  }

  // y = rmsnorm(xin; norm) W^T, via `normed` (rows x in scratch) when a matmul; at batch 1 in a
  // 16-bit dtype one GEMV that normalises as it reads (no rmsnorm launch). next: see l2_ahead().
  void matmul_normed(float* y, const float* xin, const DeviceBuffer& norm, float eps, const DeviceBuffer& w, int rows,
                     int in, int out, float* normed, cuda::L2Prefetch next = {}) {
    if (half && rows == 1) return gemv(y, xin, w, in, out, false, gemv_version_for(in, out), norm.get<float>(), eps, next);
    cuda::rmsnorm(normed, xin, norm.get<float>(), rows, in, eps, stream);
    matmul(y, normed, w, rows, in, out);
  }

  // Batch-1 fused forms (16-bit weights, one row, in % 8 == 0), dispatched on the weight type:
  // y += W x16 with x in the weights' 16-bit type (the attention output into the output
  // projection, no cast), and h = SwiGLU(W13 rmsnorm(x)) (norm, gate/up GEMV and SwiGLU at once).
  void gemv_x16_add(float* y, const void* x16, const DeviceBuffer& w, int in, int out, cuda::L2Prefetch next) {
    if (half_type == cuda::DType::bf16)
      cuda::gemv_bf16_x16(y, static_cast<const cuda::bf16_bits*>(x16), w.get<cuda::bf16_bits>(), in, out, true, stream,
                          gemv_version_for(in, out), next);
    else
      cuda::gemv_f16_x16(y, static_cast<const cuda::f16_bits*>(x16), w.get<cuda::f16_bits>(), in, out, true, stream,
                         gemv_version_for(in, out), next);
  }
  void gemv_swiglu(float* h, const float* x, const DeviceBuffer& norm, float eps, const DeviceBuffer& w13, int in,
                   int hidden, cuda::L2Prefetch next, int version) {
    if (half_type == cuda::DType::bf16)
      cuda::gemv_swiglu_bf16(h, x, w13.get<cuda::bf16_bits>(), in, hidden, stream, norm.get<float>(), eps, next, version);
    else
      cuda::gemv_swiglu_f16(h, x, w13.get<cuda::f16_bits>(), in, hidden, stream, norm.get<float>(), eps, next, version);
  }

  // The batch-1 QKV projection with the biases (bias: nullptr for none), RoPE (at *position), the
  // K/V store (into k and v at element *offset) and the 16-bit query (into q16) as its epilogue
  // (flash attention; replaces the GEMV and rope_store_qkv).
  void gemv_qkv_rope(const float* x, const DeviceBuffer& norm, float eps, const DeviceBuffer& wqkv, const float* bias,
                     const int* position, void* k, void* v, const std::int64_t* offset, void* q, cuda::L2Prefetch next,
                     int version) {
    const int hd = shape.head_dim();
    if (half_type == cuda::DType::bf16)
      cuda::gemv_qkv_rope_bf16(x, wqkv.get<cuda::bf16_bits>(), shape.dim, shape.n_heads, shape.n_kv_heads, hd, position,
                               rope(), k, v, offset, q, stream, norm.get<float>(), eps, next, version, bias);
    else
      cuda::gemv_qkv_rope_f16(x, wqkv.get<cuda::f16_bits>(), shape.dim, shape.n_heads, shape.n_kv_heads, hd, position,
                              rope(), k, v, offset, q, stream, norm.get<float>(), eps, next, version, bias);
  }

  // cuda_l2_prefetch: the first kL2Ahead bytes of w, for the GEMV before it to prefetch into L2
  // as its blocks finish (about what HBM moves during one kernel's ramp); nothing when off. The
  // output projection's weights are prefetched whole, by rope_store_qkv or the decode attention
  // (see forward()).
  static constexpr std::size_t kL2Ahead = std::size_t(8) << 20;
  cuda::L2Prefetch l2_ahead(const DeviceBuffer& w) const {
    if (!cuda_l2_prefetch) return {};
    return {w.get(), std::min(w.bytes(), kL2Ahead)};
  }

  // The residual connection x[rows][out] += xin W^T: one GEMV that adds as it writes when a
  // single 16-bit row (the batch-1 decode step), else a matmul into `scratch` and an add.
  void matmul_add(float* x, const float* xin, const DeviceBuffer& w, int rows, int in, int out, float* scratch,
                  cuda::L2Prefetch next = {}) {
    if (half && rows == 1) return gemv(x, xin, w, in, out, true, gemv_version_for(in, out), nullptr, 0.0f, next);
    matmul(scratch, xin, w, rows, in, out);
    cuda::add(x, scratch, static_cast<std::size_t>(rows) * out, stream);
  }

  // The batch-1 GEMV versions for this device, chosen at load on layer 0's weights and the LM
  // head: per plain matrix shape (the 4096-row matrices and the wide ones favour different block
  // shapes), and for the two GEMVs with an epilogue (gate/up + SwiGLU, QKV + RoPE + K/V store).
  std::map<std::pair<int, int>, int> gemv_versions;  // (in, out) -> version
  int swiglu_version = 1, qkv_rope_version = 1;      // of gemv_swiglu_*, gemv_qkv_rope_*
  int gemv_version_for(int in, int out) const {
    const auto it = gemv_versions.find({in, out});
    return it == gemv_versions.end() ? 2 : it->second;
  }
  // Versions 1..n of one kernel on one problem: each is run once and its output (`read`) compared
  // with version 1's (a version is eligible only within tol of the largest |output|: the
  // versions sum in different orders, and a kernel that computes anything else on this device
  // is reported and never chosen), then timed (CUDA events, median of 5); the fastest eligible
  // version wins. Appends "name vN (t1 .. tn us for v1..vn)" to report.
  template <class Run, class Read>
  int tune(const char* name, int n, float tol, Run&& run, Read&& read, std::string& report) {
    cudaEvent_t e0, e1;
    check(cudaEventCreate(&e0), "cudaEventCreate");
    check(cudaEventCreate(&e1), "cudaEventCreate");
    float best = 0.0f, ref_max = 0.0f;
    int best_v = 1;
    std::vector<float> ref;
    std::string times, rejected;
    for (int v = 1; v <= n; ++v) {
      run(v);  // also the warm-up
      check(cudaStreamSynchronize(stream), "gemv tuning");
      const std::vector<float> got = read();
      if (v == 1) {
        ref = got;
        for (float r : ref) ref_max = std::max(ref_max, std::abs(r));
      }
      float diff = 0.0f;
      for (std::size_t i = 0; i < got.size(); ++i) diff = std::max(diff, std::abs(got[i] - ref[i]));
      if (!(diff <= tol * ref_max)) {  // NaN fails too
        times += fmt::format("{}-", v > 1 ? " " : "");
        rejected += fmt::format(" v{} (max |y - y_v1| {:.3g} of max |y| {:.3g})", v, diff, ref_max);
        continue;
      }
      std::vector<float> ms;
      for (int rep = 0; rep < 5; ++rep) {
        check(cudaEventRecord(e0, stream), "cudaEventRecord");
        run(v);
        check(cudaEventRecord(e1, stream), "cudaEventRecord");
        check(cudaEventSynchronize(e1), "gemv tuning");
        float t = 0.0f;
        check(cudaEventElapsedTime(&t, e0, e1), "cudaEventElapsedTime");
        ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      times += fmt::format("{}{:.1f}", v > 1 ? " " : "", ms[2] * 1e3);
      if (v == 1 || ms[2] < best) best = ms[2], best_v = v;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    report += fmt::format("{}{} v{} ({} us for v1..v{}{}{})", report.empty() ? "" : "; ", name, best_v, times, n,
                          rejected.empty() ? "" : "; WRONG, not used:", rejected);
    return best_v;
  }
  void choose_gemv() {
    const Layer& L = layers.front();
    const int dim = shape.dim, hidden = shape.hidden_dim, qkv_dim = dim + 2 * shape.kv_dim();
    DeviceBuffer xin, y;
    const std::size_t n_x = static_cast<std::size_t>(std::max(dim, hidden));
    const std::size_t n_y = static_cast<std::size_t>(std::max({qkv_dim, 2 * hidden, shape.vocab_size}));
    xin.reserve(n_x * sizeof(float));
    y.reserve(n_y * sizeof(float));
    std::vector<float> x_host(n_x);
    for (std::size_t i = 0; i < n_x; ++i) x_host[i] = static_cast<float>(std::sin(0.37 * double(i) + 0.1));
    check(cudaMemcpy(xin.get(), x_host.data(), n_x * sizeof(float), cudaMemcpyHostToDevice), "gemv tuning");
    const auto read_f32 = [&](const DeviceBuffer& buf, std::size_t n) {
      std::vector<float> v(n);
      check(cudaMemcpy(v.data(), buf.get(), n * sizeof(float), cudaMemcpyDeviceToHost), "gemv tuning");
      return v;
    };
    std::string report;
    // Each matrix with the fused RMSNorm where the step has one (it changes what a version costs).
    struct Matrix {
      const char* name;
      const DeviceBuffer* w;
      int in, out;
      const DeviceBuffer* norm;
    };
    const Matrix mats[] = {{"wqkv", &L.wqkv, dim, qkv_dim, &L.rms_att},
                           {"wo", &L.wo, dim, dim, nullptr},
                           {"w2", &L.w2, hidden, dim, nullptr},
                           {"lm_head", &lm_head, dim, shape.vocab_size, &rms_final}};
    for (const Matrix& m : mats)
      gemv_versions[{m.in, m.out}] = tune(
          m.name, cuda::kGemvVersionsAll, 1e-3f,
          [&](int v) {
            gemv(y.get<float>(), xin.get<float>(), *m.w, m.in, m.out, false, v, m.norm ? m.norm->get<float>() : nullptr,
                 shape.norm_eps);
          },
          [&] { return read_f32(y, static_cast<std::size_t>(m.out)); }, report);
    swiglu_version = tune(
        "w13+swiglu", cuda::kEpilogueVersions, 1e-3f,
        [&](int v) { gemv_swiglu(y.get<float>(), xin.get<float>(), L.rms_ffn, shape.norm_eps, L.w13, dim, hidden, {}, v); },
        [&] { return read_f32(y, static_cast<std::size_t>(hidden)); }, report);
    // The QKV + RoPE GEMV into scratch: the query, key and value of one token at position 7, as
    // 16-bit values (so within 1e-2: a sum in another order can round to the neighbouring value).
    const int q_dim = shape.n_heads * shape.head_dim(), kv_dim = shape.kv_dim();
    DeviceBuffer out16, pos, off;
    out16.reserve(static_cast<std::size_t>(q_dim + 2 * kv_dim) * 2);
    pos.reserve(sizeof(int));
    off.reserve(sizeof(std::int64_t));
    const int seven = 7;
    check(cudaMemcpy(pos.get(), &seven, sizeof(int), cudaMemcpyHostToDevice), "gemv tuning");
    check(cudaMemset(off.get(), 0, sizeof(std::int64_t)), "gemv tuning");
    auto* q_s = out16.get<std::uint16_t>();
    qkv_rope_version = tune(
        "wqkv+rope", cuda::kEpilogueVersions, 1e-2f,
        [&](int v) {
          gemv_qkv_rope(xin.get<float>(), L.rms_att, shape.norm_eps, L.wqkv, L.bqkv.get<float>(), pos.get<int>(), q_s + q_dim,
                        q_s + q_dim + kv_dim, off.get<std::int64_t>(), q_s, {}, v);
        },
        [&] {
          std::vector<std::uint16_t> bits(static_cast<std::size_t>(q_dim + 2 * kv_dim));
          check(cudaMemcpy(bits.data(), out16.get(), bits.size() * 2, cudaMemcpyDeviceToHost), "gemv tuning");
          std::vector<float> v(bits.size());
          for (std::size_t i = 0; i < bits.size(); ++i)
            v[i] = half_type == cuda::DType::bf16 ? bf16_to_float(bits[i]) : fp16_to_float(bits[i]);
          return v;
        },
        report);
    gemv_tuning = fmt::format("{} per matrix: {}", half_type == cuda::DType::bf16 ? "gemv_bf16" : "gemv_f16", report);
  }
  std::string gemv_tuning;

  // What a forward pass returns: its logits (into host_logits), or each logit row's token (into
  // host_ids), the argmax or drawn on the device with the given temperature, top-p and uniforms.
  struct Tokens {
    bool sample = false;  // else the argmax
    double temperature = 0.0, top_p = 1.0;
    std::span<const double> uniforms;
  };
  void forward(const ForwardBatch& batch, KvCache& kv, const std::string& attention, const Tokens* tokens);
};

CudaBackend::CudaBackend(const Weights& w, CudaBackendOptions options) : impl_(std::make_unique<Impl>()) {
  cuda_backend_check_device();
  Impl& m = *impl_;
  if (options.dtype != "fp32" && options.dtype != "bf16" && options.dtype != "fp16")
    throw std::invalid_argument(
        fmt::format("dtype: \"{}\" is not available on backend cuda; allowed: fp32, bf16, fp16", options.dtype));
  m.shape = w.shape;
  m.half = options.dtype != "fp32";
  m.half_type = options.dtype == "fp16" ? cuda::DType::f16 : cuda::DType::bf16;
  m.dtype = options.dtype;
  set_kv_dtype(options.kv_dtype);
  m.cuda_graphs = options.cuda_graphs;
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  m.device = prop.name;
  check(cudaStreamCreate(&m.stream), "cudaStreamCreate");
  m.zero_page.reserve(sizeof(std::int32_t));
  check(cudaMemset(m.zero_page.get(), 0, sizeof(std::int32_t)), "cudaMemset");
  check(cudaEventCreate(&m.forward_begin), "cudaEventCreate");
  check(cudaEventCreate(&m.forward_end), "cudaEventCreate");
  if (cublasCreate(&m.cublas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cuda backend: cublasCreate failed");

  DeviceBuffer staging;
  m.layers.resize(w.layers.size());
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    Impl::Layer& D = m.layers[l];
    m.upload_f32(D.rms_att, L.rms_att.data(), L.rms_att.size());
    m.upload_f32(D.rms_ffn, L.rms_ffn.data(), L.rms_ffn.size());
    m.upload_matrix(D.wqkv, {&L.wq, &L.wk, &L.wv}, staging);
    m.upload_matrix(D.wo, {&L.wo}, staging);
    m.upload_matrix(D.w13, {&L.w1, &L.w3}, staging);
    m.upload_matrix(D.w2, {&L.w2}, staging);
    if (w.shape.qkv_bias) {
      std::vector<float> b(L.bq);
      b.insert(b.end(), L.bk.begin(), L.bk.end());
      b.insert(b.end(), L.bv.begin(), L.bv.end());
      if (b.size() != static_cast<std::size_t>(w.shape.dim + 2 * w.shape.kv_dim()))
        throw std::invalid_argument(fmt::format("model {}: layer {} has {} Q/K/V bias values, expected {}", w.shape.name, l,
                                                b.size(), w.shape.dim + 2 * w.shape.kv_dim()));
      m.upload_f32(D.bqkv, b.data(), b.size());
    }
    check(cudaStreamSynchronize(m.stream), "weights upload");  // staging is reused by the next layer
  }
  if (w.shape.rope_scaling.active()) {
    const std::vector<float> freq = w.shape.rope_frequencies();
    m.rope_freq.reserve(freq.size() * sizeof(float));
    check(cudaMemcpy(m.rope_freq.get(), freq.data(), freq.size() * sizeof(float), cudaMemcpyHostToDevice), "upload");
  }
  m.upload_f32(m.embedding, w.token_embedding.data(), w.token_embedding.size());
  m.upload_f32(m.rms_final, w.rms_final.data(), w.rms_final.size());
  const std::vector<float> head(w.lm_head(), w.lm_head() + static_cast<std::size_t>(w.shape.vocab_size) * w.shape.dim);
  m.upload_matrix(m.lm_head, {&head}, staging);
  check(cudaStreamSynchronize(m.stream), "weights upload");
  if (m.half && !m.layers.empty()) {
    m.choose_gemv();
    std::fprintf(stderr, "cuda backend: %s\n", m.gemv_tuning.c_str());
  }
  if (options.cuda_pdl) set_cuda_pdl(true);
  if (options.cuda_l2_prefetch) set_cuda_l2_prefetch(true);
  m.note_memory();
}

CudaBackend::~CudaBackend() = default;
std::string CudaBackend::device_name() const { return impl_->device; }
const ModelShape& CudaBackend::shape() const { return impl_->shape; }
std::size_t CudaBackend::weights_bytes() const { return impl_->weights_bytes; }
double CudaBackend::bits_per_weight() const { return 8.0 * static_cast<double>(impl_->weight_elem_bytes()); }  // the LM head too
KvStorage CudaBackend::kv_storage() const { return {cuda::kv_elem_bytes(impl_->kv_type), false, impl_->kv_dtype}; }
void CudaBackend::set_cuda_graphs(bool on) {
  impl_->cuda_graphs = on;
  if (!on) impl_->drop_graphs();
}
namespace {
// A Hopper feature's switch: on needs `supported` (compute capability 9.0 or newer).
void require_sm90(bool on, bool supported, const char* key, const char* feature, const std::string& device) {
  if (on && !supported)
    throw std::invalid_argument(fmt::format("{}: true needs compute capability 9.0 or newer ({}); this device is {}; "
                                            "allowed here: false",
                                            key, feature, device));
}
}  // namespace
void CudaBackend::set_cuda_pdl(bool on) {
  require_sm90(on, cuda::programmatic_launch_supported(), "cuda_pdl", "programmatic dependent launch", impl_->device);
  impl_->cuda_pdl = on;
}
void CudaBackend::set_cuda_l2_prefetch(bool on) {
  require_sm90(on, cuda::l2_prefetch_supported(), "cuda_l2_prefetch", "bulk L2 prefetch", impl_->device);
  impl_->cuda_l2_prefetch = on;
}
void CudaBackend::set_flash_decode_version(int version) {
  if (version != 0 && (version < 2 || version > cuda::kDecodeVersions))
    throw std::invalid_argument(fmt::format("cuda_flash_decode_version: {} is not a planned decode kernel; allowed: 0 "
                                            "(the backend's choice), 2 .. {}",
                                            version, cuda::kDecodeVersions));
  impl_->flash_decode_version = version;
}
void CudaBackend::set_kv_dtype(const std::string& kv_dtype) {
  Impl& m = *impl_;
  const auto unavailable = [&] {
    return std::invalid_argument(fmt::format(
        "kv.dtype: \"{}\" is not available on backend cuda; allowed: auto, fp32, bf16, fp16, fp8_e4m3", kv_dtype));
  };
  KvDtype d;
  try {
    d = parse_kv_dtype(kv_dtype == "auto" ? m.dtype : kv_dtype);
  } catch (const std::invalid_argument&) {
    throw unavailable();
  }
  cuda::KvElem e;
  switch (d) {
    case KvDtype::fp32: e = cuda::KvElem::f32; break;
    case KvDtype::bf16: e = cuda::KvElem::bf16; break;
    case KvDtype::fp16: e = cuda::KvElem::f16; break;
    case KvDtype::fp8_e4m3: e = cuda::KvElem::fp8_e4m3; break;
    default: throw unavailable();  // int8: not in the CUDA kernels
  }
  if (e == m.kv_type) return;
  m.kv_type = e;
  m.kv_dtype = d;
  m.pool_elements = 0;  // the next forward pass sizes the pools for this element size
  m.drop_graphs();      // captured kernels read the old type
}
CudaGraphStats CudaBackend::graph_stats() const { return {impl_->steps, impl_->graph_replays, impl_->graph_captures}; }
std::optional<double> CudaBackend::last_forward_device_s() const {
  if (impl_->last_device_s < 0) return std::nullopt;
  return impl_->last_device_s;
}
std::size_t CudaBackend::peak_device_bytes() const { return impl_->peak_used; }

namespace {
std::string cuda_attention_name(const Attention& attention, bool half, cuda::KvElem kv) {
  std::string name = attention.name();
  if (name != "naive" && name != "flash" && name != "flash_split")
    throw std::invalid_argument(fmt::format("attention: \"{}\" has no CUDA kernel; allowed: naive, flash, flash_split", name));
  if (name != "naive" && !half)
    throw std::invalid_argument(fmt::format("attention {} on backend cuda needs dtype bf16 or fp16", name));
  if (name != "naive" && kv == cuda::KvElem::f32)
    throw std::invalid_argument(fmt::format("attention {} on backend cuda reads 16-bit or fp8 K/V; allowed kv.dtype: auto, "
                                            "bf16, fp16, fp8_e4m3 (fp32 KV: attention naive)", name));
  return name;
}
}  // namespace

const std::vector<float>& CudaBackend::forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  impl_->forward(batch, kv, cuda_attention_name(attention, impl_->half, impl_->kv_type), nullptr);
  note_workspace(impl_->host_workspace);
  return impl_->host_logits;
}

const std::vector<int>& CudaBackend::forward_argmax(const ForwardBatch& batch, KvCache& kv, Attention& attention) {
  const Impl::Tokens argmax;
  impl_->forward(batch, kv, cuda_attention_name(attention, impl_->half, impl_->kv_type), &argmax);
  note_workspace(impl_->host_workspace);
  return impl_->host_ids;
}

const std::vector<int>& CudaBackend::forward_sample(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                                    const Sampler& sampler, std::span<const double> uniforms) {
  if (sampler.greedy()) return forward_argmax(batch, kv, attention);
  const Impl::Tokens drawn{true, sampler.temperature(), sampler.top_p(), uniforms};
  impl_->forward(batch, kv, cuda_attention_name(attention, impl_->half, impl_->kv_type), &drawn);
  note_workspace(impl_->host_workspace);
  return impl_->host_ids;
}

void CudaBackend::Impl::forward(const ForwardBatch& batch, KvCache& kv, const std::string& attention,
                                const Tokens* want) {
  const ModelShape& s = shape;
  const int dim = s.dim, kv_dim = s.kv_dim(), hd = s.head_dim(), hidden = s.hidden_dim, qkv_dim = dim + 2 * kv_dim;
  const int n_real = batch.num_tokens(), T = n_real + batch.padding_rows, n_out = batch.num_logit_rows();
  const int n_chunks = static_cast<int>(batch.chunks.size());
  const auto sz = [](int rows, int cols) { return static_cast<std::size_t>(rows) * cols; };
  const std::size_t f = sizeof(float);
  const bool flash = attention != "naive", split = attention == "flash_split";
  // One 16-bit row whose projections take the fused batch-1 GEMVs (see gemv_x16_add, gemv_swiglu).
  const bool fused_row = half && T == 1 && dim % 8 == 0;
  // ... whose QKV projection also does RoPE and the K/V store (gemv_qkv_rope): a real token, flash,
  // KV in the weights' type (the GEMV's epilogue stores that type).
  const bool fused_qkv = fused_row && n_real == 1 && flash && kv_type == cuda::kv_elem_of(half_type);
  // Flash prefill reads K/V of the weights' 16-bit type: other pools are widened into a copy.
  const bool widen_kv = flash && kv_type != cuda::kv_elem_of(half_type);

  // KV pools the size of this cache's (a new run's cache may differ).
  if (kv.pool_elements() != pool_elements) {
    const std::size_t bytes = kv.pool_elements() * cuda::kv_elem_bytes(kv_elem());
    grow(k_pool, bytes);
    grow(v_pool, bytes);
    pool_elements = kv.pool_elements();
  }
  // Every buffer of the step is sized here, before any work is queued: growing one later would
  // free memory that queued kernels may still read (and would invalidate captured graphs). What
  // the step needs of them (the pools aside) is its workspace.
  std::size_t workspace = 0;
  const auto size_for_step = [&](DeviceBuffer& buf, std::size_t capacity, std::size_t needed = 0) {
    workspace += needed ? needed : capacity;
    grow(buf, capacity, needed);
  };
  for (DeviceBuffer* b : {&x, &att}) size_for_step(*b, sz(T, dim) * f);
  size_for_step(xb, sz(T, std::max(dim, hidden)) * f);
  size_for_step(x16, sz(T, std::max({dim, hidden, qkv_dim})) * 2);
  size_for_step(qkv, sz(T, qkv_dim) * f);
  size_for_step(h13, sz(T, 2 * hidden) * f);
  size_for_step(h, sz(T, hidden) * f);
  size_for_step(logits, sz(n_out, s.vocab_size) * f);
  size_for_step(ids, sz(n_out, 1) * sizeof(int));
  const bool sample = want && want->sample;
  if (sample) {
    if (want->uniforms.size() != static_cast<std::size_t>(n_out))
      throw std::invalid_argument("cuda backend: forward_sample needs one uniform per logit row");
    size_for_step(uniforms, sz(n_out, 1) * sizeof(double));
    size_for_step(sample_workspace, cuda::sample_rows_workspace_bytes(n_out, s.vocab_size, want->top_p));
  }

  // Step inputs, built on the host and copied once: token ids and positions (padding rows: token
  // 0 at position 0, as on the CPU), each token's KV slot in every layer, each chunk's pages,
  // and the rows whose logits are wanted.
  std::vector<int> tok(static_cast<std::size_t>(T), 0), pos(static_cast<std::size_t>(T), 0), rows_out;
  std::vector<std::int64_t> offsets(sz(s.n_layers, n_real));
  std::vector<std::int32_t> page_list;
  std::vector<int> page_start(static_cast<std::size_t>(n_chunks)), chunk_row(static_cast<std::size_t>(n_chunks));
  std::vector<KvSeqView> views;  // each chunk's page list; only the pool offset differs per layer
  int row = 0;
  for (int ci = 0; ci < n_chunks; ++ci) {
    const ForwardChunk& c = batch.chunks[static_cast<std::size_t>(ci)];
    const int n = static_cast<int>(c.tokens.size());
    chunk_row[static_cast<std::size_t>(ci)] = row;
    for (int i = 0; i < n; ++i) {
      tok[static_cast<std::size_t>(row + i)] = c.tokens[static_cast<std::size_t>(i)];
      pos[static_cast<std::size_t>(row + i)] = c.pos0 + i;
      for (int l = 0; l < s.n_layers; ++l) offsets[sz(l, n_real) + row + i] = static_cast<std::int64_t>(kv.slot_offset(l, c.seq, c.pos0 + i));
    }
    for (int i = c.all_logits ? 0 : n - 1; i < n; ++i) rows_out.push_back(row + i);
    const KvSeqView& v = views.emplace_back(kv.view(0, c.seq, c.pos0 + n));  // the same pages in every layer
    page_start[static_cast<std::size_t>(ci)] = static_cast<int>(page_list.size());
    page_list.insert(page_list.end(), v.indices, v.indices + v.num_pages);
    row += n;
  }
  // The page list grows a little every step; room to spare keeps its address (and graphs) stable.
  size_for_step(pages, std::max<std::size_t>(page_list.size() * 2, 4096) * sizeof(std::int32_t), page_list.size() * sizeof(std::int32_t));
  size_for_step(tokens, sz(T, 1) * sizeof(int));
  size_for_step(positions, sz(T, 1) * sizeof(int));
  size_for_step(kv_offsets, std::max<std::size_t>(offsets.size(), 1) * sizeof(std::int64_t));
  size_for_step(out_rows, std::max<std::size_t>(rows_out.size(), 1) * sizeof(int));

  // Attention. Chunks of more than 16 queries (prefill) go to the flash prefill kernel, the rest
  // (1 .. k+1 queries) to the decode kernel through one plan for all layers. naive: per sequence.
  const std::size_t elem = cuda::kv_elem_bytes(kv_elem());
  int longest = 1;
  std::size_t most_scores = 1;
  for (const ForwardChunk& c : batch.chunks) {
    AttentionProblem p;
    p.n_heads = s.n_heads;
    p.n_q = static_cast<int>(c.tokens.size());
    p.q_pos0 = c.pos0;
    longest = std::max(longest, p.kv_len());
    most_scores = std::max(most_scores, cuda::attention_naive_workspace_bytes(p));
  }
  if (flash) {
    size_for_step(q16, sz(T, qkv_dim) * 2);
    size_for_step(att16, sz(T, dim) * 2);
  } else {
    size_for_step(gathered_k, sz(longest, kv_dim) * f);
    size_for_step(gathered_v, sz(longest, kv_dim) * f);
    size_for_step(scores, most_scores);
  }
  const auto problem_of = [&](int ci, int layer) {
    const ForwardChunk& c = batch.chunks[static_cast<std::size_t>(ci)];
    const int r = chunk_row[static_cast<std::size_t>(ci)];
    AttentionProblem p;
    p.n_q = static_cast<int>(c.tokens.size());
    p.q_pos0 = c.pos0;
    p.n_heads = s.n_heads;
    p.n_kv_heads = s.n_kv_heads;
    p.head_dim = hd;
    p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    p.q_stride = qkv_dim;
    p.out_stride = dim;
    p.kv = views[static_cast<std::size_t>(ci)];
    if (flash) {  // 16-bit copies of q and the output (naive sets its own fp32 pointers)
      p.q = reinterpret_cast<const float*>(q16.get<std::uint16_t>() + sz(r, qkv_dim));
      p.out = reinterpret_cast<float*>(att16.get<std::uint16_t>() + sz(r, dim));
    }
    p.kv.k_pool = reinterpret_cast<const float*>(k_pool.get<const char>() + kv.view_offset(layer, c.seq) * elem);
    p.kv.v_pool = reinterpret_cast<const float*>(v_pool.get<const char>() + kv.view_offset(layer, c.seq) * elem);
    p.kv.indices = pages.get<std::int32_t>() + page_start[static_cast<std::size_t>(ci)];
    return p;
  };
  std::vector<int> prefill_chunks, decode_chunks;
  for (int ci = 0; ci < n_chunks && flash; ++ci)
    (batch.chunks[static_cast<std::size_t>(ci)].tokens.size() > 16 ? prefill_chunks : decode_chunks).push_back(ci);
  std::size_t widened_elements = 0;  // the prefill chunks' keys (widen_kv)
  for (int ci : prefill_chunks)
    if (widen_kv) widened_elements += sz(problem_of(ci, 0).kv_len(), kv_dim);
  if (widened_elements) {
    size_for_step(widened_k, widened_elements * 2);
    size_for_step(widened_v, widened_elements * 2);
  }
  cuda::DecodePlan plan;
  int decode_version = 2;  // of the decode attention kernel (cuda::attention_decode_version)
  std::vector<long long> layer_delta(static_cast<std::size_t>(s.n_layers), 0);  // elements past layer 0's pools
  int split_bound = 1, decode_rows = 0;
  if (!decode_chunks.empty()) {
    std::vector<AttentionProblem> problems;
    for (int ci : decode_chunks) {
      problems.push_back(problem_of(ci, 0));
      decode_rows += problems.back().n_q;
    }
    std::vector<int> counts(problems.size(), 1);
    if (split) {
      for (std::size_t i = 0; i < problems.size(); ++i) counts[i] = cuda::attention_flash_split_count(problems, i);
      split_bound = cuda::attention_flash_split_bound(decode_rows, s.n_heads);
      const std::size_t ws = std::size_t(decode_rows) * s.n_heads * split_bound * (hd + 1) * f;  // any counts <= bound
      size_for_step(split_workspace, ws);
    }
    plan = cuda::make_decode_plan(problems, counts, half_type, kv_type);
    decode_version = flash_decode_version ? flash_decode_version : cuda::attention_decode_version(decode_rows, s.n_heads);
    size_for_step(plan_buffer, std::max<std::size_t>(plan.bytes.size() * 2, 16 * 1024), plan.bytes.size());
    // One plan serves every layer: the caches place a sequence's layers at one stride apart.
    for (int l = 1; l < s.n_layers; ++l) {
      const auto& c0 = batch.chunks[static_cast<std::size_t>(decode_chunks.front())];
      layer_delta[static_cast<std::size_t>(l)] =
          static_cast<long long>(kv.view_offset(l, c0.seq)) - static_cast<long long>(kv.view_offset(0, c0.seq));
      for (int ci : decode_chunks) {
        const int seq = batch.chunks[static_cast<std::size_t>(ci)].seq;
        if (static_cast<long long>(kv.view_offset(l, seq)) - static_cast<long long>(kv.view_offset(0, seq)) !=
            layer_delta[static_cast<std::size_t>(l)])
          throw std::logic_error("cuda backend: the KV cache does not place every sequence's layers one stride apart");
      }
    }
  }

  check(cudaEventRecord(forward_begin, stream), "cudaEventRecord");
  // The prefix cache's copy-on-write since the last pass (PagedKvCache::ensure records it: the
  // pools are here), in recorded order, before this pass writes K/V. Each copy's source holds
  // what it held at that ensure(): K/V change only in forward passes, and it was a block others
  // read, so no sequence wrote it since; its target is a block only the copying sequence holds.
  // So the pools end as the host pools would, where ensure() copies at once.
  for (const KvSlotCopy& c : kv.take_pending_copies()) {
    const std::size_t eb = cuda::kv_elem_bytes(kv_elem()), bytes = c.elements * eb;
    if (std::max(c.from, c.to) + c.elements > pool_elements)
      throw std::logic_error("cuda backend: a KV block copy past the pools");
    for (DeviceBuffer* pool : {&k_pool, &v_pool})
      check(cudaMemcpyAsync(pool->get<char>() + c.to * eb, pool->get<char>() + c.from * eb, bytes,
                            cudaMemcpyDeviceToDevice, stream),
            "KV block copy");
  }
  // Through pinned memory: a copy from pageable memory stages through the driver and holds the
  // host for each of them; from pinned memory it is queued and returns (the step's last
  // synchronisation keeps the staging from being overwritten while a copy still reads it).
  struct Upload {
    DeviceBuffer* dst;
    const void* src;
    std::size_t bytes;
  };
  const Upload uploads[] = {{&tokens, tok.data(), tok.size() * sizeof(int)},
                            {&positions, pos.data(), pos.size() * sizeof(int)},
                            {&kv_offsets, offsets.data(), offsets.size() * sizeof(std::int64_t)},
                            {&pages, page_list.data(), page_list.size() * sizeof(std::int32_t)},
                            {&out_rows, rows_out.data(), rows_out.size() * sizeof(int)},
                            {&plan_buffer, plan.bytes.data(), plan.bytes.size()}};
  std::size_t staged = 0;
  for (const Upload& u : uploads) staged += (u.bytes + 15) / 16 * 16;
  staging_inputs.reserve(staged);
  for (std::size_t at = 0; const Upload& u : uploads) {
    if (u.bytes == 0) continue;
    std::memcpy(staging_inputs.get<char>() + at, u.src, u.bytes);
    check(cudaMemcpyAsync(u.dst->get(), staging_inputs.get<char>() + at, u.bytes, cudaMemcpyHostToDevice, stream),
          "step inputs");
    at += (u.bytes + 15) / 16 * 16;
  }

  // The step's kernels, from the embedding to the LM head: enqueued directly, or captured once
  // per step shape and replayed (cuda_graphs) when nothing in them depends on this step's
  // lengths: every chunk a decode chunk (prefill problems travel by value), flash attention.
  const auto enqueue = [&] {
    cuda::embed(x.get<float>(), embedding.get<float>(), tokens.get<int>(), T, dim, stream);
    if (T > n_real) check(cudaMemsetAsync(att.get<float>() + sz(n_real, dim), 0, sz(T - n_real, dim) * f, stream), "memset");
    for (int l = 0; l < s.n_layers; ++l) {
      const Layer& L = layers[static_cast<std::size_t>(l)];
      float* q = qkv.get<float>();
      const std::int64_t* off = kv_offsets.get<std::int64_t>() + sz(l, n_real);
      // cuda_l2_prefetch: the output projection's weights, whole, into L2 while RoPE and attention
      // leave HBM idle (asked for by the first kernel after the QKV projection).
      const cuda::L2Prefetch wo_whole = cuda_l2_prefetch ? cuda::L2Prefetch{L.wo.get(), L.wo.bytes()} : cuda::L2Prefetch{};
      if (fused_qkv) {
        // One launch: the QKV GEMV with RoPE, the K/V store and the 16-bit query as its epilogue.
        gemv_qkv_rope(x.get<float>(), L.rms_att, s.norm_eps, L.wqkv, L.bqkv.get<float>(), positions.get<int>(), k_pool.get(),
                      v_pool.get(), off, q16.get(), l2_ahead(L.wo), qkv_rope_version);
      } else {
        matmul_normed(q, x.get<float>(), L.rms_att, s.norm_eps, L.wqkv, T, dim, qkv_dim, xb.get<float>(), l2_ahead(L.wo));
      }
      // The Q/K/V biases (Qwen2), RoPE on the query heads and the key heads that follow them in each
      // row, K and V into the cache; flash (16-bit) also takes the queries in 16 bits: one launch
      // for all of it.
      if (flash && !fused_qkv) {
        cuda::rope_store_qkv(q, T, n_real, s.n_heads, s.n_kv_heads, hd, positions.get<int>(), rope(), k_pool.get(),
                             v_pool.get(), off, q16.get(), half_type, stream, wo_whole, L.bqkv.get<float>(), kv_type);
      } else if (!flash) {
        if (L.bqkv.get()) cuda::add_bias_rows(q, L.bqkv.get<float>(), T, qkv_dim, stream);
        cuda::rope(q, T, qkv_dim, s.n_heads + s.n_kv_heads, hd, positions.get<int>(), rope(), stream);
        cuda::kv_write(k_pool.get(), off, q + dim, qkv_dim, n_real, kv_dim, kv_elem(), stream);
        cuda::kv_write(v_pool.get(), off, q + dim + kv_dim, qkv_dim, n_real, kv_dim, kv_elem(), stream);
      }
      {
        NVTX_RANGE("attention");
        if (flash) {
          if (!prefill_chunks.empty()) {
            std::vector<AttentionProblem> prefill;
            for (int ci : prefill_chunks) prefill.push_back(problem_of(ci, l));
            std::size_t at = 0;  // widen_kv: each chunk's K/V into the 16-bit copies, one page each
            for (AttentionProblem& p : prefill) {
              if (!widen_kv) break;
              const int n = p.kv_len();
              auto* wk = widened_k.get<std::uint16_t>() + at;
              auto* wv = widened_v.get<std::uint16_t>() + at;
              cuda::kv_gather_16(wk, half_type, p.kv.k_pool, p.kv.indices, p.kv.page_size, n, kv_dim, kv_type, stream);
              cuda::kv_gather_16(wv, half_type, p.kv.v_pool, p.kv.indices, p.kv.page_size, n, kv_dim, kv_type, stream);
              p.kv.k_pool = reinterpret_cast<const float*>(wk);
              p.kv.v_pool = reinterpret_cast<const float*>(wv);
              p.kv.indices = zero_page.get<std::int32_t>();
              p.kv.num_pages = 1;
              p.kv.page_size = p.kv.length = n;
              at += sz(n, kv_dim);
            }
            cuda::attention_flash(prefill, half_type, stream);
          }
          if (!decode_chunks.empty())
            cuda::attention_decode_planned(plan, plan_buffer.get(), split_bound, split, layer_delta[static_cast<std::size_t>(l)],
                                           split_workspace.get<float>(), stream, decode_version,
                                           fused_qkv ? wo_whole : cuda::L2Prefetch{});
          // A fused row's output projection reads the 16-bit attention output itself (no cast).
          if (!fused_row) cuda::cast_to_float(att.get<float>(), att16.get(), sz(n_real, dim), half_type, stream);
        } else {
          for (int ci = 0; ci < n_chunks; ++ci) {
            // Gather this sequence's K and V (any layout, any KV dtype) into contiguous fp32.
            const ForwardChunk& c = batch.chunks[static_cast<std::size_t>(ci)];
            const int r = chunk_row[static_cast<std::size_t>(ci)];
            AttentionProblem p = problem_of(ci, l);
            const std::int32_t* dev_pages = pages.get<std::int32_t>() + page_start[static_cast<std::size_t>(ci)];
            const auto* kbase = k_pool.get<const char>() + kv.view_offset(l, c.seq) * elem;
            const auto* vbase = v_pool.get<const char>() + kv.view_offset(l, c.seq) * elem;
            cuda::kv_gather_f32(gathered_k.get<float>(), kbase, dev_pages, p.kv.page_size, p.kv.length, kv_dim, kv_elem(), stream);
            cuda::kv_gather_f32(gathered_v.get<float>(), vbase, dev_pages, p.kv.page_size, p.kv.length, kv_dim, kv_elem(), stream);
            p.q = q + sz(r, qkv_dim);
            p.out = att.get<float>() + sz(r, dim);
            p.kv.k_pool = gathered_k.get<float>();
            p.kv.v_pool = gathered_v.get<float>();
            p.kv.indices = nullptr;  // one page: not read
            p.kv.num_pages = 1;
            p.kv.page_size = p.kv.length;
            cuda::attention_naive(p, scores.get<float>(), cublas, stream);  // stream order protects the gathers
          }
        }
      }
      // cuda_l2_prefetch: each GEMV's blocks, as they finish, have L2 fetch the start of the next
      // weights (l2_ahead), so that HBM streams on through the kernel boundary.
      const bool last = l + 1 == s.n_layers;
      if (flash && fused_row) gemv_x16_add(x.get<float>(), att16.get(), L.wo, dim, dim, l2_ahead(L.w13));
      else matmul_add(x.get<float>(), att.get<float>(), L.wo, T, dim, dim, xb.get<float>(), l2_ahead(L.w13));
      if (fused_row) {
        gemv_swiglu(h.get<float>(), x.get<float>(), L.rms_ffn, s.norm_eps, L.w13, dim, hidden, l2_ahead(L.w2),
                    swiglu_version);
      } else {
        matmul_normed(h13.get<float>(), x.get<float>(), L.rms_ffn, s.norm_eps, L.w13, T, dim, 2 * hidden,
                      xb.get<float>());  // row: [w1 xn | w3 xn]
        cuda::swiglu_rows(h.get<float>(), h13.get<float>(), T, hidden, stream);
      }
      matmul_add(x.get<float>(), h.get<float>(), L.w2, T, hidden, dim, xb.get<float>(),
                 l2_ahead(last ? lm_head : layers[static_cast<std::size_t>(l) + 1].wqkv));
    }
    // Final norm and LM head for the wanted rows only, gathered with the embedding kernel unless
    // every row is wanted (out_rows rises, so n_out == T means all of them, in order: a decode step).
    const float* final_rows = x.get<float>();
    if (n_out != T) {
      cuda::embed(xb.get<float>(), x.get<float>(), out_rows.get<int>(), n_out, dim, stream);
      final_rows = xb.get<float>();
    }
    matmul_normed(logits.get<float>(), final_rows, rms_final, s.norm_eps, lm_head, n_out, dim, s.vocab_size,
                  xb.get<float>(), l2_ahead(layers.front().wqkv));  // the next step's first matrix
  };

  // Programmatic dependent launch for this step's kernels (this thread, while they are enqueued).
  cuda::set_programmatic_launch(cuda_pdl);
  struct PdlOff {
    ~PdlOff() { cuda::set_programmatic_launch(false); }
  } pdl_off;
  ++steps;
  if (cuda_graphs && half && flash && prefill_chunks.empty()) {
    std::string key = fmt::format("{}|{}|{}|v{}|{}|{}|{}|{}|{}|", attention, cuda_pdl ? "pdl" : "",
                                  cuda_l2_prefetch ? "l2" : "", decode_version, T, n_real, n_out, split_bound,
                                  plan.shapes.size());
    for (const cuda::DecodeGroupShape& g : plan.shapes) key += fmt::format("{},{},{};", g.rows, g.heads, g.head_dim);
    key += fmt::format("|{}", fmt::join(layer_delta, ","));
    replay(key, enqueue);
  } else {
    enqueue();
  }
  host_workspace = workspace;
  if (want) {  // n_out ids back instead of n_out x vocab logits
    if (sample) {  // drawn with the engine's uniforms, as the host Sampler would
      check(cudaMemcpyAsync(uniforms.get(), want->uniforms.data(), want->uniforms.size() * sizeof(double),
                            cudaMemcpyHostToDevice, stream),
            "uniforms");
      cuda::sample_rows(logits.get<float>(), n_out, s.vocab_size, want->temperature, want->top_p,
                        uniforms.get<double>(), ids.get<int>(), sample_workspace.get(), sample_workspace.bytes(), stream);
    } else {  // greedy: the argmax
      cuda::argmax_rows(logits.get<float>(), n_out, s.vocab_size, ids.get<int>(), stream);
    }
    host_ids.resize(static_cast<std::size_t>(n_out));
    check(cudaMemcpyAsync(host_ids.data(), ids.get(), host_ids.size() * sizeof(int), cudaMemcpyDeviceToHost, stream),
          "ids");
  } else {
    host_logits.resize(sz(n_out, s.vocab_size));
    check(cudaMemcpyAsync(host_logits.data(), logits.get(), host_logits.size() * f, cudaMemcpyDeviceToHost, stream),
          "logits");
  }
  check(cudaEventRecord(forward_end, stream), "cudaEventRecord");
  check(cudaStreamSynchronize(stream), "forward");
  float device_ms = 0.0f;
  check(cudaEventElapsedTime(&device_ms, forward_begin, forward_end), "cudaEventElapsedTime");
  last_device_s = device_ms / 1e3;
  note_memory();
}

}  // namespace ablate

#endif
