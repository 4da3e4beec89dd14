// Fast bit-plane packing: `pack_bitplanes<Q>` turns a row-major matrix of Q values into a
// bitplane_matrix<Q> (the bit-serial GEMM's operand), checking every value, threaded over rows,
// on the AVX-512 BW, AVX2 or portable (SWAR) path. bitplane_matrix::pack is the plain reference
// it is tested against; the convolution's activation packing uses the same per-row primitive.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {
namespace detail {

/// The end of a bad-value message: "is not a value of qint<3>: expected -4..3".
template <quantized_type Q>
std::string not_a_value_of() {
  return mixq::detail::cat("is not a value of ", bitwidth_of<Q>().name(), ": expected ", Q::min,
                           "..", Q::max, Q::is_binary ? " (only -1 or +1)" : "");
}

/// Mask of the first `cnt` (0..64) bits.
inline std::uint64_t low_bits(std::size_t cnt) noexcept {
  return cnt >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << cnt) - 1;
}

/// A value that is always valid for Q, used to pad a partial 64-value chunk (its code bits are
/// masked off afterwards): 0, or +1 for binary types (which have no 0).
template <quantized_type Q>
inline constexpr typename Q::storage_type pack_filler = Q::is_binary ? 1 : 0;

/// Copies the cnt (< 64) values at src into a 64-byte buffer padded with pack_filler.
template <quantized_type Q>
const std::uint8_t* padded_chunk(const typename Q::storage_type* src, std::size_t cnt,
                                 std::uint8_t (&buf)[64]) noexcept {
  std::memset(buf, static_cast<std::uint8_t>(pack_filler<Q>), 64);
  std::memcpy(buf, src, cnt);
  return buf;
}

/// Checks n values at src and writes their Q::bits planes, `words` 64-bit words each (zero past
/// n), at dst + plane * words; on_bad(i, value) is called for the first value outside Q (it must
/// throw). The portable path: 8 values per 64-bit load, each plane's 8 bits gathered with one
/// multiply (bit 8i of x lands on bit 56 + i of x * 0x0102040810204080).
template <quantized_type Q, class OnBad>
void pack_codes_portable(const typename Q::storage_type* src, std::size_t n, std::uint64_t* dst,
                         std::size_t words, OnBad&& on_bad) {
  // Bitwise ors (no short circuit) so the compiler vectorizes the check.
  unsigned bad = 0;
  for (std::size_t c = 0; c < n; ++c) {
    const int v = src[c];
    if constexpr (Q::is_binary)
      bad |= unsigned(v != 1) & unsigned(v != -1);
    else
      bad |= unsigned(v < Q::min) | unsigned(v > Q::max);
  }
  if (bad != 0)
    for (std::size_t c = 0; c < n; ++c)
      if (!Q::contains(src[c])) on_bad(c, int(src[c]));
  constexpr std::uint64_t ones = 0x0101010101010101ull, gather = 0x0102040810204080ull;
  for (std::size_t w = 0; w < words; ++w) {
    const std::size_t c0 = w * 64, cnt = c0 < n ? std::min<std::size_t>(64, n - c0) : 0;
    std::uint64_t planes[8] = {};
    if (cnt > 0) {
      if constexpr (std::endian::native == std::endian::little) {
        std::uint8_t buf[64];
        const std::uint8_t* p = cnt == 64 ? reinterpret_cast<const std::uint8_t*>(src + c0)
                                          : padded_chunk<Q>(src + c0, cnt, buf);
        for (int g = 0; g < 8; ++g) {
          std::uint64_t x;
          std::memcpy(&x, p + 8 * g, 8);
          // Binary: +1 is 0x01, -1 is 0xFF; the code (1 for +1) is bit 0 and not bit 1.
          if constexpr (Q::is_binary) x &= ~(x >> 1);
          // Two's complement bytes: bit p of the byte is bit p of the code for p < bits.
          for (int pl = 0; pl < Q::bits; ++pl)
            planes[pl] |= ((((x >> pl) & ones) * gather) >> 56) << (8 * g);
        }
      } else {
        for (std::size_t c = 0; c < cnt; ++c) {
          const unsigned code = Q::encode(src[c0 + c]);
          for (int pl = 0; pl < Q::bits; ++pl) planes[pl] |= std::uint64_t((code >> pl) & 1u) << c;
        }
      }
    }
    const std::uint64_t live = low_bits(cnt);
    for (int pl = 0; pl < Q::bits; ++pl) dst[pl * words + w] = planes[pl] & live;
  }
}

