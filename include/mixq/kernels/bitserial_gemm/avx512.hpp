// The AVX-512 VPOPCNTDQ bit-serial path. W's planes are first interleaved so that one zmm holds
// the same 64 bits of K from 8 W rows (one plane); a 64-bit word of an A plane row is broadcast
// against it, so each of the 6 x 4 zmm accumulators counts 8 outputs at once and no
// horizontal reduction is needed: per 64 bits of K and 8 outputs, one VPANDQ + VPOPCNTQ +
// VPADDQ, the ceiling loop itself. Counts are weighted by their plane pair and added to C once
// per K block. Compiled through target attributes, so consumers need no -march flag.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/core/aligned.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels::detail {

#if defined(__x86_64__)
#define MIXQ_HAS_AVX512_BITSERIAL 1
#define MIXQ_AVX512_BITSERIAL_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")))

/// The popcount loop of a register tile: acc[i][j] (8 x 64-bit lanes) += popcount(a[i][k] &
/// W vector row j, word k) over nwords words of K.
template <int MR, int NV>
MIXQ_AVX512_BITSERIAL_TARGET __attribute__((always_inline)) inline void popcount_tile_avx512(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t wstride, std::size_t nwords,
    __m512i (&acc)[MR][NV]) {
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_si512();
  for (std::size_t k = 0; k < nwords; ++k) {
    __m512i bv[NV];
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) {
      bv[j] = _mm512_load_si512(w + j * wstride + k * 8);
      // Keeps the operand in a register: g++ 12 would fold the load into every vpandq.
      asm volatile("" : "+v"(bv[j]));
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      __m512i av = _mm512_set1_epi64(static_cast<long long>(a[i][k]));
      asm volatile("" : "+v"(av));
#pragma GCC unroll 32
      for (int j = 0; j < NV; ++j)
        acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_and_si512(av, bv[j])));
    }
  }
}

/// The offset terms of the binary encodings (see run_bitserial_gemm): C[m][n] starts at
/// row[m] + col[n]; empty when neither operand is binary. col is padded to whole 8-lane groups.
struct offset_terms {
  std::vector<std::uint32_t> row;
  aligned_vector<std::uint32_t> col;
  bool empty() const noexcept { return row.empty(); }
};

/// w_sums: W's plane_row_sums when already known (prepacked weights), else read off W here.
inline offset_terms make_offset_terms(const bitplane_view& A, const bitplane_view& W,
                                      const std::vector<std::int64_t>* w_sums = nullptr) {
  offset_terms t;
  const std::int64_t oa = A.type.is_binary() ? -1 : 0, ow = W.type.is_binary() ? -1 : 0;
  if (oa == 0 && ow == 0) return t;
  const std::int64_t kk = static_cast<std::int64_t>(A.cols) * oa * ow;
  t.row.assign(A.rows, static_cast<std::uint32_t>(kk));
  t.col.assign((W.rows + 63) / 64 * 64, 0);
  if (ow != 0) {
    const auto sa = plane_row_sums(A);
    for (std::size_t m = 0; m < A.rows; ++m) t.row[m] = static_cast<std::uint32_t>(kk + ow * sa[m]);
  }
  if (oa != 0) {
    const auto sw = w_sums != nullptr ? *w_sums : plane_row_sums(W);
    for (std::size_t n = 0; n < W.rows; ++n) t.col[n] = static_cast<std::uint32_t>(oa * sw[n]);
  }
  return t;
}

/// One register tile for any bit pair: MR A plane rows x NV interleaved W vector rows over
/// nwords words of K, then C[row] += weight(i, v) * count for the valid rows (mr) and vectors
/// (nv). The group holding plane 0 x plane 0 of the first K block overwrites C, adding the
/// offset terms (row_term per plane row, col_term per output) when given.
template <int MR, int NV>
MIXQ_AVX512_BITSERIAL_TARGET inline void bitserial_tile_avx512_vpopcntdq(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t wstride, std::size_t nwords,
    int mr, int nv, std::uint32_t* const* crow, const std::int64_t* wa, const std::int64_t* wv,
    const std::size_t* n0, const __mmask8* lanes, bool store_first, const std::uint8_t* a_first,
    const std::uint8_t* v_first, const std::uint32_t* row_term, const std::uint32_t* col_term) {
  __m512i acc[MR][NV];
  popcount_tile_avx512<MR, NV>(a, w, wstride, nwords, acc);
  // Fold: counts fit 32 bits; products and sums are taken modulo 2^32 (exact when C fits).
  // The terms of one output (the planes of one A row x the planes of one 8-row W block that
  // sit in this tile) are summed in registers first, so C is read and written once per output.
  __m256i pend[NV];
#pragma GCC unroll 32
  for (int j = 0; j < NV; ++j) pend[j] = _mm256_setzero_si256();
  int i0 = 0;
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    const bool row_start = i == 0 || crow[i - 1] != crow[i];
    // (i + 1 >= MR first: g++ -O2 cannot see that mr <= MR and warns about crow[MR].)
    const bool row_end = i + 1 >= MR || i + 1 >= mr || crow[i + 1] != crow[i];
    if (row_start) i0 = i;
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) {
      if (j >= nv) break;
      const __m256i count = _mm512_maskz_cvtepi64_epi32(0xFF, acc[i][j]);
      const __m256i term =
          _mm256_mullo_epi32(count, _mm256_set1_epi32(static_cast<int>(wa[i] * wv[j])));
      pend[j] = row_start ? term : _mm256_add_epi32(pend[j], term);
    }
    if (!row_end) continue;
    __m256i sum = _mm256_setzero_si256();
    int j0 = 0;
