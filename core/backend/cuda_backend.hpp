#pragma once
// The CUDA backend: CpuBackend::forward (cpu_backend.cpp) step for step on one GPU, with the
// weights and the KV pools resident in device memory. The engine, schedulers, KV caches
// (placement and accounting) and drafters are the CPU's, unchanged: the caches decide where each
// token lives (KvCache::slot_offset, view_offset, block tables) and this backend keeps the bytes.
//   dtype fp32: SGEMM, fp32 KV.  dtype bf16: bf16 weights (GEMV at one row, cublasGemmEx above),
//   bf16 KV, fp32 activations and accumulation.
//   attention naive: each sequence's K/V gathered to fp32, cuBLAS score GEMMs + softmax kernel;
//   flash: tensor-core prefill, paged decode; flash_split: split-KV decode + LSE reduction.
// The attention kernel follows the run's Attention (its name), so one loaded model serves a sweep
// over attention. Logits come back to the host (one row per sequence, vocab floats), where the engine samples:
// the copy also synchronises, so host step timings are GPU timings.
// Built whenever nvcc is present; without a CUDA build the constructor throws.
#include <memory>
#include <string>

#include "backend/backend.hpp"
#include "model/weights.hpp"

namespace ablate {

struct CudaBackendOptions {
  std::string dtype = "bf16";      // fp32 | bf16 (flash and flash_split need bf16)
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
  const std::vector<float>& forward(const ForwardBatch& batch, KvCache& kv, Attention& attention) override;
  KvStorage kv_storage() const override;
  std::size_t peak_device_bytes() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ablate
