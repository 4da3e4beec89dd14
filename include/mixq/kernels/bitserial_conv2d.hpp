// The bit-serial convolution: NHWC activation codes of any qtype times packed weights
// (`packed_conv_weights<WT>`), exact int32 NHWC output, with stride, zero padding (the
// quantized zero, corrected exactly for offset and binary encodings), dilation, groups
// (depthwise by a direct path) and batch. Patches are packed straight into bit planes and
// multiplied by the bit-serial GEMM.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_conv2d/packing.hpp"
#include "mixq/kernels/bitserial_conv2d/reference.hpp"
#include "mixq/kernels/bitserial_gemm.hpp"
#include "mixq/kernels/lowbit_gemm.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {

/// Checks an NHWC input against packed weights and parameters; the geometry of the call.
template <quantized_type WT>
conv2d_geometry conv2d_geometry_for(std::span<const std::size_t> input_shape,
                                    const packed_conv_weights<WT>& w, const conv2d_params& p) {
  if (w.out_channels() == 0)
    throw shape_error("bitserial_conv2d: the packed weights are empty: expected packed weights");
  return make_conv2d_geometry(input_shape, w.out_channels(), w.in_channels_per_group(),
                              w.kernel_h(), w.kernel_w(), w.groups(), p, "bitserial_conv2d");
}

namespace detail {

inline void check_conv_output(const conv2d_geometry& g, std::size_t out_size) {
  if (out_size != g.output_size())
    throw shape_error(mixq::detail::cat(
        "bitserial_conv2d: output has ", out_size, " elements, expected N*OH*OW*Cout = ", g.batch,
        "*", g.out_h, "*", g.out_w, "*", g.out_c, " = ", g.output_size()));
}

/// Depthwise (cin/groups == 1): a direct loop over channels, vectorised by the compiler. A
/// GEMM per group would have N = cout/groups rows and K = kh*kw bits padded to 512.
/// Arithmetic is modulo 2^32 like the GEMM's.
template <quantized_type AT>
void depthwise_conv2d_direct(std::span<const typename AT::storage_type> input,
                             std::span<const std::int32_t> wt, const conv2d_geometry& g,
                             const conv2d_params& p, std::span<std::int32_t> out) {
  for (std::size_t i = 0; i < input.size(); ++i)
    if (!AT::contains(input[i])) throw_bad_activation<AT>(i, int(input[i]));
  const std::size_t C = g.out_c, mult = g.cout_per_group();
  const std::uint32_t za = std::uint32_t(p.activation_zero_point);
  const std::uint32_t pad_term = std::uint32_t(p.pad_code()) - za;
  const std::size_t rows = g.batch * g.out_h;
  default_thread_pool().parallel_for(
      rows,
      [&](std::size_t r0, std::size_t r1) {
        std::vector<std::uint32_t> a(C);
        for (std::size_t r = r0; r < r1; ++r) {
          const std::size_t n = r / g.out_h, oh = r % g.out_h;
          for (std::size_t ow = 0; ow < g.out_w; ++ow) {
            std::uint32_t* acc = reinterpret_cast<std::uint32_t*>(out.data()) +
                                 ((n * g.out_h + oh) * g.out_w + ow) * C;
            for (std::size_t o = 0; o < C; ++o) acc[o] = 0;
            for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
              const std::ptrdiff_t y = g.in_y(oh, ky);
              for (std::size_t kx = 0; kx < g.kernel_w; ++kx) {
                const std::ptrdiff_t x = g.in_x(ow, kx);
                const std::int32_t* wtap = wt.data() + (ky * g.kernel_w + kx) * C;
                if (!g.inside(y, x)) {
                  for (std::size_t o = 0; o < C; ++o) acc[o] += pad_term * std::uint32_t(wtap[o]);
                  continue;
                }
                const auto* src =
                    input.data() +
                    ((n * g.in_h + std::size_t(y)) * g.in_w + std::size_t(x)) * g.in_c;
                if (mult == 1) {
                  for (std::size_t o = 0; o < C; ++o)
                    acc[o] += (static_cast<std::uint32_t>(static_cast<std::int32_t>(src[o])) - za) *
                              std::uint32_t(wtap[o]);
                } else {
                  for (std::size_t o = 0; o < C; ++o)
                    a[o] =
                        static_cast<std::uint32_t>(static_cast<std::int32_t>(src[o / mult])) - za;
                  for (std::size_t o = 0; o < C; ++o) acc[o] += a[o] * std::uint32_t(wtap[o]);
                }
              }
            }
          }
        }
      },
      p.gemm.num_threads);
}

}  // namespace detail

