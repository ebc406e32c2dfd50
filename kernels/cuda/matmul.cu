// cuBLAS matmul and the device probe.
#include <string>
#include "cuda/check.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {

bool cuda_device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // Without a driver the runtime says "CUDA driver version is insufficient for CUDA runtime
    // version", which misleads on a machine that simply has no GPU.
    if (why)
      *why = e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice
                 ? std::string("no NVIDIA driver/GPU found (") + cudaGetErrorString(e) + ")"
                 : std::string(cudaGetErrorString(e));
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA devices";
    return false;
  }
  return true;
}

void matmul(float* y, const float* x, const float* w, int rows, int in, int out, cublasHandle_t handle,
            cudaStream_t stream) {
  detail::check(cublasSetStream(handle, stream), "cublasSetStream");
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: Y^T [out x rows] = W [in x out]^T * X^T [in x rows].
  detail::check(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &one, w, in, x, in, &zero, y, out),
                "matmul");
}

}  // namespace ablate::cuda
