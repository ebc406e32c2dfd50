#include "cpu/lattice.hpp"

#include <stdexcept>
#include <string>

namespace ablate::cpu {

#include "cpu/iq_grids.inc"

std::size_t lattice_block_bytes(LatticeType type) {
  switch (type) {
    case LatticeType::IQ2_XXS: return sizeof(BlockIQ2_XXS);
    case LatticeType::IQ2_XS: return sizeof(BlockIQ2_XS);
    case LatticeType::IQ2_S: return sizeof(BlockIQ2_S);
    case LatticeType::IQ3_XXS: return sizeof(BlockIQ3_XXS);
    case LatticeType::IQ3_S: return sizeof(BlockIQ3_S);
    case LatticeType::IQ1_S: return sizeof(BlockIQ1_S);
    case LatticeType::IQ1_M: return sizeof(BlockIQ1_M);
  }
  throw std::invalid_argument("lattice_block_bytes: unknown type");
}

LatticeMatrix make_lattice_matrix(LatticeType type, std::vector<std::uint8_t> bytes, int out, int in) {
  if (out <= 0 || in <= 0 || in % 256 != 0)
    throw std::invalid_argument("make_lattice_matrix: in (" + std::to_string(in) + ") must be a positive multiple of 256");
  if (bytes.size() != std::size_t(out) * (in / 256) * lattice_block_bytes(type))
    throw std::invalid_argument("make_lattice_matrix: " + std::to_string(bytes.size()) + " bytes are not " + std::to_string(out) + " rows of " +
                                std::to_string(in / 256) + " blocks");
  return {type, out, in, std::move(bytes)};
}

namespace {
template <class Block>
void row_values(const LatticeMatrix& m, int o, int b, float* dst) {
  Block blk;
  std::memcpy(&blk, m.bytes.data() + (std::size_t(o) * (m.in / 256) + b) * sizeof(Block), sizeof blk);
  lattice_values(blk, dst);
}
}  // namespace

void lattice_row_values(const LatticeMatrix& m, int o, int b, float* dst) {
  switch (m.type) {
    case LatticeType::IQ2_XXS: return row_values<BlockIQ2_XXS>(m, o, b, dst);
    case LatticeType::IQ2_XS: return row_values<BlockIQ2_XS>(m, o, b, dst);
    case LatticeType::IQ2_S: return row_values<BlockIQ2_S>(m, o, b, dst);
    case LatticeType::IQ3_XXS: return row_values<BlockIQ3_XXS>(m, o, b, dst);
    case LatticeType::IQ3_S: return row_values<BlockIQ3_S>(m, o, b, dst);
    case LatticeType::IQ1_S: return row_values<BlockIQ1_S>(m, o, b, dst);
    case LatticeType::IQ1_M: return row_values<BlockIQ1_M>(m, o, b, dst);
  }
}

}  // namespace ablate::cpu
