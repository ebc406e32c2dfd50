#pragma once
// Device buffers for the CUDA tests: a RAII copy of a host vector, read back with host().
#include <catch2/catch.hpp>
#include <cuda_runtime_api.h>

#include <vector>

namespace ablate::test {

inline void ok(cudaError_t e) {
  if (e != cudaSuccess) FAIL(cudaGetErrorString(e));
}

template <class T>
struct Dev {
  T* ptr = nullptr;
  std::size_t n = 0;
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    ok(cudaMalloc(reinterpret_cast<void**>(&ptr), (n ? n : 1) * sizeof(T)));
    ok(cudaMemcpy(ptr, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit Dev(std::size_t n_) : Dev(std::vector<T>(n_)) {}
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

}  // namespace ablate::test
