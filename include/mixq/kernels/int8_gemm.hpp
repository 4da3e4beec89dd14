// The int8 path: C = A * W^T on bytes (A unsigned, W signed), exact int32, on AVX-512 VNNI
// (vpdpbusd zmm, 64 MACs per instruction), AVX-VNNI (VEX vpdpbusd ymm, 32) or a portable loop.
// W is laid out once (`packed_int8_weights`) and reused across calls; int8_gemm on bit-plane
// operands unpacks the codes to bytes (offsetting signed activations and 8-bit unsigned weights
// into u8 x s8 range) and corrects the offsets with row sums. It wins over bit-serial popcount
// for bit pairs with w * a above about 4.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
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

/// Each row of a bit-plane operand as bytes (K padded to kpad with zero bytes), each code c
/// mapped through `map` (the value, shifted into the u8 or s8 range). The plain version: the
/// reference of unpack_codes_avx512 and the path where AVX-512 BW is missing.
inline aligned_vector<std::uint8_t> unpack_codes_portable(const bitplane_view& v,
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

/// Whether map[c] = map[0] + sum over set bits p of c of (map[2^p] - map[0]), modulo 256: true
/// for every map the int8 path uses (a value is affine in its plane bits), so each plane adds a
/// constant byte where its bit is set.
inline bool map_is_plane_affine(bitwidth t, const std::array<std::uint8_t, 256>& map) {
  for (unsigned c = 0; c < (1u << t.bits); ++c) {
    unsigned sum = map[0];
    for (int p = 0; p < t.bits; ++p)
      if ((c >> p) & 1u) sum += unsigned(map[1u << p]) - map[0];
    if (std::uint8_t(sum) != map[c]) return false;
  }
  return true;
}

#if defined(__x86_64__)
/// unpack_codes with AVX-512 BW: per 64 values, each plane's word is a byte mask selecting its
/// constant (one masked move and one byte add), 2 instructions per plane instead of a table
/// lookup per byte. map must be plane-affine (map_is_plane_affine).
__attribute__((target("avx512f,avx512bw"))) inline aligned_vector<std::uint8_t> unpack_codes_avx512(
    const bitplane_view& v, const std::array<std::uint8_t, 256>& map, std::size_t kpad) {
  const std::size_t K = v.cols, bits = v.type.bits;
  aligned_vector<std::uint8_t> out(v.rows * kpad, 0);
  const __m512i base = _mm512_set1_epi8(static_cast<char>(map[0]));
  __m512i add[8];
  for (std::size_t p = 0; p < bits; ++p)
    add[p] = _mm512_set1_epi8(static_cast<char>(map[1u << p] - map[0]));
  for (std::size_t r = 0; r < v.rows; ++r) {
    std::uint8_t* dst = out.data() + r * kpad;
    for (std::size_t k0 = 0; k0 < K; k0 += 64) {
      __m512i acc = base;
      for (std::size_t p = 0; p < bits; ++p) {
        const __mmask64 set = _cvtu64_mask64(v.plane_row(r * bits + p)[k0 / 64]);
        acc = _mm512_add_epi8(acc, _mm512_maskz_mov_epi8(set, add[p]));
      }
      // Only K's bytes: the padding up to kpad stays zero.
      const std::size_t n = std::min<std::size_t>(64, K - k0);
      _mm512_mask_storeu_epi8(dst + k0, n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1, acc);
    }
  }
  return out;
}
#endif

/// unpack_codes on `path`: the AVX-512 BW form on the AVX-512 path, the plain one otherwise.
inline aligned_vector<std::uint8_t> unpack_codes(const bitplane_view& v,
                                                 const std::array<std::uint8_t, 256>& map,
                                                 std::size_t kpad, isa path) {
#if defined(__x86_64__)
  if (path == isa::avx512_vpopcntdq && isa_supported(path) && map_is_plane_affine(v.type, map))
    return unpack_codes_avx512(v, map, kpad);
#endif
  (void)path;
  return unpack_codes_portable(v, map, kpad);
}

inline int code_value(bitwidth t, unsigned c) {
  if (t.is_binary()) return c ? 1 : -1;
  if (t.is_signed && c >= (1u << (t.bits - 1))) return int(c) - (1 << t.bits);
  return int(c);
}

}  // namespace detail

