// The int8 path: C = A * W^T on bytes (A unsigned, W signed), exact int32, on AVX-512 VNNI
// (vpdpbusd, 64 MACs per instruction) or a portable loop; and int8_gemm on bit-plane operands,
// which unpacks the codes to bytes (offsetting signed activations and 8-bit unsigned weights
// into u8 x s8 range) and corrects the offsets with row sums. It wins over bit-serial popcount
// for bit pairs with w * a above about 4.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {

namespace detail {

inline void gemm_u8s8s32_portable(std::size_t M, std::size_t N, std::size_t K,
                                  const std::uint8_t* A, std::size_t lda, const std::int8_t* W,
                                  std::size_t ldw, std::int32_t* C, std::size_t ldc,
                                  std::size_t threads) {
  default_thread_pool().parallel_for(
      M,
      [&](std::size_t m0, std::size_t m1) {
        for (std::size_t m = m0; m < m1; ++m)
          for (std::size_t n = 0; n < N; ++n) {
            std::int32_t s = 0;
            for (std::size_t k = 0; k < K; ++k)
              s += std::int32_t(A[m * lda + k]) * std::int32_t(W[n * ldw + k]);
            C[m * ldc + n] = s;
          }
      },
      threads);
}

#if defined(__x86_64__)
#define MIXQ_HAS_AVX512_VNNI_GEMM 1
#define MIXQ_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/// One tile: MR rows of A (4 bytes broadcast per step) x NV vectors of 16 interleaved W rows.
/// The instruction is written in asm: g++ 12 spills an array of _mm512_dpbusd_epi32 results.
template <int MR, int NV>
MIXQ_VNNI_TARGET inline void vnni_tile(const std::uint8_t* const* a, const std::int8_t* w,
                                       std::size_t wstride, std::size_t groups, int mr, int nv,
                                       std::int32_t* const* crow, std::size_t n0, std::size_t N,
                                       bool store) {
  __m512i acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::size_t g = 0; g < groups; ++g) {
    __m512i bv[NV];
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) {
      bv[j] = _mm512_load_si512(w + j * wstride + g * 64);
      asm volatile("" : "+v"(bv[j]));
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      std::int32_t four;
      __builtin_memcpy(&four, a[i] + g * 4, 4);
      const __m512i av = _mm512_set1_epi32(four);
#pragma GCC unroll 32
      for (int j = 0; j < NV; ++j)
        asm("vpdpbusd %2, %1, %0" : "+v"(acc[i][j]) : "v"(av), "v"(bv[j]));
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) {
      if (j >= nv) break;
      const std::size_t n = n0 + 16 * j;
      const __mmask16 lanes =
          N - n >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (N - n)) - 1u);
      std::int32_t* c = crow[i] + n;
      __m512i v = acc[i][j];
      if (!store) v = _mm512_add_epi32(v, _mm512_maskz_loadu_epi32(lanes, c));
      _mm512_mask_storeu_epi32(c, lanes, v);
    }
  }
}

