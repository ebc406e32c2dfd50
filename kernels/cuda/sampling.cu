// Temperature / top-p sampling on the device (see kernels.cuh, sample_rows). CPU twin: the host
// Sampler (core/base/sampler.cpp), step for step:
//   1. probabilities: p_i = float(exp((l_i - max) / T)), their sum in double, p_i = float(p_i / sum);
//   2. top-p (top_p < 1): the tokens sorted by probability, descending, ties by lower id (CUB's
//      segmented radix sort, which is stable); keep the first k whose running mass (double)
//      reaches top_p; the kept p_i = float(p_i / mass), the rest 0;
//   3. inverse CDF: the first token whose running mass (index order, double) exceeds u * total.
// One block per row for 1 and 3 and the cut of 2; the sums run as block scans, tile by tile.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/check.cuh"
#include "cuda/kernels.cuh"

namespace ablate::cuda {
namespace {

using namespace detail;

constexpr int kSampleBlock = 1024;
using DoubleReduce = cub::BlockReduce<double, kSampleBlock>;
using DoubleScan = cub::BlockScan<double, kSampleBlock>;
using IntReduce = cub::BlockReduce<int, kSampleBlock>;

struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

// Step 1 for row blockIdx.x; order (when not null) gets 0 .. vocab-1 for the sort.
__global__ void __launch_bounds__(kSampleBlock)
    probabilities_kernel(const float* logits, int vocab, double temperature, float* probs, int* order) {
  __shared__ DoubleReduce::TempStorage tmp;
  const float* l = logits + std::size_t(blockIdx.x) * vocab;
  float* p = probs + std::size_t(blockIdx.x) * vocab;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, l[i]);
  mx = block_max(mx);
  double sum = 0.0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = static_cast<float>(exp(static_cast<double>(l[i] - mx) / temperature));
    p[i] = e;
    sum += e;
  }
  __shared__ double total;
  const double s = DoubleReduce(tmp).Sum(sum);
  if (threadIdx.x == 0) total = s;
  __syncthreads();
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    p[i] = static_cast<float>(p[i] / total);
    if (order) order[std::size_t(blockIdx.x) * vocab + i] = i;
  }
}

// The first index i in [0, n) whose running sum of v (double, in order) satisfies hit(running sum),
// and that sum; {n, total} when none does. The whole block calls it (uniform control flow).
template <class Value, class Hit>
__device__ void first_running_sum(Value value, int n, Hit hit, int& index, double& sum) {
  __shared__ DoubleScan::TempStorage scan_tmp;
  __shared__ IntReduce::TempStorage min_tmp;
  __shared__ double carry_s, found_sum;
  __shared__ int found, tile_first;
  if (threadIdx.x == 0) carry_s = 0.0, found = n;
  __syncthreads();
  for (int base = 0; base < n; base += blockDim.x) {
    const int i = base + threadIdx.x;
    double incl = 0.0;
    DoubleScan(scan_tmp).InclusiveSum(i < n ? static_cast<double>(value(i)) : 0.0, incl);
    incl += carry_s;
    // CUB gives the reduction to thread 0 only: it passes it on through shared memory.
    const int first0 = IntReduce(min_tmp).Reduce(i < n && hit(incl) ? i : INT_MAX, MinOp());
    if (threadIdx.x == 0) tile_first = first0;
    __syncthreads();  // everyone has read carry_s; tile_first is set
    const int first = tile_first;
    if (threadIdx.x == 0 && first != INT_MAX) found = first;
    if (i == first) found_sum = incl;
    if (threadIdx.x == blockDim.x - 1) carry_s = incl;  // the tile's last running sum
    __syncthreads();
    if (found != n) break;
  }
  index = found;
  sum = found != n ? found_sum : carry_s;
  __syncthreads();  // the shared results are read before a next call rewrites them
}

// Step 2's cut for row blockIdx.x: sorted / order are the row's probabilities, descending, and
// their ids; probs is rewritten as the kept, renormalised distribution.
__global__ void __launch_bounds__(kSampleBlock)
    top_p_kernel(const float* sorted, const int* order, int vocab, double top_p, float* probs) {
  const std::size_t row = std::size_t(blockIdx.x) * vocab;
  int first = 0;
  double mass = 0.0;
  first_running_sum([&](int j) { return sorted[row + j]; }, vocab, [&](double s) { return s >= top_p; }, first, mass);
  const int keep = first < vocab ? first + 1 : vocab;  // the host: while (mass < top_p) add the next
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) probs[row + i] = 0.0f;
  __syncthreads();
  for (int j = threadIdx.x; j < keep; j += blockDim.x)
    probs[row + order[row + j]] = static_cast<float>(sorted[row + j] / mass);
}