/// W (N x K signed bytes) laid out once for the int8 kernels and reused across calls: blocks of
/// 16 rows, each a run of ceil(K / 4) groups of 64 bytes (rows 0..15 x 4 consecutive bytes of
/// K: one zmm for AVX-512 VNNI, two ymm for AVX-VNNI), zero-padded to whole groups and blocks.
/// Also keeps what int8_gemm on bit planes needs: the weights' type, the shift that brought
/// them into s8 range (stored byte = value - shift) and each row's sum of values.
class packed_int8_weights {
 public:
  packed_int8_weights() = default;

  /// Signed bytes: W[n * ldw + k] (shape_error for ldw < K). Type int8, shift 0.
  static packed_int8_weights pack(std::size_t N, std::size_t K, const std::int8_t* W,
                                  std::size_t ldw) {
    if (ldw < K)
      throw shape_error(
          mixq::detail::cat("packed_int8_weights::pack: ldw = ", ldw, ", expected ldw >= K = ", K));
    packed_int8_weights p(N, K, bitwidth{8, true}, 0);
    for (std::size_t n = 0; n < N; ++n) p.set_row(n, W + n * ldw);
    return p;
  }

  /// The codes of a bit-plane operand (any qtype), values shifted into s8 range (8-bit
  /// unsigned weights by -128). bits_error / shape_error as bitserial_gemm's operand checks.
  static packed_int8_weights pack(const bitplane_view& W) {
    detail::check_view(W, "W");
    const std::int64_t shift = (!W.type.is_signed && W.type.bits == 8) ? 128 : 0;
    std::array<std::uint8_t, 256> map{};
    for (unsigned c = 0; c < (1u << W.type.bits); ++c)
      map[c] = static_cast<std::uint8_t>(detail::code_value(W.type, c) - shift);
    const std::size_t kpad = (W.cols + 3) / 4 * 4;
    const auto bytes = detail::unpack_codes(W, map, kpad, active_isa());
    packed_int8_weights p(W.rows, W.cols, W.type, shift);
    for (std::size_t n = 0; n < W.rows; ++n)
      p.set_row(n, reinterpret_cast<const std::int8_t*>(bytes.data() + n * kpad));
    return p;
  }

  std::size_t rows() const noexcept { return rows_; }
  std::size_t cols() const noexcept { return cols_; }
  /// Groups of 4 bytes of K per row (K padded up to a multiple of 4).
  std::size_t groups() const noexcept { return groups_; }
  std::size_t blocks() const noexcept { return (rows_ + 15) / 16; }
  /// Block b: groups() x 64 bytes.
  const std::int8_t* block(std::size_t b) const noexcept { return data_.data() + b * groups_ * 64; }
  /// Byte k of row n (the stored, shifted value).
  std::int8_t at(std::size_t n, std::size_t k) const noexcept {
    return block(n / 16)[(k / 4) * 64 + (n % 16) * 4 + k % 4];
  }
  bitwidth type() const noexcept { return type_; }
  std::int64_t shift() const noexcept { return shift_; }
  /// Sum over k of row n's values (value = stored byte + shift).
  std::int64_t row_sum(std::size_t n) const noexcept { return sums_[n]; }

 private:
  packed_int8_weights(std::size_t N, std::size_t K, bitwidth t, std::int64_t shift)
      : rows_(N),
        cols_(K),
        groups_((K + 3) / 4),
        type_(t),
        shift_(shift),
        data_((N + 15) / 16 * groups_ * 64, 0),
        sums_(N, 0) {}
  void set_row(std::size_t n, const std::int8_t* src) {
    std::int8_t* dst = data_.data() + (n / 16) * groups_ * 64 + (n % 16) * 4;
    const std::size_t full = cols_ / 4;
    for (std::size_t g = 0; g < full; ++g) __builtin_memcpy(dst + g * 64, src + g * 4, 4);
    for (std::size_t k = full * 4; k < cols_; ++k) dst[full * 64 + k % 4] = src[k];
    std::int64_t s = 0;
    for (std::size_t k = 0; k < cols_; ++k) s += src[k];
    sums_[n] = s + shift_ * static_cast<std::int64_t>(cols_);
  }