#pragma GCC unroll 32
    for (int j = 0; j < NV; ++j) {
      if (j >= nv) break;
      const bool block_start = j == 0 || n0[j - 1] != n0[j];
      const bool block_end = j + 1 >= NV || j + 1 >= nv || n0[j + 1] != n0[j];
      if (block_start) j0 = j;
      sum = block_start ? pend[j] : _mm256_add_epi32(sum, pend[j]);
      if (!block_end) continue;
      std::uint32_t* c = crow[i] + n0[j];
      // The group holding plane 0 x plane 0 of k block 0 comes first: it overwrites C.
      __m256i out = sum;
      const bool overwrite = store_first && a_first[i0] && v_first[j0];
      if (overwrite && row_term != nullptr)
        out = _mm256_add_epi32(
            out, _mm256_add_epi32(
                     _mm256_set1_epi32(static_cast<int>(row_term[i])),
                     _mm256_load_si256(reinterpret_cast<const __m256i*>(col_term + n0[j]))));
      if (lanes[j] == 0xFF) {  // plain loads and stores where all 8 outputs exist
        if (!overwrite)
          out = _mm256_add_epi32(out, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), out);
      } else {
        if (!overwrite) out = _mm256_add_epi32(out, _mm256_maskz_loadu_epi32(lanes[j], c));
        _mm256_mask_storeu_epi32(c, lanes[j], out);
      }
    }
  }
}

/// The weights of the plane pairs (p of A, q of W) of one output: +-2^shift[p][q].
struct plane_pair_weights {
  int shift[8][8] = {};
  bool negative[8][8] = {};
};

inline plane_pair_weights make_plane_pair_weights(bitwidth at, bitwidth wt) {
  plane_pair_weights w;
  for (int p = 0; p < at.bits; ++p)
    for (int q = 0; q < wt.bits; ++q) {
      const std::int64_t v = plane_weight_of(at, p) * plane_weight_of(wt, q);
      w.negative[p][q] = v < 0;
      w.shift[p][q] = std::countr_zero(static_cast<std::uint64_t>(v < 0 ? -v : v));
    }
  return w;
}

/// Narrows the 64-bit lanes of x and y to 32 bits, x's in lanes 0..7 and y's in 8..15 (the
/// outputs of two consecutive 8-row W blocks; one vpermt2d instead of two vpmovqd).
MIXQ_AVX512_BITSERIAL_TARGET __attribute__((always_inline)) inline __m512i narrow_pair(__m512i x,
                                                                                       __m512i y) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_epi32(x, even, y);
}

