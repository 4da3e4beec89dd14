// What every bit-serial GEMM path shares: the type-erased operand `bitplane_view`, the call
// options, the micro-kernel contract and the cache-blocked, threaded driver around it.
// The driver sees an operand of R rows x B bits as R*B "plane rows"; a micro-kernel computes
// popcount(a & w) counts for a tile of plane rows, and the driver folds each count into
// C[row(a)][row(w)] with the weight of its plane pair, so one kernel serves every bit pair.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {

/// A read-only, type-erased bit-plane operand: rows x cols values of `type`, plane p of row r
/// at data + (r * type.bits + p) * words_per_plane (the bitplane_matrix layout), padding bits
/// zero, words_per_plane a multiple of 8 (whole 512-bit blocks).
struct bitplane_view {
  bitwidth type;
  std::size_t rows = 0, cols = 0, words_per_plane = 0;
  const std::uint64_t* data = nullptr;

  bitplane_view() = default;
  bitplane_view(bitwidth t, std::size_t r, std::size_t k, std::size_t wpp, const std::uint64_t* d)
      : type(t), rows(r), cols(k), words_per_plane(wpp), data(d) {}
  template <quantized_type Q>
  bitplane_view(const bitplane_matrix<Q>& m)  // NOLINT: implicit on purpose
      : type(bitwidth_of<Q>()),
        rows(m.rows()),
        cols(m.cols()),
        words_per_plane(m.words_per_plane()),
        data(m.data()) {}

  const std::uint64_t* plane_row(std::size_t plane_row_index) const noexcept {
    return data + plane_row_index * words_per_plane;
  }
};

/// Options of a GEMM call.
struct gemm_options {
  /// Threads to use: 0 means the library pool's size (set_num_threads).
  std::size_t num_threads = 0;
  /// Force an instruction-set path for this call (value_error if unsupported); default: the
  /// active one (see force_isa).
  std::optional<isa> path;
};

