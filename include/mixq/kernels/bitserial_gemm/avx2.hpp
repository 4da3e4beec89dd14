// The AVX2 bit-serial path. W is read in the 8-row interleaved layout of the AVX-512 path: the
// two ymm halves of a 64-byte group hold the same 64 bits of K from rows 0..3 and 4..7 of an
// 8-row block. A word of an A plane row is broadcast against them; popcount is a nibble lookup
// (vpshufb), summed in byte lanes for up to 31 words and then folded into 64-bit lanes by
// vpsadbw, so each lane is one output's count and no horizontal sums are needed. A tile is
// 4 A plane rows x 8 W rows: 8 byte accumulators, 2 W halves, the broadcast, the table and
// the nibble mask leave 3 of the 16 ymm registers for temporaries.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels::detail {

#if defined(__x86_64__)
#define MIXQ_HAS_AVX2_BITSERIAL 1
#define MIXQ_AVX2_BITSERIAL_TARGET __attribute__((target("avx2")))

inline constexpr int avx2_bitserial_mr = 4;

/// acc[i][h] (4 x 64-bit lanes) = popcount(a[i][k] & word k of W rows 4h .. 4h + 3 of the
/// interleaved vector row at w), summed over nwords words k.
template <int MR>
MIXQ_AVX2_BITSERIAL_TARGET __attribute__((always_inline)) inline void popcount_tile_avx2(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t nwords,
    __m256i (&acc)[MR][2]) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (std::size_t k0 = 0; k0 < nwords;) {
    // A byte lane gains at most 8 per word: 31 words before it could overflow.
    const std::size_t k1 = std::min(nwords, k0 + 31);
    __m256i bytes[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) bytes[i][0] = bytes[i][1] = _mm256_setzero_si256();
    for (std::size_t k = k0; k < k1; ++k) {
      __m256i wv[2] = {_mm256_load_si256(reinterpret_cast<const __m256i*>(w + k * 8)),
                       _mm256_load_si256(reinterpret_cast<const __m256i*>(w + k * 8 + 4))};
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m256i av = _mm256_set1_epi64x(static_cast<long long>(a[i][k]));
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i x = _mm256_and_si256(av, wv[h]);
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
          const __m256i hi =
              _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
          bytes[i][h] = _mm256_add_epi8(bytes[i][h], _mm256_add_epi8(lo, hi));
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h)
        acc[i][h] =
            _mm256_add_epi64(acc[i][h], _mm256_sad_epu8(bytes[i][h], _mm256_setzero_si256()));
    k0 = k1;
  }
}

/// One tile: the counts of MR A plane rows x one 8-row W vector row over nwords words, each
/// weighted by its plane pair and added to C (row crow[i], outputs n0 .. n0 + valid - 1).
template <int MR>
MIXQ_AVX2_BITSERIAL_TARGET __attribute__((noinline)) void bitserial_tile_avx2(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t nwords, int mr,
    std::uint32_t* const* crow, const std::int64_t* wa, std::int64_t wv, std::size_t n0,
    std::size_t valid) {
  __m256i acc[MR][2];
  popcount_tile_avx2<MR>(a, w, nwords, acc);
  // Low dwords of the 64-bit counts to lanes 0..3 (counts of one K block fit 32 bits).
  const __m256i low_dwords = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), lane);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    const __m256i counts =
        _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(acc[i][0], low_dwords),
                                  _mm256_permutevar8x32_epi32(acc[i][1], low_dwords), 0x20);
    // Products are taken modulo 2^32, like every term of C.
    const __m256i term =
        _mm256_mullo_epi32(counts, _mm256_set1_epi32(static_cast<int>(wa[i] * wv)));
    auto* c = reinterpret_cast<int*>(crow[i] + n0);
    if (valid == 8) {
      auto* cv = reinterpret_cast<__m256i*>(c);
      _mm256_storeu_si256(cv, _mm256_add_epi32(_mm256_loadu_si256(cv), term));
    } else {
      _mm256_maskstore_epi32(c, mask, _mm256_add_epi32(_mm256_maskload_epi32(c, mask), term));
    }
  }
}

