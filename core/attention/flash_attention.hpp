#pragma once
// attention: flash and flash_split. Tiled attention with an online softmax (no score matrix), and
// flash-decoding: a decode batch too small to fill the threads has each sequence's key range split
// over threads, partials merged by log-sum-exp (otherwise it runs as flash).
#include <omp.h>

#include "attention/attention.hpp"
#include "cpu/kernels.hpp"

namespace ablate {

class FlashAttention final : public Attention {
 public:
  std::string name() const override { return "flash"; }
  void forward(std::span<const AttentionProblem> problems) override { cpu::attention_flash(problems); }
  std::size_t workspace_bytes(const AttentionProblem& p) const override {
    return cpu::attention_flash_workspace_bytes(p);
  }
};

class FlashSplitAttention final : public Attention {
 public:
  std::string name() const override { return "flash_split"; }
  void forward(std::span<const AttentionProblem> problems) override { cpu::attention_flash_split(problems); }
  // For p alone, with the current OpenMP thread count: tile scratch plus the split partials.
  std::size_t workspace_bytes(const AttentionProblem& p) const override {
    return cpu::attention_flash_split_workspace_bytes(p, omp_get_max_threads());
  }
};

}  // namespace ablate
