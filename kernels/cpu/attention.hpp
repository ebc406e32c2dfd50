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

}  // namespace ablate::cpu
