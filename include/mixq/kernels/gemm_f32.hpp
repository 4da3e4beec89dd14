// gemm_f32: single-precision GEMM on row-major matrices with optional transposes,
// C = alpha * op(A) * op(B) + beta * C. The training path and the float baseline use it.
// Blocked (packed KC x NC panels of op(B), MC x KC blocks of op(A)) around a 12 x 32 register
// tile of AVX-512 FMAs (target attribute, chosen at run time) or a portable tile; threads
// split the rows of a block. gemm_f32_reference keeps the plain loop for tests.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <xsimd/xsimd.hpp>

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {

enum class transpose : bool { no = false, yes = true };

namespace detail {
inline void check_gemm_f32(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                           std::size_t lda, std::size_t ldb, std::size_t ldc) {
  const bool at = ta == transpose::yes, bt = tb == transpose::yes;
  if (lda < (at ? M : K) || ldb < (bt ? K : N) || ldc < N)
    throw shape_error(mixq::detail::cat("gemm_f32: leading dimensions lda=", lda, " ldb=", ldb,
                                        " ldc=", ldc, " too small for M=", M, " N=", N, " K=", K,
                                        ": expected lda >= ", at ? M : K, ", ldb >= ", bt ? K : N,
                                        ", ldc >= N"));
}
}  // namespace detail

/// The plain loop: the oracle of the tests. Same contract as gemm_f32.
inline void gemm_f32_reference(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const float* A, std::size_t lda,
                               const float* B, std::size_t ldb, float beta, float* C,
                               std::size_t ldc) {
  detail::check_gemm_f32(ta, tb, M, N, K, lda, ldb, ldc);
  const bool at = ta == transpose::yes, bt = tb == transpose::yes;
  for (std::size_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::fill(c, c + N, 0.0f);
    else if (beta != 1.0f)
      for (std::size_t j = 0; j < N; ++j) c[j] *= beta;
    for (std::size_t k = 0; k < K; ++k) {
      const float a = alpha * (at ? A[k * lda + i] : A[i * lda + k]);
      for (std::size_t j = 0; j < N; ++j) c[j] += a * (bt ? B[j * ldb + k] : B[k * ldb + j]);
    }
  }
}

namespace detail {

inline constexpr std::size_t sgemm_mr = 12, sgemm_nr = 32, sgemm_kc = 256, sgemm_mc = 144,
                             sgemm_nc = 2048;

/// C tile (ldc) += Ap (kc x 12, packed) * Bp (kc x 32, packed): the portable tile, on xsimd's
/// batches of the architecture the translation unit is compiled for (SSE2 by default on x86-64,
/// AVX2 / AVX-512 with -march flags, NEON on ARM). The 12 x 32 tile is walked as sub-tiles of
/// 4 rows x 2 batches, so the accumulators fit the register file of every architecture (8 of
/// SSE's or NEON's 16); Ap and Bp stay in L1 across the passes.
inline void sgemm_tile_portable(std::size_t kc, const float* ap, const float* bp, float* c,
                                std::size_t ldc) {
  using batch = xsimd::batch<float>;
  constexpr std::size_t S = batch::size, SR = 4, SB = 2;
  // Every xsimd 8.1 architecture has at most 16 floats per batch (AVX-512), so the 32-wide
  // tile is a whole number of 2-batch sub-tiles.
  static_assert(sgemm_nr % (S * SB) == 0, "a batch wider than 16 floats needs a wider tile");
  for (std::size_t i0 = 0; i0 < sgemm_mr; i0 += SR)
    for (std::size_t j0 = 0; j0 < sgemm_nr; j0 += S * SB) {
      batch acc[SR][SB];
      for (auto& row : acc)
        for (auto& x : row) x = batch(0.0f);
      const float* a = ap + i0;
      const float* b = bp + j0;
      for (std::size_t k = 0; k < kc; ++k, a += sgemm_mr, b += sgemm_nr) {
        batch bv[SB];
        for (std::size_t j = 0; j < SB; ++j) bv[j] = batch::load_unaligned(b + j * S);
        for (std::size_t i = 0; i < SR; ++i) {
          const batch av(a[i]);
          for (std::size_t j = 0; j < SB; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
        }
      }
      for (std::size_t i = 0; i < SR; ++i)
        for (std::size_t j = 0; j < SB; ++j) {
          float* ci = c + (i0 + i) * ldc + j0 + j * S;
          (batch::load_unaligned(ci) + acc[i][j]).store_unaligned(ci);
        }
    }
}

#if defined(__x86_64__)
#define MIXQ_HAS_AVX512_SGEMM 1
/// The AVX-512 tile: 24 zmm accumulators, two B vectors and one broadcast A per step.
__attribute__((target("avx512f,fma"))) inline void sgemm_tile_avx512(std::size_t kc,
                                                                     const float* ap,
                                                                     const float* bp, float* c,
                                                                     std::size_t ldc) {
  __m512 acc[sgemm_mr][2];
#pragma GCC unroll 32
  for (std::size_t i = 0; i < sgemm_mr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (std::size_t k = 0; k < kc; ++k, ap += sgemm_mr, bp += sgemm_nr) {
    __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
    asm volatile("" : "+v"(b0), "+v"(b1));
#pragma GCC unroll 32
    for (std::size_t i = 0; i < sgemm_mr; ++i) {
      const __m512 a = _mm512_set1_ps(ap[i]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 32
  for (std::size_t i = 0; i < sgemm_mr; ++i) {
    float* ci = c + i * ldc;
    _mm512_storeu_ps(ci, _mm512_add_ps(_mm512_loadu_ps(ci), acc[i][0]));
    _mm512_storeu_ps(ci + 16, _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc[i][1]));
  }
}
#endif

using sgemm_tile_fn = void (*)(std::size_t, const float*, const float*, float*, std::size_t);

inline void gemm_f32_blocked(sgemm_tile_fn tile, transpose ta, transpose tb, std::size_t M,
                             std::size_t N, std::size_t K, float alpha, const float* A,
                             std::size_t lda, const float* B, std::size_t ldb, float beta, float* C,
                             std::size_t ldc, std::size_t threads) {
  const bool at = ta == transpose::yes, bt = tb == transpose::yes;
  for (std::size_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::fill(c, c + N, 0.0f);
    else if (beta != 1.0f)
      for (std::size_t j = 0; j < N; ++j) c[j] *= beta;
  }
  if (K == 0 || alpha == 0.0f) return;
  constexpr std::size_t MR = sgemm_mr, NR = sgemm_nr;
  aligned_vector<float> bpack;
  for (std::size_t jc = 0; jc < N; jc += sgemm_nc) {
    const std::size_t nc = std::min(sgemm_nc, N - jc), npanels = (nc + NR - 1) / NR;
    for (std::size_t pc = 0; pc < K; pc += sgemm_kc) {
      const std::size_t kc = std::min(sgemm_kc, K - pc);
      // Pack op(B)[pc.., jc..] as panels of kc x 32, zero past N; the panels are split over the
      // threads too (packed by one thread, B's packing held two threads to 1.4x one).
      bpack.resize(npanels * kc * NR);
      default_thread_pool().parallel_for(
          npanels,
          [&](std::size_t p0, std::size_t p1) {
            for (std::size_t p = p0; p < p1; ++p) {
              float* dst = bpack.data() + p * kc * NR;
              const std::size_t j0 = jc + p * NR, jn = std::min(NR, N - j0);
              for (std::size_t k = 0; k < kc; ++k) {
                for (std::size_t j = 0; j < jn; ++j)
                  dst[k * NR + j] = bt ? B[(j0 + j) * ldb + pc + k] : B[(pc + k) * ldb + j0 + j];
                for (std::size_t j = jn; j < NR; ++j) dst[k * NR + j] = 0.0f;
              }
            }
          },
          threads);
      default_thread_pool().parallel_for(
          (M + MR - 1) / MR,
          [&](std::size_t t0, std::size_t t1) {
            aligned_vector<float> apack(sgemm_mc * kc);
            alignas(64) float edge[MR * NR];
            for (std::size_t ic = t0 * MR; ic < std::min(M, t1 * MR); ic += sgemm_mc) {
              const std::size_t mc = std::min({sgemm_mc, M - ic, t1 * MR - ic});
              const std::size_t mpanels = (mc + MR - 1) / MR;
              // Pack alpha * op(A)[ic.., pc..] as panels of kc x 12, zero past M.
              for (std::size_t q = 0; q < mpanels; ++q) {
                float* dst = apack.data() + q * kc * MR;
                const std::size_t i0 = ic + q * MR, in = std::min(MR, M - i0);
                for (std::size_t k = 0; k < kc; ++k) {
                  for (std::size_t i = 0; i < in; ++i)
                    dst[k * MR + i] =
                        alpha * (at ? A[(pc + k) * lda + i0 + i] : A[(i0 + i) * lda + pc + k]);
                  for (std::size_t i = in; i < MR; ++i) dst[k * MR + i] = 0.0f;
                }
              }
              for (std::size_t p = 0; p < npanels; ++p) {
                const std::size_t j0 = jc + p * NR, jn = std::min(NR, N - j0);
                for (std::size_t q = 0; q < mpanels; ++q) {
                  const std::size_t i0 = ic + q * MR, in = std::min(MR, M - i0);
                  const float* ap = apack.data() + q * kc * MR;
                  const float* bp = bpack.data() + p * kc * NR;
                  if (in == MR && jn == NR) {
                    tile(kc, ap, bp, C + i0 * ldc + j0, ldc);
                  } else {
                    std::fill(edge, edge + MR * NR, 0.0f);
                    tile(kc, ap, bp, edge, NR);
                    for (std::size_t i = 0; i < in; ++i)
                      for (std::size_t j = 0; j < jn; ++j)
                        C[(i0 + i) * ldc + j0 + j] += edge[i * NR + j];
                  }
                }
              }
            }
          },
          threads);
    }
  }
}

}  // namespace detail

/// C (M x N, leading dimension ldc) = alpha * op(A) * op(B) + beta * C, all row-major.
/// op(A) is M x K: A is M x K (lda >= K) or, transposed, K x M (lda >= M); likewise op(B) is
/// K x N from B of K x N (ldb >= N) or N x K (ldb >= K). beta == 0 ignores C's old contents.
/// options.path: avx512_vpopcntdq selects the AVX-512 FMA tile (any AVX-512F CPU runs it),
/// other paths the portable tile; shape_error for leading dimensions that are too small.
inline void gemm_f32(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                     float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
                     float beta, float* C, std::size_t ldc, const gemm_options& options = {}) {
  detail::check_gemm_f32(ta, tb, M, N, K, lda, ldb, ldc);
  isa path = active_isa();
  if (options.path) {
    detail::check_isa(*options.path);
    path = *options.path;
  }
  detail::sgemm_tile_fn tile = &detail::sgemm_tile_portable;
#if defined(MIXQ_HAS_AVX512_SGEMM)
  if (path == isa::avx512_vpopcntdq && detected_cpu_features().avx512f)
    tile = &detail::sgemm_tile_avx512;
#endif
  detail::gemm_f32_blocked(tile, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                           options.num_threads);
}

}  // namespace mixq::kernels