namespace detail {

/// The type-erased product and corrections (one instantiation for every type pair).
/// The GEMM sees padded taps as code 0, worth v0 = 0 (or -1 for binary activations), so
///   out = R - za * sum_w[o] + (pad - v0) * (sum of o's weights over the padded taps),
/// the last term only at border pixels, from the per-(channel, tap) sums. The product runs on
/// `kernel` with each group's prepacked weights (w_bitserial or w_int8, one per group).
inline void conv2d_gemm_and_correct(
    const conv2d_geometry& g, bitwidth at, const std::uint64_t* a_bits, std::size_t a_wpp,
    gemm_kernel kernel, std::span<const packed_bitserial_weights> w_bitserial,
    std::span<const packed_int8_weights> w_int8, std::span<const std::int64_t> channel_sums,
    std::span<const std::int64_t> tap_sums, std::span<std::int32_t> out, const conv2d_params& p) {
  const std::size_t M = g.pixels(), cout_g = g.cout_per_group(), C = g.out_c;
  auto a_view = [&](std::size_t grp) {
    return bitplane_view(at, M, g.patch(), a_wpp, a_bits + grp * M * at.bits * a_wpp);
  };
  auto product = [&](std::size_t grp, std::span<std::int32_t> C) {
    if (kernel == gemm_kernel::int8)
      int8_gemm(a_view(grp), w_int8[grp], C, p.gemm);
    else
      bitserial_gemm(a_view(grp), w_bitserial[grp], C, p.gemm);
  };
  if (g.groups == 1) {
    product(0, out);
  } else {
    std::vector<std::int32_t> tmp(M * cout_g);
    for (std::size_t grp = 0; grp < g.groups; ++grp) {
      product(grp, tmp);
      for (std::size_t m = 0; m < M; ++m)
        for (std::size_t j = 0; j < cout_g; ++j)
          out[m * C + grp * cout_g + j] = tmp[m * cout_g + j];
    }
  }

  const std::int64_t za = p.activation_zero_point;
  const std::int64_t v0 = at.is_binary() ? -1 : 0;
  const std::int64_t pad_delta = std::int64_t(p.pad_code()) - v0;
  auto* o32 = reinterpret_cast<std::uint32_t*>(out.data());
  if (za != 0) {
    std::vector<std::uint32_t> corr(C);
    for (std::size_t o = 0; o < C; ++o) corr[o] = std::uint32_t(-za * channel_sums[o]);
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t o = 0; o < C; ++o) o32[m * C + o] += corr[o];
  }
  if (pad_delta != 0 && (g.pad_h != 0 || g.pad_w != 0)) {
    const std::size_t taps = g.taps();
    // Tap-major copy of the per-(channel, tap) sums, so the border sums run over contiguous
    // channels (the strided channel-major walk was a fifth of a small layer's time).
    std::vector<std::int64_t> by_tap(taps * C);
    for (std::size_t o = 0; o < C; ++o)
      for (std::size_t t = 0; t < taps; ++t) by_tap[t * C + o] = tap_sums[o * taps + t];
    // An output pixel's correction depends only on which kernel rows and which kernel columns of
    // its window fall outside the image. Output rows (columns) with the same pattern form a
    // class; the correction of each (row class, column class) is summed once, then added to
    // every pixel of that class (most pixels are in the all-inside class and get nothing).
    const std::size_t kh = g.kernel_h, kw = g.kernel_w;
    auto classify = [](std::size_t outs, std::size_t k, auto inside) {
      std::vector<std::vector<std::uint8_t>> patterns;
      std::vector<std::size_t> cls(outs);
      for (std::size_t o = 0; o < outs; ++o) {
        std::vector<std::uint8_t> pat(k);
        for (std::size_t t = 0; t < k; ++t) pat[t] = inside(o, t);
        auto it = std::find(patterns.begin(), patterns.end(), pat);
        cls[o] = std::size_t(it - patterns.begin());
        if (it == patterns.end()) patterns.push_back(std::move(pat));
      }
      return std::pair{std::move(patterns), std::move(cls)};
    };
    const auto [row_pat, row_cls] = classify(g.out_h, kh, [&](std::size_t oh, std::size_t ky) {
      const std::ptrdiff_t y = g.in_y(oh, ky);
      return y >= 0 && y < std::ptrdiff_t(g.in_h);
    });
    const auto [col_pat, col_cls] = classify(g.out_w, kw, [&](std::size_t ow, std::size_t kx) {
      const std::ptrdiff_t x = g.in_x(ow, kx);
      return x >= 0 && x < std::ptrdiff_t(g.in_w);
    });
    const std::size_t ncol = col_pat.size();
    // corrections[rc * ncol + cc]: pad_delta * the weight sums over that class's outside taps
    // (empty for the all-inside class).
    std::vector<std::vector<std::uint32_t>> corrections(row_pat.size() * ncol);
    std::vector<std::int64_t> border(C);
    for (std::size_t rc = 0; rc < row_pat.size(); ++rc)
      for (std::size_t cc = 0; cc < ncol; ++cc) {
        std::fill(border.begin(), border.end(), 0);
        bool any = false;
        for (std::size_t ky = 0; ky < kh; ++ky)
          for (std::size_t kx = 0; kx < kw; ++kx) {
            if (row_pat[rc][ky] && col_pat[cc][kx]) continue;
            any = true;
            const std::int64_t* ts = by_tap.data() + (ky * kw + kx) * C;
            for (std::size_t o = 0; o < C; ++o) border[o] += ts[o];
          }
        if (!any) continue;
        auto& corr = corrections[rc * ncol + cc];
        corr.resize(C);
        for (std::size_t o = 0; o < C; ++o) corr[o] = std::uint32_t(pad_delta * border[o]);
      }
    for (std::size_t oh = 0; oh < g.out_h; ++oh)
      for (std::size_t ow = 0; ow < g.out_w; ++ow) {
        const auto& corr = corrections[row_cls[oh] * ncol + col_cls[ow]];
        if (corr.empty()) continue;
        for (std::size_t n = 0; n < g.batch; ++n) {
          std::uint32_t* row = o32 + ((n * g.out_h + oh) * g.out_w + ow) * C;
          for (std::size_t o = 0; o < C; ++o) row[o] += corr[o];
        }
      }
  }
}

}  // namespace detail