  std::size_t rows_ = 0, cols_ = 0, groups_ = 0;
  bitwidth type_{8, true};
  std::int64_t shift_ = 0;
  aligned_vector<std::int8_t> data_;
  std::vector<std::int64_t> sums_;
};

namespace detail {

/// A's rows with K padded to whole groups of 4 bytes when needed (the kernels read 4 bytes).
struct padded_rows {
  const std::uint8_t* data;
  std::size_t ld;
  std::vector<std::uint8_t> copy;
  padded_rows(const std::uint8_t* A, std::size_t lda, std::size_t M, std::size_t K,
              std::size_t groups)
      : data(A), ld(lda) {
    if (groups * 4 == K) return;
    copy.assign(M * groups * 4, 0);
    for (std::size_t m = 0; m < M; ++m)
      std::copy(A + m * lda, A + m * lda + K, &copy[m * groups * 4]);
    data = copy.data();
    ld = groups * 4;
  }
};

inline void gemm_u8s8s32_portable(std::size_t M, const std::uint8_t* A, std::size_t lda,
                                  const packed_int8_weights& W, std::int32_t* C, std::size_t ldc,
                                  std::size_t threads) {
  const std::size_t N = W.rows(), K = W.cols();
  default_thread_pool().parallel_for(
      M,
      [&](std::size_t m0, std::size_t m1) {
        for (std::size_t m = m0; m < m1; ++m)
          for (std::size_t n = 0; n < N; ++n) {
            std::uint32_t s = 0;
            for (std::size_t k = 0; k < K; ++k)
              s += static_cast<std::uint32_t>(std::int32_t(A[m * lda + k]) *
                                              std::int32_t(W.at(n, k)));
            C[m * ldc + n] = static_cast<std::int32_t>(s);
          }
      },
      threads);
}

/// The blocked driver shared by the VNNI paths: rows of A in MR-row panels against 16-row W
/// blocks, K in blocks of up to 1024 groups (4 KiB: 24 KiB of A per 6-row panel in L1), W
/// blocks sized for about 768 KiB of L2. At 4096^3 these took a call from 202 to 191 ms against
/// 2 KiB / 512 KiB (medians of 5, alternating in one process; C is then written in one pass);
/// at 1024^3 the settings were within 1%.
/// tile(ap, w, groups, mr, crow, block, first) computes one MR x 16*NB tile.
template <int MR, int NB, class Tile>
inline void vnni_driver(std::size_t M, const std::uint8_t* A, std::size_t lda,
                        const packed_int8_weights& W, std::int32_t* C, std::size_t ldc,
                        std::size_t threads, Tile tile) {
  const std::size_t groups = W.groups(), nblocks = W.blocks();
  const std::size_t gc = std::min<std::size_t>(groups, 1024);
  const std::size_t bb = std::max<std::size_t>(NB, (768 * 1024 / (gc * 64)) / NB * NB);
  auto work = [&](std::size_t m0, std::size_t m1) {
    const std::uint8_t* ap[MR];
    std::int32_t* crow[MR];
    for (std::size_t g0 = 0; g0 < groups; g0 += gc) {
      const std::size_t gn = std::min(gc, groups - g0);
      for (std::size_t b0 = 0; b0 < nblocks; b0 += bb) {
        const std::size_t b1 = std::min(nblocks, b0 + bb);
        for (std::size_t m = m0; m < m1; m += MR) {
          const int mr = static_cast<int>(std::min<std::size_t>(MR, m1 - m));
          for (int i = 0; i < MR; ++i) {
            const std::size_t mi = m + std::min(i, mr - 1);
            ap[i] = A + mi * lda + g0 * 4;
            crow[i] = C + mi * ldc;
          }
          for (std::size_t b = b0; b < b1; b += NB)
            tile(ap, W.block(b) + g0 * 64, gn, mr, crow, b, std::min<std::size_t>(NB, b1 - b),
                 g0 == 0);
        }
      }
    }
  };
  default_thread_pool().parallel_for(M, work, threads);
}

#if defined(__x86_64__)
#define MIXQ_HAS_AVX512_VNNI_GEMM 1
#define MIXQ_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define MIXQ_AVX_VNNI_TARGET __attribute__((target("avx2,fma,avxvnni")))

/// One AVX-512 tile: MR rows of A (4 bytes broadcast per step) x NV 16-row W blocks.
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

MIXQ_VNNI_TARGET inline void gemm_u8s8s32_vnni(std::size_t M, const std::uint8_t* A,
                                               std::size_t lda, const packed_int8_weights& W,
                                               std::int32_t* C, std::size_t ldc,
                                               std::size_t threads) {
  constexpr int MR = 6, NV = 4;
  const std::size_t N = W.rows(), wstride = W.groups() * 64;
  vnni_driver<MR, NV>(
      M, A, lda, W, C, ldc, threads,
      [&](const std::uint8_t* const* ap, const std::int8_t* wp, std::size_t gn, int mr,
          std::int32_t* const* crow, std::size_t b, std::size_t nb, bool first) {
        if (nb == NV)
          vnni_tile<MR, NV>(ap, wp, wstride, gn, mr, NV, crow, b * 16, N, first);
        else
          for (std::size_t j = 0; j < nb; ++j)
            vnni_tile<MR, 1>(ap, wp + j * wstride, wstride, gn, mr, 1, crow, (b + j) * 16, N,
                             first);
      });
}

/// One AVX-VNNI tile: 6 rows of A x one 16-row W block as two ymm halves (rows 0..7 and 8..15
/// of each 64-byte group): 12 accumulators + 2 W + 1 broadcast = 15 of the 16 VEX registers.
/// Named accumulators, not an array: g++ 12 keeps an array of asm operands in memory.
MIXQ_AVX_VNNI_TARGET __attribute__((noinline)) void avx_vnni_tile_6x16(
    const std::uint8_t* const* a, const std::int8_t* w, std::size_t groups, int mr,
    std::int32_t* const* crow, std::size_t n0, std::size_t N, bool store) {
  __m256i c0l = _mm256_setzero_si256(), c0h = c0l, c1l = c0l, c1h = c0l, c2l = c0l, c2h = c0l,
          c3l = c0l, c3h = c0l, c4l = c0l, c4h = c0l, c5l = c0l, c5h = c0l;
  const std::uint8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  for (std::size_t g = 0; g < groups; ++g) {
    __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + g * 64));
    __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + g * 64 + 32));
    asm volatile("" : "+x"(lo), "+x"(hi));
    // VEX encoding ({vex}): the AVX-VNNI form, on ymm0..15 ("x").
