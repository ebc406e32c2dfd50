#pragma once
// attention: naive. Scores materialised as a full [n_q x kv_len] matrix per head, softmax, times V.
#include "attention/attention.hpp"
#include "cpu/kernels.hpp"

namespace ablate {

class NaiveAttention final : public Attention {
 public:
  std::string name() const override { return "naive"; }
  void forward(std::span<const AttentionProblem> problems) override { cpu::attention_naive(problems); }
  std::size_t workspace_bytes(const AttentionProblem& p) const override {
    return cpu::attention_naive_workspace_bytes(p);
  }
};

}  // namespace ablate
