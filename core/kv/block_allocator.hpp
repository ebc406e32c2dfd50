#pragma once
// A pool of fixed-size KV blocks: hands out free block indices and takes them back. It knows
// nothing of sequences or tokens (that is the paged cache's job), only which blocks are taken.
// Invariant, checked by tests at every step: num_allocated() + num_free() == num_blocks().
#include <cstdint>
#include <vector>

namespace ablate {

class BlockAllocator {
 public:
  explicit BlockAllocator(int num_blocks);

  // A free block's index, or -1 when the pool is exhausted.
  int32_t allocate();
  // Give a block back; throws std::logic_error on a block not allocated (double free).
  void free(int32_t block);

  int num_blocks() const { return static_cast<int>(taken_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_allocated() const { return num_blocks() - num_free(); }
  bool is_allocated(int32_t block) const { return taken_.at(static_cast<std::size_t>(block)) != 0; }

 private:
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first (warm in cache)
  std::vector<char> taken_;    // per block: 1 while allocated
};

}  // namespace ablate
