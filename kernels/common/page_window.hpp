#pragma once
// The page-table window of the CUDA decode attention's version 3 (kernels/cuda/attention_flash.cu):
// a block walks its keys [k0, k1) `step` keys at a time and reads each key's page from a copy of
// up to `window` page-table entries in shared memory, entries first .. first + n - 1. Host and
// device code, so that a CPU test (tests/test_page_window.cpp) can walk every case the kernel
// can meet.
#if defined(__CUDACC__)
#define ABLATE_HOST_DEVICE __host__ __device__
#else
#define ABLATE_HOST_DEVICE
#endif

namespace ablate::page_window {

// Whether the keys of the step starting at tb reach past the staged window (first = -window
// before anything is staged): then the window is restaged from page tb / page_size.
ABLATE_HOST_DEVICE inline bool needs_stage(int tb, int step, int k1, int page_size, int first, int window) {
  const int last_key = (k1 < tb + step ? k1 : tb + step) - 1;
  return last_key / page_size >= first + window;
}

// How many entries a window starting at page `first` holds: up to the page of key k1 - 1.
ABLATE_HOST_DEVICE inline int stage_count(int first, int k1, int page_size, int window) {
  const int n = (k1 - 1) / page_size + 1 - first;
  return n < window ? n : window;
}

}  // namespace ablate::page_window
