#pragma once
// Prompts as text, for real-model workloads (workload.prompts: PATH, to be wired by the runner).
//   *.jsonl: one JSON value per non-empty line: an object with a "prompt" (or "text") string, or
//            a bare string.
//   other:   plain text, one prompt per non-empty line.
#include <string>
#include <vector>

namespace ablate {

class Tokenizer;

// The prompts of a file, in order. Throws std::runtime_error naming file:line on a bad line.
std::vector<std::string> read_prompts(const std::string& path);
// Each prompt tokenized (with BOS when the tokenizer adds one).
std::vector<std::vector<int>> tokenize_prompts(const std::vector<std::string>& prompts, const Tokenizer& tok);

}  // namespace ablate
