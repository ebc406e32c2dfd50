# Every third-party library comes from Debian packages installed by .ci/setup.
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(yaml-cpp REQUIRED)
find_package(CLI11 REQUIRED)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3 REQUIRED)  # safetensors headers, Hugging Face config.json and tokenizer.json
# utf8proc: Unicode NFC, the normalizer of Qwen2's tokenizer.json (Debian libutf8proc-dev)
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY utf8proc REQUIRED)
find_package(Catch2 2 REQUIRED)
if(ABLATE_BENCHMARKS)
  find_package(benchmark REQUIRED)
endif()

# NVTX3 is header-only and ships with the CUDA toolkit; without a toolkit the
# ranges compile away (see core/engine/nvtx.hpp).
find_path(NVTX3_INCLUDE_DIR nvtx3/nvToolsExt.h PATHS /usr/local/cuda/include ENV CUDA_HOME PATH_SUFFIXES include)

set(ABLATE_HAVE_CUDA OFF)
if(ABLATE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(ABLATE_HAVE_CUDA ON)
  else()
    message(STATUS "ablate: nvcc not found, CUDA kernels are not built")
  endif()
endif()