#define MIXQ_AVX_VNNI_ROW(ar, cl, ch)                                 \
  {                                                                   \
    std::int32_t four;                                                \
    __builtin_memcpy(&four, ar + g * 4, 4);                           \
    const __m256i av = _mm256_set1_epi32(four);                       \
    asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(cl) : "x"(av), "x"(lo)); \
    asm("%{vex%} vpdpbusd %2, %1, %0" : "+x"(ch) : "x"(av), "x"(hi)); \
  }
    MIXQ_AVX_VNNI_ROW(a0, c0l, c0h)
    MIXQ_AVX_VNNI_ROW(a1, c1l, c1h)
    MIXQ_AVX_VNNI_ROW(a2, c2l, c2h)
    MIXQ_AVX_VNNI_ROW(a3, c3l, c3h)
    MIXQ_AVX_VNNI_ROW(a4, c4l, c4h)
    MIXQ_AVX_VNNI_ROW(a5, c5l, c5h)
#undef MIXQ_AVX_VNNI_ROW
  }
  const __m256i acc[6][2] = {{c0l, c0h}, {c1l, c1h}, {c2l, c2h},
                             {c3l, c3h}, {c4l, c4h}, {c5l, c5h}};
  for (int i = 0; i < mr; ++i)
    for (int h = 0; h < 2; ++h) {
      const std::size_t n = n0 + 8 * h;
      if (n >= N) break;
      std::int32_t* c = crow[i] + n;
      alignas(32) std::uint32_t part[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(part), acc[i][h]);
      const std::size_t valid = std::min<std::size_t>(8, N - n);
      for (std::size_t l = 0; l < valid; ++l)
        c[l] =
            static_cast<std::int32_t>(store ? part[l] : static_cast<std::uint32_t>(c[l]) + part[l]);
    }
}