#if defined(__x86_64__)
#define MIXQ_HAS_X86_PACKING 1
/// The same with AVX2: 32 values per register, one byte-sign movemask per plane (shifting each
/// 16-bit lane left by 7 - p puts bit p of both bytes on their sign bits).
template <quantized_type Q, class OnBad>
__attribute__((target("avx2"))) void pack_codes_avx2(const typename Q::storage_type* src,
                                                     std::size_t n, std::uint64_t* dst,
                                                     std::size_t words, OnBad&& on_bad) {
  const __m256i vmax = _mm256_set1_epi8(static_cast<char>(Q::max));
  const __m256i vmin = _mm256_set1_epi8(static_cast<char>(Q::min));
  const __m256i one = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
  // Lanes of v that are not values of Q, as a 32-bit mask. (A lambda does not inherit the
  // function's target attribute: without its own, builds with no -march flag fail.)
  auto bad_lanes = [&](__m256i v) __attribute__((target("avx2"))) -> std::uint32_t {
    __m256i ok;
    if constexpr (Q::is_binary)
      ok = _mm256_cmpeq_epi8(_mm256_abs_epi8(v), one);
    else if constexpr (Q::is_signed)
      ok = _mm256_andnot_si256(
          _mm256_or_si256(_mm256_cmpgt_epi8(v, vmax), _mm256_cmpgt_epi8(vmin, v)),
          _mm256_set1_epi8(-1));
    else
      ok = _mm256_cmpeq_epi8(_mm256_max_epu8(v, vmax), vmax);
    return ~static_cast<std::uint32_t>(_mm256_movemask_epi8(ok));
  };
  for (std::size_t w = 0; w < words; ++w) {
    const std::size_t c0 = w * 64, cnt = c0 < n ? std::min<std::size_t>(64, n - c0) : 0;
    if (cnt == 0) {
      for (int pl = 0; pl < Q::bits; ++pl) dst[pl * words + w] = 0;
      continue;
    }
    std::uint8_t buf[64];
    const std::uint8_t* p = cnt == 64 ? reinterpret_cast<const std::uint8_t*>(src + c0)
                                      : padded_chunk<Q>(src + c0, cnt, buf);
    __m256i v[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))};
    const std::uint64_t bad = std::uint64_t(bad_lanes(v[0])) | std::uint64_t(bad_lanes(v[1])) << 32;
    if (bad != 0) {
      const std::size_t at = c0 + std::size_t(std::countr_zero(bad));
      on_bad(at, int(src[at]));
    }
    const std::uint64_t live = low_bits(cnt);
    if constexpr (Q::is_binary) {
      const std::uint64_t m =
          std::uint32_t(_mm256_movemask_epi8(_mm256_cmpgt_epi8(v[0], zero))) |
          std::uint64_t(std::uint32_t(_mm256_movemask_epi8(_mm256_cmpgt_epi8(v[1], zero)))) << 32;
      dst[w] = m & live;
    } else {
      for (int pl = 0; pl < Q::bits; ++pl) {
        const __m128i s = _mm_cvtsi32_si128(7 - pl);
        const std::uint64_t m =
            std::uint32_t(_mm256_movemask_epi8(_mm256_sll_epi16(v[0], s))) |
            std::uint64_t(std::uint32_t(_mm256_movemask_epi8(_mm256_sll_epi16(v[1], s)))) << 32;
        dst[pl * words + w] = m & live;
      }
    }
  }
}

