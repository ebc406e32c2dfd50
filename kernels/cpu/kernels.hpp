#pragma once
// CPU kernels of the forward pass (fp32, row-major, plain pointers). Each has a scalar twin in
// cpu/reference.hpp that the tests compare it with.
#include <cstddef>

#include "cpu/attention.hpp"
#include "cpu/half.hpp"
#include "cpu/lattice.hpp"
#include "cpu/quant.hpp"

namespace ablate::cpu {

// y[rows][out] = x[rows][in] * w[out][in]^T. The decode hot path: the OpenMP threads claim
// contiguous pieces of w's rows as they free up (large pieces first, the same pieces every call),
// so each streams long runs of w and none waits long for the other; small products (rows*in*out
// below kMatmulParallelMinWork) run on the calling thread.
void matmul(float* y, const float* x, const float* w, int rows, int in, int out);
// w stored as bf16: x is rounded to bf16 too (round_to_bf16) and the bf16 x bf16 products (exact
// in fp32) are summed in fp32, as a tensor-core bf16 GEMM does; with AVX-512 BF16 (vdpbf16ps)
// both operands are read as stored, which at 16 rows makes the step about twice the
// multiply-adds per instruction of fp32. The same products on every row count and build.
void matmul(float* y, const float* x, const Bf16* w, int rows, int in, int out);
// w stored as fp16: widened to fp32 as it is read, fp32 products and sums, so the result is the
// fp32 product of the rounded weights (no CPU here has an fp16 dot product).
void matmul(float* y, const float* x, const Half* w, int rows, int in, int out);
// dst[i] = to_bf16(src[i]) (the same bits), 16 at a time with AVX-512, 8 with AVX2.
void round_to_bf16(Bf16* dst, const float* src, std::size_t n);
// w as Q8_0 blocks (pack_q8_0 of [out][q8_0_blocks_per_row(in)]), about 1.06 bytes a weight
// instead of 4. As llama.cpp's Q8_0 matmul: each row of x is quantized to Q8_0 blocks too
// (quantize_q8_0_rows), each block pair's 32 int8 products summed exactly, times the two blocks'
// scales, fp32 sums. Throws std::invalid_argument if w is not [out][in].
void matmul(float* y, const float* x, const PackedQ8_0& w, int rows, int in, int out);
// w as Q4_0, Q4_1, Q5_0 or Q5_1 blocks (pack_nibbles; dtype native on a GGUF's tensors of those
// types), 0.5625 to 0.75 bytes a weight: x's rows quantized to Q8_0 blocks as for Q8_0 weights, each
// block pair's int8 products summed exactly, times d_w d_x, plus m_w (Q4_0: -8 d_w, Q5_0: -16 d_w)
// times d_x sum(q_x); fp32 sums. in must be a multiple of 32. Throws std::invalid_argument if w is
// not [out][in].
void matmul(float* y, const float* x, const PackedQ4_1& w, int rows, int in, int out);
void matmul(float* y, const float* x, const PackedQ4_0& w, int rows, int in, int out);
void matmul(float* y, const float* x, const PackedQ5_0& w, int rows, int in, int out);
void matmul(float* y, const float* x, const PackedQ5_1& w, int rows, int in, int out);
// w as Q4_K blocks (pack_q4_k; dtype native on a GGUF's Q4_K tensors), 0.58 bytes a weight: each
// 32-value sub-block as a Q4_1 block (scale d sc_s, offset -dmin m_s) times x's Q8_0 block there.
// in must be a multiple of 256. Throws std::invalid_argument if w is not [out][in].
void matmul(float* y, const float* x, const PackedQ4_K& w, int rows, int in, int out);
// w as Q5_K blocks (pack_q5_k), 0.70 bytes a weight: as Q4_K, each sub-block a Q5_1 block.
void matmul(float* y, const float* x, const PackedQ5_K& w, int rows, int in, int out);
// w as IQ4_NL blocks (pack_nibbles) or IQ4_XS blocks (pack_iq4_xs), 0.5625 and 0.54 bytes a
// weight: each q's int8 level (kIQ4Levels) times x's Q8_0 values, summed exactly, times d_w d_x
// (IQ4_XS: d (ls - 32) per 32 values). The same contract as above.
void matmul(float* y, const float* x, const PackedIQ4_NL& w, int rows, int in, int out);
void matmul(float* y, const float* x, const PackedIQ4_XS& w, int rows, int in, int out);
// w as Q3_K or Q2_K blocks (pack_q3_k, pack_q2_k), 0.45 and 0.33 bytes a weight: as Q6_K, each
// 16 values' int sums (Q3_K: of (q - 4) q_x; Q2_K: of q q_x, less dmin m_g times d_x sum(q_x) there).
void matmul(float* y, const float* x, const PackedQ3_K& w, int rows, int in, int out);
void matmul(float* y, const float* x, const PackedQ2_K& w, int rows, int in, int out);
// w as Q6_K blocks (pack_q6_k), 0.82 bytes a weight: each 32-value sub-block's two 16-value halves,
// d sc_g times the exact int sums of (q - 32) q_x, times d_x. The same contract as above.
void matmul(float* y, const float* x, const PackedQ6_K& w, int rows, int in, int out);
// w as one of the lattice types IQ1_S..IQ3_S in the file's own blocks (make_lattice_matrix), 1.56 to
// 3.44 bits a weight: each 32-value sub-block expanded to its integers (lattice.hpp) and multiplied
// by x's Q8_0 block there as Q8_0 is, exact int sums times the half's scale and d_x. The same
// contract as above.
void matmul(float* y, const float* x, const LatticeMatrix& w, int rows, int in, int out);
// rows x in floats as rows x q8_0_blocks_per_row(in) blocks: the bytes of quant.hpp's
// quantize_q8_0 (vectorised where the CPU has AVX2).
void quantize_q8_0_rows(BlockQ8_0* dst, const float* x, int rows, int in);

// The instruction set the CPU kernels were compiled for (-march=native: the build host's):
// "avx512-bf16", "avx512", "avx2" or "generic". Each takes different kernel paths (speed, and the
// fp32 summation order), so it is part of the CPU backend's device name in every result row.
const char* kernel_isa();
inline constexpr std::size_t kMatmulParallelMinWork = std::size_t{1} << 16;

// out = x / sqrt(mean(x^2) + eps) * weight, row by row; out may alias x.
void rmsnorm(float* out, const float* x, const float* weight, int rows, int dim, float eps);

// Rotary embedding in place, llama2.c convention: adjacent pairs (x[i], x[i+1]), i even within
// each head, angle = positions[r] * theta^(-i/head_dim), computed in float exactly as llama2.c.
// Row r holds n_heads heads of head_dim floats at x + r * row_stride.
void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, float theta);
// The same with the head_dim / 2 frequencies given (pair i turns by positions[r] * freq[i]): scaled
// RoPE (Llama 3.1); freq[i] = 1 / theta^(i/head_dim) in float gives the unscaled kernel's bits.
void rope(float* x, int rows, int row_stride, int n_heads, int head_dim, const int* positions, const float* freq);

// Numerically stable softmax in place: subtract the max, expf, normalise by a double sum.
void softmax(float* x, int n);

// out[r] = the index of row r's largest value, the lowest one on ties (greedy sampling); x is
// [rows][n], NaN-free.
void argmax_rows(const float* x, int rows, int n, int* out);

// gate[i] = silu(gate[i]) * up[i].
void swiglu(float* gate, const float* up, std::size_t n);

// SwiGLU on fused [gate | up] rows: out[r][j] = silu(gate_up[r][j]) * gate_up[r][hidden + j],
// out rows of hidden floats. out may be gate_up when rows == 1.
void swiglu_rows(float* out, const float* gate_up, int rows, int hidden);

// x[i] += y[i] (the residual connection).
void add(float* x, const float* y, std::size_t n);

}  // namespace ablate::cpu