MIXQ_VNNI_TARGET inline void gemm_u8s8s32_vnni(std::size_t M, std::size_t N, std::size_t K,
                                               const std::uint8_t* A, std::size_t lda,
                                               const std::int8_t* W, std::size_t ldw,
                                               std::int32_t* C, std::size_t ldc,
                                               std::size_t threads) {
  constexpr int MR = 6, NV = 4;
  const std::size_t groups = (K + 3) / 4, kpad = groups * 4, nblocks = (N + 15) / 16;
  // W interleaved: block b of 16 rows, group g: 16 rows x 4 bytes (one zmm), zero-padded.
  aligned_vector<std::int8_t> wi(nblocks * groups * 64, 0);
  for (std::size_t n = 0; n < N; ++n) {
    std::int8_t* dst = wi.data() + (n / 16) * groups * 64 + (n % 16) * 4;
    const std::int8_t* src = W + n * ldw;
    const std::size_t full = K / 4;
    for (std::size_t g = 0; g < full; ++g) __builtin_memcpy(dst + g * 64, src + g * 4, 4);
    for (std::size_t k = full * 4; k < K; ++k) dst[full * 64 + k % 4] = src[k];
  }
  // A rows padded to whole groups when K is not a multiple of 4 (the tile reads 4 bytes).
  std::vector<std::uint8_t> apad;
  if (kpad != K) {
    apad.assign(M * kpad, 0);
    for (std::size_t m = 0; m < M; ++m) std::copy(A + m * lda, A + m * lda + K, &apad[m * kpad]);
    A = apad.data();
    lda = kpad;
  }
  const std::size_t wstride = groups * 64;
  const std::size_t gc = std::min<std::size_t>(groups, 512);  // 2 KiB of K per block
  const std::size_t vb = std::max<std::size_t>(NV, (512 * 1024 / (gc * 64)) / NV * NV);
  auto work = [&](std::size_t m0, std::size_t m1) {
    const std::uint8_t* ap[MR];
    std::int32_t* crow[MR];
    for (std::size_t g0 = 0; g0 < groups; g0 += gc) {
      const std::size_t gn = std::min(gc, groups - g0);
      for (std::size_t b0 = 0; b0 < nblocks; b0 += vb) {
        const std::size_t b1 = std::min(nblocks, b0 + vb);
        for (std::size_t m = m0; m < m1; m += MR) {
          const int mr = static_cast<int>(std::min<std::size_t>(MR, m1 - m));
          for (int i = 0; i < MR; ++i) {
            const std::size_t mi = m + std::min(i, mr - 1);
            ap[i] = A + mi * lda + g0 * 4;
            crow[i] = C + mi * ldc;
          }
          for (std::size_t b = b0; b < b1; b += NV) {
            const int nv = static_cast<int>(std::min<std::size_t>(NV, b1 - b));
            const std::int8_t* wp = wi.data() + b * wstride + g0 * 64;
            if (nv == NV)
              vnni_tile<MR, NV>(ap, wp, wstride, gn, mr, nv, crow, b * 16, N, g0 == 0);
            else
              for (int j = 0; j < nv; ++j)
                vnni_tile<MR, 1>(ap, wp + j * wstride, wstride, gn, mr, 1, crow, (b + j) * 16, N,
                                 g0 == 0);
          }
        }
      }
    }
  };
  default_thread_pool().parallel_for(M, work, threads);
}
#endif

}  // namespace detail

/// C[m * ldc + n] = sum_k A[m * lda + k] * W[n * ldw + k] (u8 x s8 -> exact int32, modulo 2^32),
/// the VNNI path when the CPU has it (options.path avx512_vpopcntdq or unset) else portable.
/// shape_error for leading dimensions below K (lda, ldw) or N (ldc).
inline void gemm_u8s8s32(std::size_t M, std::size_t N, std::size_t K, const std::uint8_t* A,
                         std::size_t lda, const std::int8_t* W, std::size_t ldw, std::int32_t* C,
                         std::size_t ldc, const gemm_options& options = {}) {
  if (lda < K || ldw < K || ldc < N)
    throw shape_error(mixq::detail::cat("gemm_u8s8s32: lda=", lda, " ldw=", ldw, " ldc=", ldc,
                                        ": expected lda, ldw >= K = ", K, " and ldc >= N = ", N));
  isa path = active_isa();
  if (options.path) {
    detail::check_isa(*options.path);
    path = *options.path;
  }
  if (M == 0 || N == 0) return;
#if defined(MIXQ_HAS_AVX512_VNNI_GEMM)
  if (path == isa::avx512_vpopcntdq && has_avx512_vnni()) {
    if (K == 0) {
      for (std::size_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0);
      return;
    }
    detail::gemm_u8s8s32_vnni(M, N, K, A, lda, W, ldw, C, ldc, options.num_threads);
    return;
  }
#endif
  detail::gemm_u8s8s32_portable(M, N, K, A, lda, W, ldw, C, ldc, options.num_threads);
}

