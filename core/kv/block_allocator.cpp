#include "kv/block_allocator.hpp"

#include <stdexcept>

#include <fmt/format.h>

namespace ablate {

BlockAllocator::BlockAllocator(int num_blocks) : taken_(static_cast<std::size_t>(num_blocks > 0 ? num_blocks : 0), 0) {
  free_.reserve(taken_.size());
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 handed out first
}

int32_t BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  const int32_t b = free_.back();
  free_.pop_back();
  taken_[static_cast<std::size_t>(b)] = 1;
  return b;
}

void BlockAllocator::free(int32_t block) {
  if (block < 0 || block >= num_blocks())
    throw std::logic_error(fmt::format("block allocator: block {} is outside the pool of {}", block, num_blocks()));
  char& t = taken_[static_cast<std::size_t>(block)];
  if (!t) throw std::logic_error(fmt::format("block allocator: block {} freed twice", block));
  t = 0;
  free_.push_back(block);
}

}  // namespace ablate