/// A panel of register tiles holding whole outputs: MR / BA A rows (all their planes) against
/// `tiles` consecutive groups of NV / BW W blocks of 8 rows (all their planes). Each output's
/// plane-pair counts are shifted, signed and summed in 64-bit lanes (exact modulo 2^32 after
/// narrowing), and C is written once per K block: stored with the offset terms on the first
/// K block (first), added to after. Pairs of W blocks are narrowed into one zmm of 16 outputs.
/// No per-output control flow beyond the valid-row and valid-lane checks: this is what makes
/// the narrow bit pairs (1x1: one count per output) cheap to fold.
template <int MR, int NV, int BA, int BW>
MIXQ_AVX512_BITSERIAL_TARGET __attribute__((noinline)) void bitserial_tile_whole_outputs(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t wstride, std::size_t nwords,
    int rows, std::uint32_t* const* crow, std::size_t n0, std::size_t N,
    const plane_pair_weights& pw, bool first, const std::uint32_t* row_term,
    const std::uint32_t* col_term) {
  static_assert(MR % BA == 0 && NV % BW == 0);
  constexpr int G = MR / BA, H = NV / BW;  // A rows and W blocks per tile
  constexpr bool uniform = BA == 1 && BW == 1;
  {
    __m512i acc[MR][NV];
    popcount_tile_avx512<MR, NV>(a, w, wstride, nwords, acc);
    // sums[g][h]: the 8 outputs of A row g x W block h, in 64-bit lanes.
    __m512i sums[G][H];
#pragma GCC unroll 32
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 32
      for (int h = 0; h < H; ++h) {
        if constexpr (uniform) {
          sums[g][h] = acc[g][h];  // one plane pair: weighted after narrowing
        } else {
          __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 8
          for (int p = 0; p < BA; ++p)
#pragma GCC unroll 8
            for (int q = 0; q < BW; ++q) {
              // maskz form: g++ 12 warns on the undefined merge source of the unmasked one.
              const __m512i x = _mm512_maskz_sll_epi64(0xFF, acc[g * BA + p][h * BW + q],
                                                       _mm_cvtsi32_si128(pw.shift[p][q]));
              sum = pw.negative[p][q] ? _mm512_sub_epi64(sum, x) : _mm512_add_epi64(sum, x);
            }
          sums[g][h] = sum;
        }
      }
    if (rows >= G && n0 + 8 * H <= N) {
      // Every row and output of the tile exists (all but the edge tiles): no lane masks, the
      // pair weight hoisted. At K = 1024 this fold is a sixth of the tile's instructions.
      const __m128i shift = _mm_cvtsi32_si128(pw.shift[0][0]);
      const bool negate = uniform && pw.negative[0][0];
#pragma GCC unroll 32
      for (int g = 0; g < G; ++g) {
        std::uint32_t* c = crow[g] + n0;
        // The row's offset term is only added where C is first written.
        const __m512i rt = first && row_term != nullptr
                               ? _mm512_set1_epi32(static_cast<int>(row_term[g]))
                               : _mm512_setzero_si512();
#pragma GCC unroll 32
        for (int h = 0; h < H; h += 2) {
          const bool pair = h + 1 < H;
          __m512i out = pair ? narrow_pair(sums[g][h], sums[g][h + 1])
                             : narrow_pair(sums[g][h], _mm512_setzero_si512());
          if constexpr (uniform) {
            out = _mm512_maskz_sll_epi32(0xFFFF, out, shift);
            if (negate) out = _mm512_sub_epi32(_mm512_setzero_si512(), out);
          }
          std::uint32_t* cn = c + 8 * h;
          const __mmask16 lanes = pair ? __mmask16(0xFFFF) : __mmask16(0x00FF);
          if (!first)
            out = _mm512_add_epi32(out, _mm512_maskz_loadu_epi32(lanes, cn));
          else if (row_term != nullptr)
            out = _mm512_add_epi32(
                out, _mm512_add_epi32(rt, _mm512_maskz_loadu_epi32(lanes, col_term + n0 + 8 * h)));
          if (pair)
            _mm512_storeu_si512(cn, out);
          else
            _mm512_mask_storeu_epi32(cn, lanes, out);
        }
      }
      return;
    }
#pragma GCC unroll 32
    for (int g = 0; g < G; ++g) {
      if (g >= rows) break;
      std::uint32_t* c = crow[g] + n0;
#pragma GCC unroll 32
      for (int h = 0; h < H; h += 2) {
        const std::size_t n = n0 + 8 * h;
        if (n >= N) break;
        // 16 outputs (8 when H is odd and h is the last block).
        __m512i out = h + 1 < H ? narrow_pair(sums[g][h], sums[g][h + 1])
                                : narrow_pair(sums[g][h], _mm512_setzero_si512());
        if constexpr (uniform) {
          out = _mm512_maskz_sll_epi32(0xFFFF, out, _mm_cvtsi32_si128(pw.shift[0][0]));
          if (pw.negative[0][0]) out = _mm512_sub_epi32(_mm512_setzero_si512(), out);
        }
        const std::size_t valid = std::min<std::size_t>(N - n, h + 1 < H ? 16 : 8);
        const __mmask16 lanes =
            valid == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << valid) - 1u);
        std::uint32_t* cn = c + 8 * h;
        if (first) {
          if (row_term != nullptr)
            out = _mm512_add_epi32(
                out, _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(row_term[g])),
                                      _mm512_maskz_loadu_epi32(lanes, col_term + n)));
        } else {
          out = _mm512_add_epi32(out, _mm512_maskz_loadu_epi32(lanes, cn));
        }
        if (valid == 16)
          _mm512_storeu_si512(cn, out);
        else
          _mm512_mask_storeu_epi32(cn, lanes, out);
      }
    }
  }
}

