// The portable bit-serial micro-kernel: std::popcount on 64-bit words, a 4 x 4 tile of
// plane rows. Runs anywhere; the fallback when the CPU has neither AVX2 nor AVX-512.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "mixq/kernels/bitserial_gemm/common.hpp"

namespace mixq::kernels::detail {

template <int MR, int NR>
void bitserial_tile_portable(const std::uint64_t* const* a, const std::uint64_t* const* b,
                             std::size_t nwords, std::uint64_t* P) {
  std::uint64_t acc[MR][NR] = {};
  for (std::size_t w = 0; w < nwords; ++w) {
    std::uint64_t bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = b[j][w];
    for (int i = 0; i < MR; ++i) {
      const std::uint64_t av = a[i][w];
      for (int j = 0; j < NR; ++j) acc[i][j] += static_cast<unsigned>(std::popcount(av & bv[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) P[i * NR + j] = acc[i][j];
}

inline constexpr popcount_microkernel bitserial_portable_4x4{4, 4, &bitserial_tile_portable<4, 4>,
                                                             "bitserial_gemm_portable_4x4"};

}  // namespace mixq::kernels::detail
