#pragma once
// Per-thread scratch for the CPU kernels, 64-byte aligned. Eigen's vectorised reductions and
// products peel their first elements up to an aligned address, so the order of a sum (and its
// last bits) follows the buffer's address: with malloc's 16-byte alignment, the same attention
// task gave other bits on another thread's buffer, and a forward pass on 2 threads was not
// bitwise repeatable. Aligned to Eigen's widest packet, every buffer peels alike.
#include <Eigen/Core>
#include <vector>

namespace ablate::cpu {

using ScratchFloats = std::vector<float, Eigen::aligned_allocator<float>>;

}  // namespace ablate::cpu