namespace detail {

/// Each row of a bit-plane operand as bytes (K padded to kpad with zero bytes), each code c
/// mapped through `map` (the value, shifted into the u8 or s8 range).
inline aligned_vector<std::uint8_t> unpack_codes(const bitplane_view& v,
                                                 const std::array<std::uint8_t, 256>& map,
                                                 std::size_t kpad) {
  // spread[b]: the 8 bits of b as the low bits of 8 bytes.
  static const auto spread = [] {
    std::array<std::uint64_t, 256> s{};
    for (unsigned b = 0; b < 256; ++b)
      for (int i = 0; i < 8; ++i) s[b] |= std::uint64_t((b >> i) & 1u) << (8 * i);
    return s;
  }();
  const std::size_t K = v.cols, bits = v.type.bits, bytes = (K + 7) / 8;
  aligned_vector<std::uint8_t> out(v.rows * kpad, 0);
  std::vector<std::uint64_t> codes(bytes);
  for (std::size_t r = 0; r < v.rows; ++r) {
    std::fill(codes.begin(), codes.end(), 0);
    for (std::size_t p = 0; p < bits; ++p) {
      const auto* plane = reinterpret_cast<const std::uint8_t*>(v.plane_row(r * bits + p));
      for (std::size_t b = 0; b < bytes; ++b) codes[b] |= spread[plane[b]] << p;
    }
    // Byte i of codes[b] is element 8 b + i (little-endian x86-64).
    std::uint8_t* dst = out.data() + r * kpad;
    if (K != 0) __builtin_memcpy(dst, codes.data(), K);
    for (std::size_t k = 0; k < K; ++k) dst[k] = map[dst[k]];
  }
  return out;
}

inline int code_value(bitwidth t, unsigned c) {
  if (t.is_binary()) return c ? 1 : -1;
  if (t.is_signed && c >= (1u << (t.bits - 1))) return int(c) - (1 << t.bits);
  return int(c);
}

}  // namespace detail

/// The int8 path on bit-plane operands: same contract as bitserial_gemm (exact int32,
/// shape_error / bits_error / value_error alike). Activations are shifted by +128 when signed
/// and 8-bit unsigned weights by -128, so they fit vpdpbusd's u8 x s8; with a' = a + pa and
/// w' = w - pw: sum a w = sum a' w' - pa sum w + pw sum a + K pa pw.
inline void int8_gemm(const bitplane_view& A, const bitplane_view& W, std::span<std::int32_t> C,
                      const gemm_options& options = {}) {
  detail::check_gemm_shapes(A, W, C.size(), "int8_gemm");
  if (options.path) detail::check_isa(*options.path);
  const std::size_t M = A.rows, N = W.rows, K = A.cols, kpad = (K + 3) / 4 * 4;
  if (M == 0 || N == 0) return;
  const std::int64_t pa = A.type.is_signed ? 128 : 0;
  const std::int64_t pw = (!W.type.is_signed && W.type.bits == 8) ? 128 : 0;
  std::array<std::uint8_t, 256> amap{}, wmap{};
  for (unsigned c = 0; c < (1u << A.type.bits); ++c)
    amap[c] = static_cast<std::uint8_t>(detail::code_value(A.type, c) + pa);
  for (unsigned c = 0; c < (1u << W.type.bits); ++c)
    wmap[c] = static_cast<std::uint8_t>(detail::code_value(W.type, c) - pw);
  const auto a8 = detail::unpack_codes(A, amap, kpad);
  const auto w8 = detail::unpack_codes(W, wmap, kpad);
  gemm_u8s8s32(M, N, kpad, a8.data(), kpad, reinterpret_cast<const std::int8_t*>(w8.data()), kpad,
               C.data(), N, options);
  if (pa == 0 && pw == 0) return;
  std::vector<std::uint32_t> row(M, 0), col(N, 0);
  const std::int64_t kk = static_cast<std::int64_t>(K) * pa * pw;
  for (std::size_t m = 0; m < M; ++m) {
    std::int64_t s = 0;  // sum of a (true values)
    for (std::size_t k = 0; k < K; ++k) s += std::int64_t(a8[m * kpad + k]) - pa;
    row[m] = static_cast<std::uint32_t>(pw * s + kk);
  }
  for (std::size_t n = 0; n < N; ++n) {
    std::int64_t s = 0;  // sum of w (true values)
    for (std::size_t k = 0; k < K; ++k)
      s += std::int64_t(static_cast<std::int8_t>(w8[n * kpad + k])) + pw;
    col[n] = static_cast<std::uint32_t>(-pa * s);
  }
  for (std::size_t m = 0; m < M; ++m) {
    auto* c = reinterpret_cast<std::uint32_t*>(C.data() + m * N);
    for (std::size_t n = 0; n < N; ++n) c[n] += row[m] + col[n];
  }
}

}  // namespace mixq::kernels