MIXQ_AVX_VNNI_TARGET inline void gemm_u8s8s32_avx_vnni(std::size_t M, const std::uint8_t* A,
                                                       std::size_t lda,
                                                       const packed_int8_weights& W,
                                                       std::int32_t* C, std::size_t ldc,
                                                       std::size_t threads) {
  const std::size_t N = W.rows();
  vnni_driver<6, 1>(M, A, lda, W, C, ldc, threads,
                    [&](const std::uint8_t* const* ap, const std::int8_t* wp, std::size_t gn,
                        int mr, std::int32_t* const* crow, std::size_t b, std::size_t, bool first) {
                      avx_vnni_tile_6x16(ap, wp, gn, mr, crow, b * 16, N, first);
                    });
}
#endif

/// The int8 kernel a call takes: "avx512_vnni", "avx_vnni" or "portable".
inline const char* int8_kernel_name(isa path) {
#if defined(MIXQ_HAS_AVX512_VNNI_GEMM)
  if (path == isa::avx512_vpopcntdq && has_avx512_vnni()) return "avx512_vnni";
  if (path >= isa::avx2 && has_avx_vnni()) return "avx_vnni";
#endif
  (void)path;
  return "portable";
}

inline isa requested_path(const gemm_options& options) {
  if (options.path) {
    check_isa(*options.path);
    return *options.path;
  }
  return active_isa();
}

}  // namespace detail

/// The int8 kernel a call with these options takes (for benchmarks and tests).
inline const char* int8_gemm_kernel_name(const gemm_options& options = {}) {
  return detail::int8_kernel_name(detail::requested_path(options));
}

/// C[m * ldc + n] = sum_k A[m * lda + k] * W(n, k) (u8 x s8 -> exact int32, modulo 2^32) with W
/// packed once. Path: AVX-512 VNNI when the path is avx512_vpopcntdq (or unset on such a CPU)
/// and the CPU has it; AVX-VNNI for avx2 or above when the CPU has it; else portable.
/// shape_error for lda < K or ldc < N.
inline void gemm_u8s8s32(std::size_t M, const std::uint8_t* A, std::size_t lda,
                         const packed_int8_weights& W, std::int32_t* C, std::size_t ldc,
                         const gemm_options& options = {}) {
  const std::size_t N = W.rows(), K = W.cols();
  if (lda < K || ldc < N)
    throw shape_error(mixq::detail::cat("gemm_u8s8s32: lda=", lda, " ldc=", ldc,
                                        ": expected lda >= K = ", K, " and ldc >= N = ", N));
  const isa path = detail::requested_path(options);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (std::size_t m = 0; m < M; ++m) std::fill(C + m * ldc, C + m * ldc + N, 0);
    return;
  }
#if defined(MIXQ_HAS_AVX512_VNNI_GEMM)
  const std::string_view kernel = detail::int8_kernel_name(path);
  if (kernel != "portable") {
    const detail::padded_rows a(A, lda, M, K, W.groups());
    if (kernel == "avx512_vnni")
      detail::gemm_u8s8s32_vnni(M, a.data, a.ld, W, C, ldc, options.num_threads);
    else
      detail::gemm_u8s8s32_avx_vnni(M, a.data, a.ld, W, C, ldc, options.num_threads);
    return;
  }
#endif
  (void)path;
  detail::gemm_u8s8s32_portable(M, A, lda, W, C, ldc, options.num_threads);
}

