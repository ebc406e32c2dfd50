// The page-table window of the CUDA decode attention's version 3, walked on the CPU as the
// kernel walks it: every key's page must be inside the staged entries, and the staged entries
// inside the page table.
#include <catch2/catch.hpp>

#include <vector>

#include "common/page_window.hpp"

using namespace ablate;

namespace {

struct Walk {
  int stages = 0;
  int bad_reads = 0;    // a key whose page is outside the staged entries
  int bad_stages = 0;   // entries staged from outside [0, last page], or none
};

// The kernel's loop over keys [k0, k1), `step` at a time.
Walk walk(int k0, int k1, int step, int page_size, int window) {
  Walk w;
  int first = -window, n = 0;
  const int last_page = (k1 - 1) / page_size;
  for (int tb = k0; tb < k1; tb += step) {
    if (page_window::needs_stage(tb, step, k1, page_size, first, window)) {
      first = tb / page_size;
      n = page_window::stage_count(first, k1, page_size, window);
      ++w.stages;
      if (first < 0 || n < 1 || first + n - 1 > last_page) ++w.bad_stages;
    }
    for (int t = tb; t < k1 && t < tb + step; ++t) {
      const int e = t / page_size - first;
      if (e < 0 || e >= n) ++w.bad_reads;
    }
  }
  return w;
}

}  // namespace

TEST_CASE("page window: every key of every split reads a staged page-table entry", "[attention][page_window]") {
  // Steps of the kernel: 8 keys a thread x 8 or 16 key slots (head_dim 128 or 64; version 4: 32
  // or 64); windows of 512 entries (the kernel's) and of 4 and 9 (to restage often); pages of 1
  // token up to one page for the whole sequence (a contiguous reservation).
  int cases = 0;
  for (int step : {64, 128, 256, 512})
    for (int window : {512, 4, 9})
      for (int page_size : {1, 3, 7, 16, 64, 100000})
        for (int kv_len : {1, 2, 15, 16, 17, 63, 64, 65, 383, 384, 1500, 9000})
          for (int splits : {1, 3, 16}) {
            // Chunks as chunk_for makes them: a multiple of 16 keys.
            const int chunk = ((kv_len + splits - 1) / splits + 15) / 16 * 16;
            if (window * page_size < step) continue;  // the kernel's static_assert rules this out
            for (int k0 = 0; k0 < kv_len; k0 += chunk) {
              const int k1 = k0 + chunk < kv_len ? k0 + chunk : kv_len;
              INFO("step " << step << " window " << window << " page_size " << page_size << " keys [" << k0 << ", "
                           << k1 << ")");
              const Walk w = walk(k0, k1, step, page_size, window);
              CHECK(w.bad_reads == 0);
              CHECK(w.bad_stages == 0);
              CHECK(w.stages >= 1);
              // Restaging only when needed: each window after the first covers at least
              // window - (pages one step spans) new pages.
              const int pages = (k1 - 1) / page_size - k0 / page_size + 1;
              const int span = (step + page_size - 1) / page_size + 1;
              CHECK(w.stages <= 1 + pages / (window - span > 0 ? window - span : 1));
              ++cases;
            }
          }
  CHECK(cases > 1000);
}
