#include "engine/profiler.hpp"

#if defined(ABLATE_HAVE_CUDA)
#include <cuda_profiler_api.h>
#endif

namespace ablate {

void ProfileWindow::start() {
  if (active_) return;
#if defined(ABLATE_HAVE_CUDA)
  cudaProfilerStart();  // without a profiler attached: a no-op
#endif
  active_ = true;
}

void ProfileWindow::stop() {
  if (!active_) return;
#if defined(ABLATE_HAVE_CUDA)
  cudaProfilerStop();
#endif
  active_ = false;
}

}  // namespace ablate