/// The same with AVX-512 BW: 64 values per masked load, one test-into-mask per plane.
template <quantized_type Q, class OnBad>
__attribute__((target("avx512f,avx512bw"))) void pack_codes_avx512(
    const typename Q::storage_type* src, std::size_t n, std::uint64_t* dst, std::size_t words,
    OnBad&& on_bad) {
  const __m512i zero = _mm512_setzero_si512();
  for (std::size_t w = 0; w < words; ++w) {
    const std::size_t c0 = w * 64;
    const std::size_t cnt = c0 < n ? std::min<std::size_t>(64, n - c0) : 0;
    const __mmask64 live = low_bits(cnt);
    const __m512i v = _mm512_maskz_loadu_epi8(live, src + c0);
    __mmask64 bad;
    if constexpr (Q::is_binary)
      bad = _mm512_mask_cmpneq_epi8_mask(live, _mm512_abs_epi8(v), _mm512_set1_epi8(1));
    else if constexpr (Q::is_signed)
      bad = _mm512_mask_cmpgt_epi8_mask(live, v, _mm512_set1_epi8(char(Q::max))) |
            _mm512_mask_cmplt_epi8_mask(live, v, _mm512_set1_epi8(char(Q::min)));
    else
      bad = _mm512_mask_cmpgt_epu8_mask(live, v, _mm512_set1_epi8(char(Q::max)));
    if (bad) {
      const std::size_t at = c0 + std::size_t(std::countr_zero(std::uint64_t(bad)));
      on_bad(at, int(src[at]));
    }
    if constexpr (Q::is_binary) {
      dst[w] = _mm512_mask_cmpgt_epi8_mask(live, v, zero);
    } else {
      for (int p = 0; p < Q::bits; ++p)
        dst[p * words + w] = _mm512_mask_test_epi8_mask(live, v, _mm512_set1_epi8(char(1 << p)));
    }
  }
}
#endif

/// The packing path for a call's options: the requested (or active) ISA, narrowed to what the
/// CPU has for packing (AVX-512 BW, AVX2, plain code).
inline isa packing_isa(const gemm_options& o) {
  if (o.path) check_isa(*o.path);
  const isa path = o.path.value_or(active_isa());
  const cpu_features& f = detected_cpu_features();
  if (path == isa::avx512_vpopcntdq && f.avx512f && f.avx512bw) return isa::avx512_vpopcntdq;
  if (path != isa::portable && f.avx2) return isa::avx2;
  return isa::portable;
}

/// pack_codes_* on the given path.
template <quantized_type Q, class OnBad>
void pack_codes(isa path, const typename Q::storage_type* src, std::size_t n, std::uint64_t* dst,
                std::size_t words, OnBad&& on_bad) {
#if defined(MIXQ_HAS_X86_PACKING)
  if (path == isa::avx512_vpopcntdq) return pack_codes_avx512<Q>(src, n, dst, words, on_bad);
  if (path == isa::avx2) return pack_codes_avx2<Q>(src, n, dst, words, on_bad);
#endif
  (void)path;
  pack_codes_portable<Q>(src, n, dst, words, on_bad);
}

}  // namespace detail

/// Packs a row-major rows x k matrix of Q values into `out` (reusing its storage when it already
/// has that shape). shape_error if values.size() != rows * k; value_error naming the first bad
/// value's (row, column) found if a value is not in Q (with several threads, some bad value).
template <quantized_type Q>
void pack_bitplanes(std::span<const typename Q::storage_type> values, std::size_t rows,
                    std::size_t k, bitplane_matrix<Q>& out, const gemm_options& options = {}) {
  if (shape_numel(std::array<std::size_t, 2>{rows, k}) != values.size())
    throw shape_error(mixq::detail::cat("pack_bitplanes: ", values.size(), " values given for a ",
                                        rows, " x ", k, " matrix: expected ", rows, " * ", k));
  const isa path = detail::packing_isa(options);
  if (out.rows() != rows || out.cols() != k) out = bitplane_matrix<Q>(rows, k);
  const std::size_t words = out.words_per_plane();
  default_thread_pool().parallel_for(
      rows,
      [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
          const auto* row = values.data() + r * k;
          detail::pack_codes<Q>(
              path, row, k, out.plane_data(r, 0), words, [&](std::size_t c, int v) {
                throw value_error(mixq::detail::cat("pack_bitplanes: value ", v, " at (", r, ", ",
                                                    c, ") ", detail::not_a_value_of<Q>()));
              });
        }
      },
      options.num_threads);
}

/// The same, returning a new matrix.
template <quantized_type Q>
bitplane_matrix<Q> pack_bitplanes(std::span<const typename Q::storage_type> values,
                                  std::size_t rows, std::size_t k,
                                  const gemm_options& options = {}) {
  bitplane_matrix<Q> out;
  pack_bitplanes<Q>(values, rows, k, out, options);
  return out;
}

}  // namespace mixq::kernels
