#pragma once
// NVTX3 ranges in the domain "ablate" (step, schedule, forward, attention, sample, ...).
// NVTX3 is header-only and costs a branch when no profiler is attached; without the CUDA
// toolkit's headers the macro compiles to nothing.
#if defined(ABLATE_HAVE_NVTX)
#include <nvtx3/nvtx3.hpp>
namespace ablate {
struct nvtx_domain_ablate {
  static constexpr char const* name{"ablate"};
};
}  // namespace ablate
#define ABLATE_NVTX_CAT2(a, b) a##b
#define ABLATE_NVTX_CAT(a, b) ABLATE_NVTX_CAT2(a, b)
#define NVTX_RANGE(name) \
  ::nvtx3::scoped_range_in<::ablate::nvtx_domain_ablate> ABLATE_NVTX_CAT(nvtx_range_, __LINE__) { name }
#else
#define NVTX_RANGE(name) \
  do {                   \
  } while (0)
#endif
