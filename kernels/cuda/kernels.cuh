#pragma once
// CUDA kernels of the forward pass: host-callable launchers taking device pointers and a stream.
// Plain C++ (no CUDA-only syntax), so .cpp files compiled by g++ may include it; the CUDA
// runtime and cuBLAS headers come with the ablate_kernels_cuda target. Each launcher mirrors
// the CPU kernel of the same name (cpu/kernels.hpp) and throws std::runtime_error on a CUDA
// or cuBLAS error.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>
#include <string>

#include "common/attention_problem.hpp"

namespace ablate::cuda {

// True when a CUDA device can be used; otherwise *why (if given) says why not.
bool cuda_device_available(std::string* why);

// y[rows][out] = x[rows][in] * w[out][in]^T (cuBLAS SGEMM, fp32). Sets `handle`'s stream.
void matmul(float* y, const float* x, const float* w, int rows, int in, int out, cublasHandle_t handle,
            cudaStream_t stream);

// Programmatic dependent launch for the decode step's kernels (embed, rmsnorm, the GEMVs,
// rope_store_qkv, the planned decode attention and its reduction, cast_to_float, swiglu_rows,
// argmax_rows) launched from this host thread from now on: each may start while the kernel ahead
// of it finishes, and waits for it on the device (griddepcontrol) before touching its data.
// Needs compute capability 9.0 (programmatic_launch_supported); off by default.
void set_programmatic_launch(bool on);
bool programmatic_launch_supported();

// A range of device memory for a kernel to prefetch into L2 (rope_store_qkv, the planned decode
// attention, the GEMVs of bf16.cuh); bytes 0: none.
// Needs compute capability 9.0 (l2_prefetch_supported); base 16-byte aligned.
struct L2Prefetch {
  const void* base = nullptr;
  std::size_t bytes = 0;
};
bool l2_prefetch_supported();
// A launch that only prefetches `range` into L2 (the benchmarks' way to time a GEMV whose weights
// are already there: the bound on what cuda_l2_prefetch can gain).
void l2_prefetch(L2Prefetch range, cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * weight, row by row; out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps, cudaStream_t stream);

// RoPE's frequencies: pair i of a head turns by position * freq_i, where freq_i = 1 / theta^(2i /
// head_dim) computed on the device (llama2.c's float expression), or table[i] when a table is given:
// a device array of head_dim / 2 floats (ModelShape::rope_frequencies: scaled RoPE, Llama 3.x).
// A bare theta converts to the first.
struct RopeFreq {
  float theta = 10000.0f;
  const float* table = nullptr;
  RopeFreq(float theta_) : theta(theta_) {}  // implicit: the launchers' plain-RoPE callers pass theta
  RopeFreq(float theta_, const float* table_) : theta(theta_), table(table_) {}
};

// In place, llama2.c convention (adjacent pairs); `positions` is a device array of `rows` ints.
void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, RopeFreq freq,
          cudaStream_t stream);

// Row-wise numerically stable softmax in place, x is [rows][n].
void softmax(float* x, int rows, int n, cudaStream_t stream);
// cpu::argmax_rows on the device: out[r] (device) = the lowest index of row r's largest value.
void argmax_rows(const float* x, int rows, int n, int* out, cudaStream_t stream);

// Temperature / top-p sampling of logit rows [rows][vocab] on the device, the host Sampler's
// draw (Sampler::sample_uniform) with uniforms[r] for row r: probabilities exp((l - max) / T)
// normalised (fp32 values, double sum); with top_p < 1 the smallest set of most likely tokens
// (ties: the lower id first) whose mass reaches top_p, renormalised; then the first token whose
// running mass (index order, double) exceeds u * total. The sums run in parallel, so a uniform
// within about 1e-12 of a boundary between two tokens' cumulative masses may land on the other
// one (tested against the host Sampler). temperature > 0, 0 < top_p <= 1; logits, uniforms
// (doubles in [0, 1)) and out are device arrays; the workspace is sample_rows_workspace_bytes.
std::size_t sample_rows_workspace_bytes(int rows, int vocab, double top_p);
void sample_rows(const float* logits, int rows, int vocab, double temperature, double top_p, const double* uniforms,
                 int* out, void* workspace, std::size_t workspace_bytes, cudaStream_t stream);

// gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, std::size_t n, cudaStream_t stream);
// cpu::swiglu_rows: fused [gate | up] rows in, [rows][hidden] out (out may be gate_up at rows 1).
void swiglu_rows(float* out, const float* gate_up, int rows, int hidden, cudaStream_t stream);

// x[i] += y[i].
void add(float* x, const float* y, std::size_t n, cudaStream_t stream);
// x[r][j] += bias[j] for rows r < rows of n floats (the Q/K/V biases after the QKV projection, as
// the CPU backend's cpu::add per row).
void add_bias_rows(float* x, const float* bias, int rows, int n, cudaStream_t stream);

// Naive attention: scores S[n_heads][n_q][kv_len] = scale * Q K^T by cuBLAS strided-batched
// GEMMs (one call per query head within a GQA group, batched over KV heads), a causal masked
// softmax kernel, then O = P V the same way. fp32 throughout (cuBLAS default math, no TF32).
// The KV view must be contiguous: num_pages == 1 and indices == {0}, i.e. kv.k_pool/v_pool
// point at the sequence's reservation (token t at k_pool + t * token_stride); indices are not
// read, since they may live on the device. All pointers are device pointers.
std::size_t attention_naive_workspace_bytes(const AttentionProblem& p);  // the score matrix
void attention_naive(const AttentionProblem& p, float* workspace, cublasHandle_t handle, cudaStream_t stream);
// Decode attention, fp32, one query (n_q == 1) over a contiguous KV view (as attention_naive):
// one block per query head, scores in shared memory (contexts up to 12288 tokens), one launch.
// A simple reference version: slower than attention_naive at long contexts (see the .cu file).
void attention_decode_f32(const AttentionProblem& p, cudaStream_t stream);

// Problems one after another, sharing a workspace of at least the largest problem's bytes.
void attention_naive(std::span<const AttentionProblem> problems, float* workspace, std::size_t workspace_bytes,
                     cublasHandle_t handle, cudaStream_t stream);

// ---- flash attention (fp16 / bf16, fp32 accumulate) -------------------------------------------
// Element type of q, out, k_pool and v_pool for the flash kernels. Those AttentionProblem pointers
// then hold device pointers to dtype elements (reinterpret_cast to float* for transport) and
// q_stride, out_stride and kv.token_stride count dtype elements. kv.indices is a DEVICE array of
// kv.num_pages page numbers (the block table; a contiguous reservation is one page, indices {0}).
// Requirements (else std::invalid_argument naming the kernel): head_dim 64 or 128; n_heads a
// multiple of n_kv_heads; q_stride and token_stride multiples of 8; q, k_pool, v_pool 16-byte
// aligned. Scores, softmax and accumulation are fp32; outputs are rounded to dtype.
enum class DType { f16, bf16 };
const char* dtype_name(DType t);
std::size_t dtype_bytes(DType t);

// Element type of the KV pools (kv.dtype; fp8_e4m3: round to nearest even, saturating at +-448,
// cpu::to_fp8_e4m3's bytes). The decode kernels (attention_flash_decode, attention_flash_split,
// the planned decode) read K/V of dtype, of the other 16-bit type or of fp8_e4m3, widened to fp32
// as loaded (kv; default dtype's own); the prefill kernel (attention_flash) reads K/V of dtype only
// (kv_gather_16 widens another type into a copy first).
enum class KvElem { f32, f16, bf16, fp8_e4m3 };
const char* kv_elem_name(KvElem e);
std::size_t kv_elem_bytes(KvElem e);
KvElem kv_elem_of(DType t);  // the 16-bit type's own KvElem

// dst (dtype) = src (fp32) and back, n elements, device pointers.
void cast_from_float(void* dst, const float* src, std::size_t n, DType dtype, cudaStream_t stream);
void cast_to_float(float* dst, const void* src, std::size_t n, DType dtype, cudaStream_t stream);