namespace detail {

/// Weight of plane p of a value of type t: 2^p, -2^(B-1) for the two's complement sign plane,
/// 2 for the binary plane (value = 2 * bit - 1, the -1 handled by row-sum corrections).
inline std::int64_t plane_weight_of(bitwidth t, int p) noexcept {
  if (t.is_binary()) return 2;
  if (t.is_signed && p == t.bits - 1) return -(std::int64_t(1) << p);
  return std::int64_t(1) << p;
}

/// A micro-kernel: P[i * nr + j] = sum over w < nwords of popcount(a[i][w] & b[j][w]) for
/// i < mr, j < nr. nwords is a multiple of 8; the row pointers are 64-byte aligned.
using popcount_tile_fn = void (*)(const std::uint64_t* const* a, const std::uint64_t* const* b,
                                  std::size_t nwords, std::uint64_t* P);
struct popcount_microkernel {
  int mr, nr;
  popcount_tile_fn fn;
  const char* name;
};

inline void check_view(const bitplane_view& v, const char* what) {
  v.type.validate();
  if (v.words_per_plane % 8 != 0 || v.words_per_plane * 64 < v.cols)
    throw shape_error(mixq::detail::cat("bitserial_gemm: operand ", what, " has ",
                                        v.words_per_plane, " words per plane for K = ", v.cols,
                                        ": expected a multiple of 8 words holding K bits"));
  if (v.data == nullptr && v.rows * v.words_per_plane != 0)
    throw value_error(mixq::detail::cat("bitserial_gemm: operand ", what, " has no data"));
}

inline void check_gemm_shapes(const bitplane_view& A, const bitplane_view& W, std::size_t c_size,
                              const char* who) {
  check_view(A, "A");
  check_view(W, "W");
  if (A.cols != W.cols)
    throw shape_error(mixq::detail::cat(who, ": A is ", A.rows, " x ", A.cols, " but W is ", W.rows,
                                        " x ", W.cols, ": expected the same K"));
  if (A.words_per_plane != W.words_per_plane)
    throw shape_error(mixq::detail::cat(who, ": A has ", A.words_per_plane,
                                        " words per plane but W has ", W.words_per_plane,
                                        ": expected the same padding"));
  if (c_size != A.rows * W.rows)
    throw shape_error(mixq::detail::cat(who, ": C has ", c_size, " elements, expected M * N = ",
                                        A.rows, " * ", W.rows, " = ", A.rows * W.rows));
}

/// sum_k (x[k] - offset) for each row, read off the planes: sum_p w_p * popcount(plane p).
inline std::vector<std::int64_t> plane_row_sums(const bitplane_view& v) {
  std::vector<std::int64_t> s(v.rows, 0);
  for (std::size_t r = 0; r < v.rows; ++r)
    for (int p = 0; p < v.type.bits; ++p) {
      const std::uint64_t* d = v.plane_row(r * v.type.bits + p);
      std::int64_t pop = 0;
      for (std::size_t w = 0; w < v.words_per_plane; ++w) pop += std::popcount(d[w]);
      s[r] += plane_weight_of(v.type, p) * pop;
    }
  return s;
}

/// C's starting values: the offset terms ow sum a' + oa sum w' + K oa ow of the formula below
/// (zero unless an operand is binary). w_sums: W's plane_row_sums when known, else nullptr.
inline void init_offset_terms(const bitplane_view& A, const bitplane_view& W, std::int32_t* C,
                              const std::vector<std::int64_t>* w_sums = nullptr) {
  const std::size_t M = A.rows, N = W.rows, K = A.cols;
  const std::int64_t oa = A.type.is_binary() ? -1 : 0, ow = W.type.is_binary() ? -1 : 0;
  if (oa == 0 && ow == 0) {
    std::fill(C, C + M * N, 0);
    return;
  }
  std::vector<std::uint32_t> row_term(M, 0), col_term(N, 0);
  const std::int64_t kk = static_cast<std::int64_t>(K) * oa * ow;
  if (ow != 0) {
    const auto sa = plane_row_sums(A);
    for (std::size_t m = 0; m < M; ++m) row_term[m] = static_cast<std::uint32_t>(kk + ow * sa[m]);
  } else {
    std::fill(row_term.begin(), row_term.end(), static_cast<std::uint32_t>(kk));
  }
  if (oa != 0) {
    const auto sw = w_sums != nullptr ? *w_sums : plane_row_sums(W);
    for (std::size_t n = 0; n < N; ++n) col_term[n] = static_cast<std::uint32_t>(oa * sw[n]);
  }
  for (std::size_t m = 0; m < M; ++m) {
    std::uint32_t* c = reinterpret_cast<std::uint32_t*>(C + m * N);
    for (std::size_t n = 0; n < N; ++n) c[n] = row_term[m] + col_term[n];
  }
}

/// W interleaved by 8 rows, the layout of the AVX-512 and AVX2 paths: vector row v = (n / 8) *
/// bits + plane holds, for each 64-bit word k of K, the words of rows 8 (n / 8) .. + 7 (rows past
/// N are zero) in 64 contiguous bytes (one zmm, or two ymm halves of 4 rows).
struct interleaved_planes {
  std::size_t vector_rows = 0, words = 0;
  aligned_vector<std::uint64_t> data;
  const std::uint64_t* row(std::size_t v) const noexcept { return data.data() + v * words * 8; }
};

inline interleaved_planes interleave_by_8(const bitplane_view& W) {
  interleaved_planes p;
  const std::size_t blocks = (W.rows + 7) / 8, bits = W.type.bits;
  p.vector_rows = blocks * bits;
  p.words = W.words_per_plane;
  p.data.assign(p.vector_rows * p.words * 8, 0);
  for (std::size_t b = 0; b < blocks; ++b)
    for (std::size_t j = 0; j < bits; ++j) {
      std::uint64_t* dst = p.data.data() + (b * bits + j) * p.words * 8;
      for (std::size_t l = 0; l < 8 && b * 8 + l < W.rows; ++l) {
        const std::uint64_t* src = W.plane_row((b * 8 + l) * bits + j);
        for (std::size_t k = 0; k < p.words; ++k) dst[k * 8 + l] = src[k];
      }
    }
  return p;
}

/// A whole bit-serial path: computes C from checked operands with the given thread count.
using bitserial_run_fn = void (*)(const bitplane_view& A, const bitplane_view& W, std::int32_t* C,
                                  std::size_t threads);
/// The same on W already interleaved by 8 rows (Wi) and, when known, W's plane_row_sums.
using bitserial_interleaved_run_fn = void (*)(const bitplane_view& A, const bitplane_view& W,
                                              const interleaved_planes& Wi,
                                              const std::vector<std::int64_t>* w_sums,
                                              std::int32_t* C, std::size_t threads);
struct bitserial_path {
  bitserial_run_fn run;
  const char* name;
  /// Set for the paths that read the interleaved layout (prepacked weights skip the interleave).
  bitserial_interleaved_run_fn run_interleaved = nullptr;
};

/// Runs work(a0, a1, v0, v1) of an interleaved-W path on the pool over disjoint outputs: whole
/// A rows when M >= N (plane rows [a0, a1), every vector row), else whole 8-row W blocks (every
/// plane row, vector rows [v0, v1)).
template <class Work>
void split_interleaved_gemm(std::size_t M, std::size_t N, std::size_t ba, std::size_t bw,
                            std::size_t threads, const Work& work) {
  thread_pool& pool = default_thread_pool();
  const std::size_t blocks = (N + 7) / 8;
  if (M >= N)
    pool.parallel_for(
        M, [&](std::size_t m0, std::size_t m1) { work(m0 * ba, m1 * ba, 0, blocks * bw); },
        threads);
  else
    pool.parallel_for(
        blocks, [&](std::size_t b0, std::size_t b1) { work(0, M * ba, b0 * bw, b1 * bw); },
        threads);
}

/// The bit-serial GEMM around a micro-kernel. With a = a' + oa, w = w' + ow (oa = -1 for a
/// binary operand, else 0; a' = sum_p weight_p * bit_p):
///   sum_k a w = sum_{i,j} wa_i ww_j popcount(A_i & W_j) + ow sum a' + oa sum w' + K oa ow.
/// Terms are added modulo 2^32, so C is exact whenever the true result fits in int32.
inline void run_bitserial_gemm(const popcount_microkernel& uk, const bitplane_view& A,
                               const bitplane_view& W, std::int32_t* C, std::size_t threads) {
  const std::size_t M = A.rows, N = W.rows;
  if (M == 0 || N == 0) return;
  // Only whole 512-bit blocks holding K bits are walked (micro-kernels step by 8 words).
  const std::size_t words = (A.cols + 511) / 512 * 8;
  const int ba = A.type.bits, bw = W.type.bits;

  init_offset_terms(A, W, C);
  if (words == 0) return;

  const std::size_t RA = M * ba, RW = N * bw;  // plane rows
  std::vector<std::int64_t> wa(RA), ww(RW);
  std::vector<std::size_t> ra(RA), rw(RW);
  for (std::size_t r = 0; r < RA; ++r) wa[r] = plane_weight_of(A.type, int(r % ba)), ra[r] = r / ba;
  for (std::size_t r = 0; r < RW; ++r) ww[r] = plane_weight_of(W.type, int(r % bw)), rw[r] = r / bw;

  const std::size_t MR = uk.mr, NR = uk.nr;
  // K block: whole rows up to 16 KiB of bits per plane row; W block: about 384 KiB of L2.
  const std::size_t kc = std::min<std::size_t>(words, 2048);
  const std::size_t nb = std::max<std::size_t>(NR, (384 * 1024 / (kc * 8)) / NR * NR);

  auto work = [&](std::size_t a0, std::size_t a1, std::size_t w0, std::size_t w1) {
    std::uint64_t P[64];
    const std::uint64_t* ap[16];
    const std::uint64_t* bp[16];
    for (std::size_t k0 = 0; k0 < words; k0 += kc) {
      const std::size_t kn = std::min(kc, words - k0);
      for (std::size_t c0 = w0; c0 < w1; c0 += nb) {
        const std::size_t c1 = std::min(w1, c0 + nb);
        for (std::size_t r = a0; r < a1; r += MR) {
          const std::size_t mr = std::min(MR, a1 - r);
          for (std::size_t i = 0; i < MR; ++i) ap[i] = A.plane_row(r + std::min(i, mr - 1)) + k0;
          for (std::size_t c = c0; c < c1; c += NR) {
            const std::size_t nr = std::min(NR, c1 - c);
            for (std::size_t j = 0; j < NR; ++j) bp[j] = W.plane_row(c + std::min(j, nr - 1)) + k0;
            uk.fn(ap, bp, kn, P);
            for (std::size_t i = 0; i < mr; ++i) {
              std::uint32_t* crow = reinterpret_cast<std::uint32_t*>(C + ra[r + i] * N);
              const std::int64_t wi = wa[r + i];
              for (std::size_t j = 0; j < nr; ++j)
                crow[rw[c + j]] += static_cast<std::uint32_t>(
                    wi * ww[c + j] * static_cast<std::int64_t>(P[i * NR + j]));
            }
          }
        }
      }
    }
  };

  // Threads split the larger side by whole rows, so no two write the same output.
  thread_pool& pool = default_thread_pool();
  if (M >= N)
    pool.parallel_for(
        M, [&](std::size_t m0, std::size_t m1) { work(m0 * ba, m1 * ba, 0, RW); }, threads);
  else
    pool.parallel_for(
        N, [&](std::size_t n0, std::size_t n1) { work(0, RA, n0 * bw, n1 * bw); }, threads);
}

}  // namespace detail
}  // namespace mixq::kernels