inline constexpr int avx512_bitserial_mr = 6, avx512_bitserial_nv = 4;

/// Consecutive whole-output tiles along W (one call per tile keeps the popcount loop's
/// registers free of the panel's bookkeeping).
template <int MR, int NV, int BA, int BW>
MIXQ_AVX512_BITSERIAL_TARGET inline void bitserial_panel_whole_outputs(
    const std::uint64_t* const* a, const std::uint64_t* w, std::size_t wstride, std::size_t nwords,
    std::size_t tiles, int rows, std::uint32_t* const* crow, std::size_t n0, std::size_t N,
    const plane_pair_weights& pw, bool first, const std::uint32_t* row_term,
    const std::uint32_t* col_term) {
  for (std::size_t t = 0; t < tiles; ++t, w += NV * wstride, n0 += 8 * (NV / BW))
    bitserial_tile_whole_outputs<MR, NV, BA, BW>(a, w, wstride, nwords, rows, crow, n0, N, pw,
                                                 first, row_term, col_term);
}

using whole_outputs_panel_fn = void (*)(const std::uint64_t* const*, const std::uint64_t*,
                                        std::size_t, std::size_t, std::size_t, int,
                                        std::uint32_t* const*, std::size_t, std::size_t,
                                        const plane_pair_weights&, bool, const std::uint32_t*,
                                        const std::uint32_t*);

/// The whole-outputs tile for a bit pair, or nullptr when a tile would split an output's planes
/// (then the general tile runs). Instantiated for the narrow pairs where the fold matters.
template <int MR, int NV>
whole_outputs_panel_fn whole_outputs_panel_for(int ba, int bw) {
  switch (ba * 16 + bw) {
    case 1 * 16 + 1:
      return &bitserial_panel_whole_outputs<MR, NV, 1, 1>;
    case 1 * 16 + 2:
      return &bitserial_panel_whole_outputs<MR, NV, 1, 2>;
    case 1 * 16 + 4:
      return &bitserial_panel_whole_outputs<MR, NV, 1, 4>;
    case 2 * 16 + 1:
      return &bitserial_panel_whole_outputs<MR, NV, 2, 1>;
    case 2 * 16 + 2:
      return &bitserial_panel_whole_outputs<MR, NV, 2, 2>;
    case 3 * 16 + 1:
      return &bitserial_panel_whole_outputs<MR, NV, 3, 1>;
    default:
      return nullptr;
  }
}

