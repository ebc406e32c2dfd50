#include "cpu/lattice.hpp"

#include <stdexcept>
#include <string>

namespace ablate::cpu {

#include "cpu/iq_grids.inc"

std::size_t lattice_block_bytes(LatticeType type) {
  return with_lattice_block(type, [](auto blk) { return sizeof blk; });
}

LatticeMatrix make_lattice_matrix(LatticeType type, std::vector<std::uint8_t> bytes, int out, int in) {
  if (out <= 0 || in <= 0 || in % 256 != 0)
    throw std::invalid_argument("make_lattice_matrix: in (" + std::to_string(in) + ") must be a positive multiple of 256");
  if (bytes.size() != std::size_t(out) * (in / 256) * lattice_block_bytes(type))
    throw std::invalid_argument("make_lattice_matrix: " + std::to_string(bytes.size()) + " bytes are not " + std::to_string(out) + " rows of " +
                                std::to_string(in / 256) + " blocks");
  return {type, out, in, std::move(bytes)};
}

void lattice_row_values(const LatticeMatrix& m, int o, int b, float* dst) {
  with_lattice_block(m.type, [&](auto blk) {
    std::memcpy(&blk, m.bytes.data() + (std::size_t(o) * (m.in / 256) + b) * sizeof blk, sizeof blk);
    lattice_values(blk, dst);
  });
}

}  // namespace ablate::cpu
