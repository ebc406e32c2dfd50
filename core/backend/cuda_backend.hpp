#pragma once
// The CUDA backend: CpuBackend::forward (cpu_backend.cpp) step for step on one GPU, with the
// weights and the KV pools resident in device memory. The engine, schedulers, KV caches
// (placement and accounting) and drafters are the CPU's, unchanged: the caches decide where each
// token lives (KvCache::slot_offset, view_offset, block tables) and this backend keeps the bytes,
// the prefix cache's copy-on-write included (KvCache::take_pending_copies, applied at the start of
// each forward pass, before it writes K/V).
//   dtype fp32: SGEMM.  dtype bf16 / fp16: 16-bit weights (GEMV at one row, cublasGemmEx above);
//   fp32 activations and accumulation. KV pools of kv_dtype, independent of dtype (auto: the
//   weights' type): fp32, bf16, fp16 or fp8_e4m3, rounded as the CPU's kv_encode rounds.
//   attention naive: each sequence's K/V gathered to fp32, cuBLAS score GEMMs + softmax kernel;
//   flash: tensor-core prefill, paged decode; flash_split: split-KV decode + LSE reduction. The
//   decode kernels read any 16-bit or fp8 KV, widened as loaded; the prefill kernel reads K/V of
//   the weights' 16-bit type, so another KV type is first widened into a copy (per layer, the
//   prefill chunks' tokens: linear in the keys, beside the quadratic tile work). flash with fp32
//   KV is refused: the 16-bit kernels cannot read it without rounding it to kv.dtype bf16/fp16.
// Q/K/V biases (Qwen2) and scaled RoPE (Llama 3.x: the CPU's per-pair frequency table, uploaded)
// as on the CPU.
// The attention kernel follows the run's Attention (its name), so one loaded model serves a sweep
// over attention. With cuda_graphs, decode steps replay as captured CUDA graphs. Logits come back to
// the host (one row per sequence, vocab floats), where the engine samples, except in greedy
// decoding without a draft, where only each row's argmax (taken on the device) comes back.
// Built whenever nvcc is present; without a CUDA build the constructor throws.
#include <memory>
#include <string>

#include "backend/backend.hpp"
#include "model/weights.hpp"

namespace ablate {

struct CudaBackendOptions {
  std::string dtype = "bf16";      // fp32 | bf16 | fp16 (flash and flash_split need bf16 or fp16)
  bool cuda_graphs = false;        // replay decode steps as CUDA graphs (see set_cuda_graphs)
  bool cuda_pdl = false;           // programmatic dependent launch in the decode step (see set_cuda_pdl)
  bool cuda_l2_prefetch = false;   // the output projection's weights into L2 during attention (see set_cuda_l2_prefetch)
  std::string kv_dtype = "auto";   // auto (dtype's) | fp32 | bf16 | fp16 | fp8_e4m3 (flash: not fp32)
};

struct CudaGraphStats {
  long long steps = 0;     // forward passes
  long long replays = 0;   // of them, launched as one captured graph
  long long captures = 0;  // graphs captured
};

// Throws std::runtime_error("no CUDA device: <why>") when no device can be used (or the build
// has no CUDA).
void cuda_backend_check_device();

class CudaBackend final : public Backend {
 public:
  CudaBackend(const Weights& weights, CudaBackendOptions options);
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  std::string device_name() const override;
  const ModelShape& shape() const override;
  std::size_t weights_bytes() const override;
  double bits_per_weight() const override;
  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  // Greedy decoding: the argmax of each logit row on the device (cuda::argmax_rows); only the ids
  // come back.
  const std::vector<int>& forward_argmax(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  // Sampling: the token of each logit row drawn on the device (cuda::sample_rows) with the
  // engine's uniforms; only the ids come back.
  const std::vector<int>& forward_sample(const ForwardBatch& batch, KvCache& kv, Attention& attention,
                                         const Sampler& sampler, std::span<const double> uniforms) override;
  KvStorage kv_storage() const override;
  std::size_t peak_device_bytes() const override;
  std::optional<double> last_forward_device_s() const override;
  // cuda_graphs: a step whose kernels do not depend on its lengths (bf16, flash or flash_split,
  // every chunk a decode chunk of <= 16 tokens) is captured as a graph the second time its shape
  // (batch rows, logit rows, split bound, layer strides) occurs and replayed after that; lengths,
  // block tables and split counts travel in device memory (cuda::DecodePlan). Other steps run
  // kernel by kernel.
  void set_cuda_graphs(bool on);
  // cuda_pdl: the decode step's kernels are launched with programmatic dependent launch, so each
  // may start (a GEMV: load its first weights) while the one before it finishes; with graphs,
  // the captured graphs carry the programmatic edges. Needs compute capability 9.0 (throws
  // std::invalid_argument otherwise).
  void set_cuda_pdl(bool on);
  // cuda_l2_prefetch: HBM kept streaming across the decode step's kernel boundaries by bulk L2
  // prefetches. With flash attention the kernel after each layer's QKV projection
  // (rope_store_qkv, or at batch 1 the decode attention) asks L2 for that layer's
  // output-projection weights, which then stream during
  // RoPE and attention (which leave HBM idle) instead of after them; and at batch 1 each GEMV's
  // blocks, as they finish, ask for the first 8 MB of the next matrix (through the kernel's
  // tail and the next one's ramp). A hint: the same results. Needs compute capability 9.0
  // (throws std::invalid_argument otherwise).
  void set_cuda_l2_prefetch(bool on);
  // cuda_flash_decode_version: the flash decode attention kernel's version (2 to
  // cuda::kDecodeVersions); 0 = the backend's choice (cuda::attention_decode_version). Throws
  // std::invalid_argument for any other value.
  void set_flash_decode_version(int version);
  // kv.dtype: the KV pools' element type from the next forward pass on (auto: the weights' type),
  // so that the points of a kv.dtype sweep share one loaded model. kv_storage() follows it; a
  // cache made before the change must not be used after it. Throws std::invalid_argument naming
  // the allowed values (auto, fp32, bf16, fp16, fp8_e4m3).
  void set_kv_dtype(const std::string& kv_dtype);
  CudaGraphStats graph_stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ablate