/// The same with W as plain rows W[n * ldw + k]: packs W for this call (pack once with
/// packed_int8_weights::pack to reuse it). shape_error for lda, ldw < K or ldc < N.
inline void gemm_u8s8s32(std::size_t M, std::size_t N, std::size_t K, const std::uint8_t* A,
                         std::size_t lda, const std::int8_t* W, std::size_t ldw, std::int32_t* C,
                         std::size_t ldc, const gemm_options& options = {}) {
  if (lda < K || ldw < K || ldc < N)
    throw shape_error(mixq::detail::cat("gemm_u8s8s32: lda=", lda, " ldw=", ldw, " ldc=", ldc,
                                        ": expected lda, ldw >= K = ", K, " and ldc >= N = ", N));
  gemm_u8s8s32(M, A, lda, packed_int8_weights::pack(N, K, W, ldw), C, ldc, options);
}

/// The int8 path on bit-plane activations and weights packed once: same contract as
/// bitserial_gemm (exact int32). Activations are shifted by +128 when signed so they fit
/// vpdpbusd's u8; with a' = a + pa and w' = w - pw:
/// sum a w = sum a' w' - pa sum w + pw sum a + K pa pw.
/// shape_error for a K mismatch or C.size() != M * N; bits_error / value_error as bitserial_gemm.
inline void int8_gemm(const bitplane_view& A, const packed_int8_weights& W,
                      std::span<std::int32_t> C, const gemm_options& options = {}) {
  detail::check_view(A, "A");
  if (A.cols != W.cols())
    throw shape_error(mixq::detail::cat("int8_gemm: A is ", A.rows, " x ", A.cols, " but W is ",
                                        W.rows(), " x ", W.cols(), ": expected the same K"));
  if (C.size() != A.rows * W.rows())
    throw shape_error(mixq::detail::cat("int8_gemm: C has ", C.size(),
                                        " elements, expected M * N = ", A.rows, " * ", W.rows(),
                                        " = ", A.rows * W.rows()));
  if (options.path) detail::check_isa(*options.path);
  const std::size_t M = A.rows, N = W.rows(), K = A.cols, kpad = W.groups() * 4;
  if (M == 0 || N == 0) return;
  const std::int64_t pa = A.type.is_signed ? 128 : 0, pw = W.shift();
  std::array<std::uint8_t, 256> amap{};
  for (unsigned c = 0; c < (1u << A.type.bits); ++c)
    amap[c] = static_cast<std::uint8_t>(detail::code_value(A.type, c) + pa);
  const auto a8 = detail::unpack_codes(A, amap, kpad, detail::requested_path(options));
  gemm_u8s8s32(M, a8.data(), kpad, W, C.data(), N, options);
  if (pa == 0 && pw == 0) return;
  std::vector<std::uint32_t> row(M, 0), col(N, 0);
  const std::int64_t kk = static_cast<std::int64_t>(K) * pa * pw;
  for (std::size_t m = 0; m < M; ++m) {
    std::int64_t s = 0;  // sum of a (true values)
    for (std::size_t k = 0; k < K; ++k) s += std::int64_t(a8[m * kpad + k]) - pa;
    row[m] = static_cast<std::uint32_t>(pw * s + kk);
  }
  for (std::size_t n = 0; n < N; ++n) col[n] = static_cast<std::uint32_t>(-pa * W.row_sum(n));
  for (std::size_t m = 0; m < M; ++m) {
    auto* c = reinterpret_cast<std::uint32_t*>(C.data() + m * N);
    for (std::size_t n = 0; n < N; ++n) c[n] += row[m] + col[n];
  }
}

/// The int8 path on two bit-plane operands (W packed for this call): same contract as
/// bitserial_gemm (exact int32, shape_error / bits_error / value_error alike).
inline void int8_gemm(const bitplane_view& A, const bitplane_view& W, std::span<std::int32_t> C,
                      const gemm_options& options = {}) {
  detail::check_gemm_shapes(A, W, C.size(), "int8_gemm");
  if (options.path) detail::check_isa(*options.path);
  if (A.rows == 0 || W.rows == 0) return;
  int8_gemm(A, packed_int8_weights::pack(W), C, options);
}

}  // namespace mixq::kernels