// Flash prefill (any n_q; causal; GQA; paged or contiguous): one block per (query tile, query
// head), K/V tiles of 64 keys in shared memory read through the block table, Q K^T and P V on
// tensor cores, online softmax in fp32. One launch per problem. Versions, each kept beside the
// last and tested against the CPU reference:
//   1: WMMA 16x16x16, scores, probabilities and the output accumulator in shared memory;
//   2: mma.sync m16n8k16 with all three in registers, synchronous tile loads;
//   3: version 2 with K/V tiles double-buffered by cp.async;
//   4: version 3 in FlashAttention-2's MMA issue order (independent accumulators back to back),
//      masks only on diagonal tiles; 64 query rows a block;
//   5 (default): version 4 with 128 query rows (8 warps) a block: half the K/V traffic per query.
// On an H100, 16k tokens of llama2-7b heads: v2 39.3 ms, v3 16.0, v4 15.3, v5 12.0 (SDPA 6.44).
void attention_flash(std::span<const AttentionProblem> problems, DType dtype, cudaStream_t stream, int version = 5);

// Paged decode attention (n_q = 1 .. k+1 per problem; any n_q works): one block per (query head,
// query) walking the block table, 16-byte K/V loads, several keys in flight. No workspace.
// version 2 (default): the whole batch in one launch (32 problems a launch), 4 keys' K/V loaded
// per thread before use. version 1: one launch per problem, one key per thread in flight.
// version 3: version 2 with the page-table entries staged in shared memory and 8 keys per
// thread, so that a step of the key loop waits for one load, not two. version 4: version 3 in
// 512-thread blocks, 4x the keys a step, for few short sequences (the batch-1 step).
inline constexpr int kDecodeVersions = 4;
// The version the CUDA backend's decode step runs for `rows` query rows of `heads` heads: 2, and
// kDecodeVersionFewBlocks when the grid has fewer blocks than the GPU has SMs (the batch-1 step:
// 32 blocks on 132). Version 4 there: one llama2-7b sequence of 384 tokens, bf16, paged, on an
// H100 (bench_attention_cuda, medians of 3): v2 19.3 us, v3 17.9, v4 13.5 (10.7 us at 128
// tokens); the batch-1 decode step's TPOT 5.94 ms with v2, 5.67 with v3, 5.42 with v4
// (configs/gpu/decode_kernels.yaml). Versions 3 and 4 were not timed against 2 on full grids.
inline constexpr int kDecodeVersionFewBlocks = 4;
int attention_decode_version(int rows, int heads);
void attention_flash_decode(std::span<const AttentionProblem> problems, DType dtype, cudaStream_t stream,
                            int version = 2, std::optional<KvElem> kv = std::nullopt);

// Split-KV decode (flash-decoding): the decode kernel over `splits` key chunks per (head, query),
// each writing a normalised partial output and its log-sum-exp to `workspace`, then a reduction
// kernel merges them. splits = 0 chooses per problem: enough chunks that the batch has about
// kSplitBlocksPerSm blocks per SM, each chunk at least kSplitMinKeys keys (1 = plain decode).
inline constexpr int kSplitBlocksPerSm = 8;
inline constexpr int kSplitMinKeys = 256;
int attention_flash_split_count(std::span<const AttentionProblem> problems, std::size_t i);
std::size_t attention_flash_split_workspace_bytes(std::span<const AttentionProblem> problems, int splits = 0);
// version as attention_flash_decode's.
void attention_flash_split(std::span<const AttentionProblem> problems, DType dtype, float* workspace,
                           std::size_t workspace_bytes, cudaStream_t stream, int splits = 0, int version = 2,
                           std::optional<KvElem> kv = std::nullopt);

// Decode plans: version 2 in a form a CUDA graph can replay. The problems' descriptors (pointers,
// lengths, page tables, split counts) are packed into bytes for device memory; launching from the
// device copy fixes only the grid (per group: heads, rows; and max_splits), so a captured graph
// stays valid while lengths, page tables and split counts change from step to step, as long as
// the rows per group and the buffers stay. At launch k_pool / v_pool are offset by layer_delta
// elements, so one plan (made for layer 0) serves every layer. splits[k]: problem k's split count
// (1 = unsplit, as attention_flash_decode; else as attention_flash_split's); a split plan needs
// reduce = true and the workspace attention_flash_split_workspace_bytes gives for those counts.
struct DecodeGroupShape {
  int rows, heads, head_dim, max_splits;
  bool split;
};
struct DecodePlan {
  DType dtype = DType::bf16;
  KvElem kv = KvElem::bf16;  // the pools' element type (kv: make_decode_plan's, default dtype's own)
  std::size_t group_bytes = 0;
  std::vector<DecodeGroupShape> shapes;  // one per group (launch)
  std::vector<unsigned char> bytes;      // shapes.size() * group_bytes, for the device
};
DecodePlan make_decode_plan(std::span<const AttentionProblem> problems, std::span<const int> splits, DType dtype,
                            std::optional<KvElem> kv = std::nullopt);