// Step 3 for row blockIdx.x.
__global__ void __launch_bounds__(kSampleBlock)
    inverse_cdf_kernel(const float* probs, int vocab, const double* uniforms, int* out) {
  __shared__ DoubleReduce::TempStorage sum_tmp;
  __shared__ IntReduce::TempStorage max_tmp;
  __shared__ double total;
  const float* p = probs + std::size_t(blockIdx.x) * vocab;
  double s = 0.0;
  int last = -1;  // the last token with mass: where rounding leaves u * total above the sum
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    s += p[i];
    if (p[i] > 0.0f) last = i;
  }
  const double t = DoubleReduce(sum_tmp).Sum(s);
  const int last_all = IntReduce(max_tmp).Reduce(last, MaxOp());
  if (threadIdx.x == 0) total = t;
  __syncthreads();
  const double target = uniforms[blockIdx.x] * total;
  int index = 0;
  double unused = 0.0;
  first_running_sum([&](int i) { return p[i]; }, vocab, [&](double acc) { return target < acc; }, index, unused);
  if (threadIdx.x == 0) out[blockIdx.x] = index < vocab ? index : (last_all >= 0 ? last_all : 0);
}

__global__ void segment_offsets_kernel(int* offsets, int rows, int vocab) {
  for (int r = threadIdx.x; r <= rows; r += blockDim.x) offsets[r] = r * vocab;
}

// The workspace's parts, 256-byte aligned: probs [rows][vocab]; with top-p also the sorted
// probabilities, the ids in and sorted, the segment offsets and CUB's scratch.
struct SampleSpace {
  std::size_t probs = 0, sorted = 0, ids_in = 0, ids_out = 0, offsets = 0, cub = 0, cub_bytes = 0, total = 0;
  SampleSpace(int rows, int vocab, bool top_p) {
    const auto align = [](std::size_t b) { return (b + 255) / 256 * 256; };
    const std::size_t n = std::size_t(rows) * vocab;
    std::size_t at = 0;
    probs = at, at += align(n * sizeof(float));
    if (top_p) {
      sorted = at, at += align(n * sizeof(float));
      ids_in = at, at += align(n * sizeof(int));
      ids_out = at, at += align(n * sizeof(int));
      offsets = at, at += align((std::size_t(rows) + 1) * sizeof(int));
      check(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, cub_bytes, static_cast<const float*>(nullptr),
                                                                 static_cast<float*>(nullptr), static_cast<const int*>(nullptr),
                                                                 static_cast<int*>(nullptr), int(n), rows,
                                                                 static_cast<const int*>(nullptr),
                                                                 static_cast<const int*>(nullptr)),
            "sample_rows (sort size)");
      cub = at, at += align(cub_bytes);
    }
    total = at;
  }
};

}  // namespace

std::size_t sample_rows_workspace_bytes(int rows, int vocab, double top_p) {
  return rows > 0 && vocab > 0 ? SampleSpace(rows, vocab, top_p < 1.0).total : 0;
}

void sample_rows(const float* logits, int rows, int vocab, double temperature, double top_p, const double* uniforms,
                 int* out, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
  if (rows <= 0) return;
  if (vocab <= 0 || !(temperature > 0.0) || !(top_p > 0.0 && top_p <= 1.0))
    throw std::invalid_argument("cuda::sample_rows: needs vocab > 0, temperature > 0 and 0 < top_p <= 1, got vocab " +
                                std::to_string(vocab) + ", temperature " + std::to_string(temperature) + ", top_p " +
                                std::to_string(top_p));
  if (std::size_t(rows) * vocab > std::size_t(INT_MAX))
    throw std::invalid_argument("cuda::sample_rows: rows x vocab must fit an int (CUB's item count)");
  const bool cut = top_p < 1.0;
  const SampleSpace sp(rows, vocab, cut);
  if (workspace_bytes < sp.total)
    throw std::invalid_argument("cuda::sample_rows: workspace too small (" + std::to_string(workspace_bytes) + " < " +
                                std::to_string(sp.total) + " bytes)");
  char* ws = static_cast<char*>(workspace);
  auto* probs = reinterpret_cast<float*>(ws + sp.probs);
  auto* ids_in = cut ? reinterpret_cast<int*>(ws + sp.ids_in) : nullptr;
  probabilities_kernel<<<rows, kSampleBlock, 0, stream>>>(logits, vocab, temperature, probs, ids_in);
  check_launch("sample_rows (probabilities)");
  if (cut) {
    auto* sorted = reinterpret_cast<float*>(ws + sp.sorted);
    auto* ids_out = reinterpret_cast<int*>(ws + sp.ids_out);
    auto* offsets = reinterpret_cast<int*>(ws + sp.offsets);
    segment_offsets_kernel<<<1, 256, 0, stream>>>(offsets, rows, vocab);
    check_launch("sample_rows (offsets)");
    std::size_t cub_bytes = sp.cub_bytes;
    check(cub::DeviceSegmentedRadixSort::SortPairsDescending(ws + sp.cub, cub_bytes, probs, sorted, ids_in, ids_out,
                                                               rows * vocab, rows, offsets, offsets + 1, 0,
                                                               int(sizeof(float) * 8), stream),
          "sample_rows (sort)");
    top_p_kernel<<<rows, kSampleBlock, 0, stream>>>(sorted, ids_out, vocab, top_p, probs);
    check_launch("sample_rows (top-p)");
  }
  inverse_cdf_kernel<<<rows, kSampleBlock, 0, stream>>>(probs, vocab, uniforms, out);
  check_launch("sample_rows (inverse CDF)");
}

}  // namespace ablate::cuda