/// Multiplies packed activation planes (from pack_conv_activations with the same geometry)
/// by the weights and applies the zero-point and padding corrections; `out` is NHWC int32.
/// shape_error if the planes and weights disagree or out has the wrong size.
template <quantized_type AT, quantized_type WT>
void bitserial_conv2d_packed(const conv_activation_planes<AT>& a, const packed_conv_weights<WT>& w,
                             std::span<std::int32_t> out, const conv2d_params& p) {
  const conv2d_geometry& g = a.geometry;
  if (g.out_c != w.out_channels() || g.cin_per_group() != w.in_channels_per_group() ||
      g.kernel_h != w.kernel_h() || g.kernel_w != w.kernel_w() || g.groups != w.groups())
    throw shape_error(mixq::detail::cat(
        "bitserial_conv2d: activations were packed for ", g.out_c, " outputs, ", g.cin_per_group(),
        " channels per group, kernel ", g.kernel_h, "x", g.kernel_w, ", ", g.groups,
        " groups; the weights have ", w.out_channels(), ", ", w.in_channels_per_group(), ", ",
        w.kernel_h(), "x", w.kernel_w(), ", ", w.groups(), ": expected the same"));
  detail::check_conv_output(g, out.size());
  const gemm_kernel kernel = p.kernel.value_or(choose_kernel(bitwidth_of<AT>(), bitwidth_of<WT>()));
  const bool int8 = kernel == gemm_kernel::int8;
  detail::conv2d_gemm_and_correct(
      g, bitwidth_of<AT>(), a.bits.data(), a.words_per_plane, kernel,
      int8 ? std::span<const packed_bitserial_weights>() : w.bitserial_weights(),
      int8 ? w.int8_weights() : std::span<const packed_int8_weights>(), w.channel_sums(),
      w.tap_sums(), out, p);
}

/// out (NHWC, N*OH*OW*Cout int32) = the convolution of NHWC input codes of AT (shape
/// {N, H, W, Cin}) with packed weights; see conv2d_params for the exact semantics.
/// shape_error for inconsistent shapes (channels vs groups, kernel larger than the padded
/// input, weights packed for other groups/channels, wrong output size); value_error for an
/// input value outside AT.
template <quantized_type AT, quantized_type WT>
void bitserial_conv2d(const tensor<typename AT::storage_type>& input,
                      const packed_conv_weights<WT>& w, std::span<std::int32_t> out,
                      const conv2d_params& p = {}) {
  const conv2d_geometry g = conv2d_geometry_for(input.shape(), w, p);
  detail::check_conv_output(g, out.size());
  if (p.gemm.path) detail::check_isa(*p.gemm.path);
  if (g.cin_per_group() == 1 && g.groups > 1) {
    detail::depthwise_conv2d_direct<AT>(input.span(), w.tap_major(), g, p, out);
    return;
  }
  conv_activation_planes<AT> a;
  pack_conv_activations<AT>(input.span(), g, p.gemm, a);
  bitserial_conv2d_packed(a, w, out, p);
}

/// The same, returning a new {N, OH, OW, Cout} tensor.
template <quantized_type AT, quantized_type WT>
tensor<std::int32_t> bitserial_conv2d(const tensor<typename AT::storage_type>& input,
                                      const packed_conv_weights<WT>& w,
                                      const conv2d_params& p = {}) {
  const conv2d_geometry g = conv2d_geometry_for(input.shape(), w, p);
  tensor<std::int32_t> out({g.batch, g.out_h, g.out_w, g.out_c});
  bitserial_conv2d<AT>(input, w, out.span(), p);
  return out;
}

}  // namespace mixq::kernels