/// The AVX-512 bit-serial GEMM with W already interleaved (Wi = interleave_by_8(W)) and, when
/// known, W's plane_row_sums (w_sums, else nullptr): what prepacked weights skip per call.
MIXQ_AVX512_BITSERIAL_TARGET inline void run_bitserial_gemm_avx512_interleaved(
    const bitplane_view& A, const bitplane_view& W, const interleaved_planes& Wi,
    const std::vector<std::int64_t>* w_sums, std::int32_t* C, std::size_t threads) {
  constexpr int MR = avx512_bitserial_mr, NV = avx512_bitserial_nv;
  const std::size_t M = A.rows, N = W.rows;
  if (M == 0 || N == 0) return;
  // Only the words holding K bits are walked (the rest of the padding is zero).
  const std::size_t words = (A.cols + 63) / 64;
  if (words == 0) {
    init_offset_terms(A, W, C);
    return;
  }
  const std::size_t ba = A.type.bits, bw = W.type.bits;
  const std::size_t RA = M * ba, RV = Wi.vector_rows, wstride = Wi.words * 8;
  // Binary operands' offset terms are added where C is first written, not in a pass of their own.
  const offset_terms offsets = make_offset_terms(A, W, w_sums);
  const plane_pair_weights pair_weights = make_plane_pair_weights(A.type, W.type);
  const whole_outputs_panel_fn whole = whole_outputs_panel_for<MR, NV>(int(ba), int(bw));

  std::vector<std::int64_t> wa(RA), wv(RV);
  std::vector<std::size_t> ra(RA), nstart(RV);
  std::vector<__mmask8> lanes(RV);
  std::vector<std::uint8_t> a_first(RA), v_first(RV);
  // (Nested loops, not r / ba and r % ba: a division per plane row shows on small GEMMs.)
  for (std::size_t m = 0, r = 0; m < M; ++m)
    for (std::size_t p = 0; p < ba; ++p, ++r) {
      wa[r] = plane_weight_of(A.type, int(p));
      ra[r] = m;
      a_first[r] = p == 0;
    }
  for (std::size_t b = 0, v = 0; v < RV; ++b)
    for (std::size_t q = 0; q < bw; ++q, ++v) {
      wv[v] = plane_weight_of(W.type, int(q));
      nstart[v] = b * 8;
      v_first[v] = q == 0;
      const std::size_t valid = std::min<std::size_t>(8, N - nstart[v]);
      lanes[v] = static_cast<__mmask8>((1u << valid) - 1u);
    }

  // K block: up to 2048 words (128 KiB of interleaved W per vector row is too much for L2, so
  // the W block shrinks to keep about 512 KiB of it in L2).
  const std::size_t kc = std::min<std::size_t>(words, 2048);
  const std::size_t vb = std::max<std::size_t>(NV, (512 * 1024 / (kc * 64)) / NV * NV);

  auto work = [&](std::size_t a0, std::size_t a1, std::size_t v0, std::size_t v1) {
    const std::uint64_t* ap[MR];
    std::uint32_t* crow[MR];
    std::uint32_t* crow_whole[MR];
    std::uint32_t rterm[MR] = {};
    for (std::size_t k0 = 0; k0 < words; k0 += kc) {
      const std::size_t kn = std::min(kc, words - k0);
      const bool first = k0 == 0;
      for (std::size_t c0 = v0; c0 < v1; c0 += vb) {
        const std::size_t c1 = std::min(v1, c0 + vb);
        for (std::size_t r = a0; r < a1; r += MR) {
          const int mr = static_cast<int>(std::min<std::size_t>(MR, a1 - r));
          for (int i = 0; i < MR; ++i) {
            const std::size_t ri = r + std::min(i, mr - 1);
            ap[i] = A.plane_row(ri) + k0;
            crow[i] = reinterpret_cast<std::uint32_t*>(C + ra[ri] * N);
            crow_whole[i] =
                reinterpret_cast<std::uint32_t*>(C + std::min(r / ba + std::size_t(i), M - 1) * N);
            if (!offsets.empty()) rterm[i] = offsets.row[ra[ri]];
          }
          const std::uint32_t* rterm_whole = offsets.empty() ? nullptr : &offsets.row[r / ba];
          const std::uint32_t* rterm_general = offsets.empty() ? nullptr : rterm;
          std::size_t c = c0;
          const std::uint32_t* cterm = offsets.empty() ? nullptr : offsets.col.data();
          if (whole != nullptr && c1 - c0 >= std::size_t(NV)) {
            const std::size_t tiles = (c1 - c0) / NV;
            whole(ap, Wi.row(c0) + k0 * 8, wstride, kn, tiles, mr / int(ba), crow_whole, nstart[c0],
                  N, pair_weights, first, rterm_whole, cterm);
            c += tiles * NV;
          }
          for (; c < c1; c += NV) {
            const int nv = static_cast<int>(std::min<std::size_t>(NV, c1 - c));
            if (nv == NV) {
              bitserial_tile_avx512_vpopcntdq<MR, NV>(
                  ap, Wi.row(c) + k0 * 8, wstride, kn, mr, nv, crow, &wa[r], &wv[c], &nstart[c],
                  &lanes[c], first, &a_first[r], &v_first[c], rterm_general, cterm);
            } else {
              for (int j = 0; j < nv; ++j)
                bitserial_tile_avx512_vpopcntdq<MR, 1>(ap, Wi.row(c + j) + k0 * 8, wstride, kn, mr,
                                                       1, crow, &wa[r], &wv[c + j], &nstart[c + j],
                                                       &lanes[c + j], first, &a_first[r],
                                                       &v_first[c + j], rterm_general, cterm);
            }
          }
        }
      }
    }
  };

  // Threads split the larger side by whole rows (A) or whole 8-row W blocks: disjoint outputs.
  split_interleaved_gemm(M, N, ba, bw, threads, work);
}

MIXQ_AVX512_BITSERIAL_TARGET inline void run_bitserial_gemm_avx512(const bitplane_view& A,
                                                                   const bitplane_view& W,
                                                                   std::int32_t* C,
                                                                   std::size_t threads) {
  if (A.rows == 0 || W.rows == 0) return;
  run_bitserial_gemm_avx512_interleaved(A, W, interleave_by_8(W), nullptr, C, threads);
}

inline constexpr bitserial_path bitserial_avx512_vpopcntdq_6x4{
    &run_bitserial_gemm_avx512, "bitserial_gemm_avx512_vpopcntdq_6x32_broadcast",
    &run_bitserial_gemm_avx512_interleaved};
#endif

}  // namespace mixq::kernels::detail
