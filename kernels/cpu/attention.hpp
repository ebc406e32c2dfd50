#pragma once
// Naive (eager) attention on the CPU: scores materialised as a full matrix, causal mask, row
// softmax, times V -- what PyTorch eager does, with GEMMs through Eigen.
#include <cstddef>
#include <span>

#include "common/attention_problem.hpp"

namespace ablate::cpu {

// Every problem (one sequence, one layer), causal, GQA. K and V are read page by page through
// the KvSeqView (no gather), so contiguous and paged layouts run the same code. Work is spread
// over (problem, KV head) pairs with an OpenMP dynamic schedule; scratch is a per-thread buffer
// that grows to the largest task seen and is kept for later calls.
void attention_naive(std::span<const AttentionProblem> problems);

// Scratch floats one (problem, KV head) task uses, in bytes: the score matrix
// [G*n_q][kv_len] plus the group's queries and outputs [G*n_q][head_dim] each, G = n_heads/n_kv_heads.
// A thread holds one such buffer at a time, so peak scratch is (threads) x this.
std::size_t attention_naive_workspace_bytes(const AttentionProblem& p);

// ---- flash ---------------------------------------------------------------------------------
// Tile sizes: rows (query x GQA-group head, so one key tile serves the whole group) and keys per
// tile. A tile's Q, scores and output stay in L2 (128 x 256 scores = 128 KiB; 1 MiB L2 per core
// here). 128 x 256 measured fastest of {32, 64, 128} x {128, 256, 512} for a 4096-token prefill.
inline constexpr int kFlashRowBlock = 128;
inline constexpr int kFlashKeyBlock = 256;

// Flash attention: for each block of kFlashRowBlock rows of one KV head, key tiles of
// kFlashKeyBlock with an online softmax (running max / running sum, the output rescaled when the
// max grows), so no score matrix beyond one tile exists. Causal (key tiles past a block's last
// visible key are skipped, the diagonal tile is masked), GQA, any KvSeqView (page runs inside a
// tile are separate GEMMs; no gather). Tiles of at most 8 rows (decode: G x n_q) use one GEMV per
// row instead, since GEMM packing dominates there. Work is spread over (problem, KV head, row
// block) tasks, largest first, with an OpenMP dynamic schedule. Prefill and decode alike.
void attention_flash(std::span<const AttentionProblem> problems);

// Scratch one thread uses for p, in bytes: Q tile, score tile, output accumulator, running max
// and sum -- min(G*n_q, kFlashRowBlock) x (2*head_dim + min(kv_len, kFlashKeyBlock) + 2) floats,
// so it grows with n_q only up to one row block and never with kv_len. Peak = threads x this.
std::size_t attention_flash_workspace_bytes(const AttentionProblem& p);

// ---- flash_split (flash-decoding) -----------------------------------------------------------
// Split decision: the unsplit flash tasks are counted; if there are fewer than
// kFlashSplitTasksPerThread per thread, every problem whose rows fit one row block (decode,
// k+1 verification) has its key range split into up to that many chunks overall (chunks of at
// least kFlashSplitMinKeys keys, multiples of 64), each an independent task producing an
// unnormalised partial output with its running max and sum; the task that finishes a (problem,
// KV head)'s last chunk merges its partials by log-sum-exp (no extra barrier). Otherwise
// (prefill, many sequences, one thread) it is attention_flash.
inline constexpr int kFlashSplitTasksPerThread = 4;
inline constexpr int kFlashSplitMinKeys = 512;

// force_splits > 0 (tests): split every problem that fits one row block into exactly
// ceil(kv_len / ceil(kv_len / force_splits)) chunks, whatever the thread count.
void attention_flash_split(std::span<const AttentionProblem> problems, int force_splits = 0);

// How many key chunks problem i gets when the batch runs with `threads` threads (1 = unsplit).
int attention_flash_split_count(std::span<const AttentionProblem> problems, int threads, std::size_t i);

// Scratch for p run alone with `threads` threads, in bytes: the tiles (threads x
// attention_flash_workspace_bytes) plus, when split, the partials: chunks x n_kv_heads x G*n_q x
// (head_dim + 2) floats -- linear in n_q, independent of kv_len beyond the chunk count.
std::size_t attention_flash_split_workspace_bytes(const AttentionProblem& p, int threads);

}  // namespace ablate::cpu