// max_splits: the grid's split dimension, at least every problem's split count (blocks past a
// problem's count return at once), e.g. attention_flash_split_bound(rows, heads). version: the
// decode kernel's, 2 to kDecodeVersions (the plan is the same for all). prefetch: once the kernels ahead have
// finished (pdl), the (first) decode kernel's threads also ask L2 to fetch that range
// (cuda_l2_prefetch: the output projection's weights, read next).
void attention_decode_planned(const DecodePlan& plan, const void* device_plan, int max_splits, bool reduce,
                              long long layer_delta, float* workspace, cudaStream_t stream, int version = 2,
                              L2Prefetch prefetch = {});
// The largest split count attention_flash_split_count gives any problem of a batch of `rows`
// query rows of `heads` heads, whatever their lengths.
int attention_flash_split_bound(int rows, int heads);

// ---- data movement of the CUDA backend (backend_ops.cu) -----------------------------------------

// x[r][:] = table[tokens[r]][:], fp32; tokens is a device array of `rows` ids.
void embed(float* x, const float* table, const int* tokens, int rows, int dim, cudaStream_t stream);

// K or V of `rows` tokens into a pool: pool[offsets[r] .. + n) = src[r * src_stride .. + n),
// converted to `elem`; offsets (device, int64) in elements, as KvCache::slot_offset gives them.
void kv_write(void* pool, const std::int64_t* offsets, const float* src, int src_stride, int rows, int n, KvElem elem,
              cudaStream_t stream);

// The flash path's step between the QKV projection and attention, in one launch: for rows of
// qkv ([rows][(n_heads + 2 n_kv_heads) head_dim] fp32: queries, keys, values), the biases added
// when `bias` is given (device, one row's (n_heads + 2 n_kv_heads) head_dim floats: Qwen2's Q/K/V
// biases; all of the row in place, as add_bias_rows), RoPE on the query
// and key heads in place, then for rows < store_rows the keys and values into the pools at
// offsets[r] (as kv_write) and the rotated queries into q16 (same row stride), in dtype (bf16 or
// fp16; the pools' type is kv, default dtype's own). The same results, bit for bit, as
// (add_bias_rows(),) rope(), two kv_write()s and cast_from_float() (four launches; tested against
// them). prefetch: once the kernel ahead of it
// has finished (pdl), its threads also ask L2 to fetch that range (cuda_l2_prefetch: the output
// projection's weights, read after the attention that follows; HBM is otherwise idle meanwhile).
void rope_store_qkv(float* qkv, int rows, int store_rows, int n_heads, int n_kv_heads, int head_dim,
                    const int* positions, RopeFreq freq, void* k_pool, void* v_pool, const std::int64_t* offsets,
                    void* q16, DType dtype, cudaStream_t stream, L2Prefetch prefetch = {}, const float* bias = nullptr,
                    std::optional<KvElem> kv = std::nullopt);

// dst[t][token_stride] (fp32, contiguous) = token t < length of a page list (KvSeqView layout):
// pool points at the view's k_pool or v_pool, indices is a device array of its pages.
void kv_gather_f32(float* dst, const void* pool, const std::int32_t* indices, int page_size, int length,
                   int token_stride, KvElem elem, cudaStream_t stream);
// The same into dtype (16-bit) elements: the flash prefill's K/V when the pools hold another type
// (exact from fp8_e4m3 or the same type; fp32 and the other 16-bit type round to nearest even).
void kv_gather_16(void* dst, DType dtype, const void* pool, const std::int32_t* indices, int page_size, int length,
                  int token_stride, KvElem elem, cudaStream_t stream);

}  // namespace ablate::cuda
