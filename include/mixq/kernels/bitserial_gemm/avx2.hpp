// The AVX2 bit-serial micro-kernel: popcount by nibble lookup (vpshufb), byte counts summed in
// 8-bit lanes for up to 31 steps, then folded into 64-bit lanes with vpsadbw. A 2 x 2 tile of
// plane rows keeps all operands in the 16 ymm registers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/kernels/bitserial_gemm/common.hpp"

namespace mixq::kernels::detail {

#if defined(__x86_64__)
#define MIXQ_HAS_AVX2_BITSERIAL 1

template <int MR, int NR>
__attribute__((target("avx2"))) void bitserial_tile_avx2(const std::uint64_t* const* a,
                                                         const std::uint64_t* const* b,
                                                         std::size_t nwords, std::uint64_t* P) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  for (std::size_t w0 = 0; w0 < nwords;) {
    // At most 31 steps of 8 per byte lane before the 8-bit sums could overflow.
    const std::size_t w1 = std::min(nwords, w0 + 31 * 4);
    __m256i bytes[MR][NR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) bytes[i][j] = _mm256_setzero_si256();
    for (std::size_t w = w0; w < w1; w += 4) {
      __m256i bv[NR];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j)
        bv[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b[j] + w));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(a[i] + w));
#pragma GCC unroll 16
        for (int j = 0; j < NR; ++j) {
          const __m256i x = _mm256_and_si256(av, bv[j]);
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
          const __m256i hi =
              _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
          bytes[i][j] = _mm256_add_epi8(bytes[i][j], _mm256_add_epi8(lo, hi));
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j)
        acc[i][j] =
            _mm256_add_epi64(acc[i][j], _mm256_sad_epu8(bytes[i][j], _mm256_setzero_si256()));
    w0 = w1;
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      alignas(32) std::uint64_t lanes[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i][j]);
      P[i * NR + j] = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    }
}

inline constexpr popcount_microkernel bitserial_avx2_2x2{2, 2, &bitserial_tile_avx2<2, 2>,
                                                         "bitserial_gemm_avx2_2x2"};
#endif

}  // namespace mixq::kernels::detail
