// The AVX-512 VPOPCNTDQ bit-serial micro-kernel: a 6 x 4 tile of plane rows, 24 zmm
// accumulators of 64-bit counts, 512 bits of K per step (AND, VPOPCNTQ, VPADDQ), reduced once
// per K block. Compiled through a target attribute, so consumers need no -march flag.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/kernels/bitserial_gemm/common.hpp"

namespace mixq::kernels::detail {

#if defined(__x86_64__)
#define MIXQ_HAS_AVX512_BITSERIAL 1

/// Sum of the 8 lanes (through memory: g++ 12's lane-extracting intrinsics read an
/// "undefined" register and trip -Wuninitialized).
__attribute__((target("avx512f"))) inline std::uint64_t reduce_add_u64_avx512(__m512i x) {
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(lanes, x);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

template <int MR, int NR>
__attribute__((target("avx512f,avx512bw,avx512vpopcntdq"))) void bitserial_tile_avx512_vpopcntdq(
    const std::uint64_t* const* a, const std::uint64_t* const* b, std::size_t nwords,
    std::uint64_t* P) {
  __m512i acc[MR][NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const std::uint64_t* ap[MR];
  const std::uint64_t* bp[NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) ap[i] = a[i];
#pragma GCC unroll 32
  for (int j = 0; j < NR; ++j) bp[j] = b[j];
  for (std::size_t w = 0; w < nwords; w += 8) {
    __m512i bv[NR];
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) {
      bv[j] = _mm512_load_si512(bp[j] + w);
      // Keeps the operand in a register: g++ 12 would fold the load into every vpandq.
      asm volatile("" : "+v"(bv[j]));
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      __m512i av = _mm512_load_si512(ap[i] + w);
      asm volatile("" : "+v"(av));
#pragma GCC unroll 32
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_and_si512(av, bv[j])));
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) P[i * NR + j] = reduce_add_u64_avx512(acc[i][j]);
}

inline constexpr popcount_microkernel bitserial_avx512_vpopcntdq_6x4{
    6, 4, &bitserial_tile_avx512_vpopcntdq<6, 4>, "bitserial_gemm_avx512_vpopcntdq_6x4"};
#endif

}  // namespace mixq::kernels::detail