/// The AVX2 bit-serial GEMM on W interleaved by 8 rows (Wi = interleave_by_8(W)); w_sums: W's
/// plane_row_sums when known (prepacked weights), else nullptr.
MIXQ_AVX2_BITSERIAL_TARGET inline void run_bitserial_gemm_avx2_interleaved(
    const bitplane_view& A, const bitplane_view& W, const interleaved_planes& Wi,
    const std::vector<std::int64_t>* w_sums, std::int32_t* C, std::size_t threads) {
  constexpr int MR = avx2_bitserial_mr;
  const std::size_t M = A.rows, N = W.rows;
  if (M == 0 || N == 0) return;
  init_offset_terms(A, W, C, w_sums);
  // Only the words holding K bits are walked (the rest of the padding is zero).
  const std::size_t words = (A.cols + 63) / 64;
  if (words == 0) return;
  const std::size_t ba = A.type.bits, bw = W.type.bits;
  const std::size_t RA = M * ba, RV = Wi.vector_rows;

  std::vector<std::int64_t> wa(RA), wv(RV);
  std::vector<std::size_t> ra(RA), nstart(RV);
  for (std::size_t m = 0, r = 0; m < M; ++m)
    for (std::size_t p = 0; p < ba; ++p, ++r) {
      wa[r] = plane_weight_of(A.type, int(p));
      ra[r] = m;
    }
  for (std::size_t b = 0, v = 0; v < RV; ++b)
    for (std::size_t q = 0; q < bw; ++q, ++v) {
      wv[v] = plane_weight_of(W.type, int(q));
      nstart[v] = b * 8;
    }

  // K block: up to 2048 words; W block: about 256 KiB of interleaved W (an AVX2 core's L2 may
  // be as small as 256 KiB, shared with the A rows and C).
  const std::size_t kc = std::min<std::size_t>(words, 2048);
  const std::size_t vb = std::max<std::size_t>(1, 192 * 1024 / (kc * 64));

  auto work = [&](std::size_t a0, std::size_t a1, std::size_t v0, std::size_t v1) {
    const std::uint64_t* ap[MR];
    std::uint32_t* crow[MR];
    for (std::size_t k0 = 0; k0 < words; k0 += kc) {
      const std::size_t kn = std::min(kc, words - k0);
      for (std::size_t c0 = v0; c0 < v1; c0 += vb) {
        const std::size_t c1 = std::min(v1, c0 + vb);
        for (std::size_t r = a0; r < a1; r += MR) {
          const int mr = static_cast<int>(std::min<std::size_t>(MR, a1 - r));
          for (int i = 0; i < MR; ++i) {
            const std::size_t ri = r + std::min(i, mr - 1);
            ap[i] = A.plane_row(ri) + k0;
            crow[i] = reinterpret_cast<std::uint32_t*>(C + ra[ri] * N);
          }
          for (std::size_t v = c0; v < c1; ++v)
            bitserial_tile_avx2<MR>(ap, Wi.row(v) + k0 * 8, kn, mr, crow, &wa[r], wv[v],
                                    nstart[v], std::min<std::size_t>(8, N - nstart[v]));
        }
      }
    }
  };

  // Threads split the larger side by whole rows (A) or whole 8-row W blocks: disjoint outputs.
  split_interleaved_gemm(M, N, ba, bw, threads, work);
}

inline void run_bitserial_gemm_avx2(const bitplane_view& A, const bitplane_view& W,
                                    std::int32_t* C, std::size_t threads) {
  if (A.rows == 0 || W.rows == 0) return;
  run_bitserial_gemm_avx2_interleaved(A, W, interleave_by_8(W), nullptr, C, threads);
}

inline constexpr bitserial_path bitserial_avx2{&run_bitserial_gemm_avx2,
                                               "bitserial_gemm_avx2_4x8_broadcast",
                                               &run_bitserial_gemm_avx2_interleaved};
#endif

}  // namespace mixq::kernels::detail
