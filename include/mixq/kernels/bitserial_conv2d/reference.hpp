// Convolution geometry shared by the bit-serial and float convolutions (`conv2d_params`,
// `conv2d_geometry`, the one place shapes are checked) and the plain reference convolution on
// integer codes that the fast paths are tested against.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/lowbit_gemm.hpp"

namespace mixq::kernels {

/// How a 4-d weight tensor is ordered: OIHW (cout, cin/groups, kh, kw) or OHWI
/// (cout, kh, kw, cin/groups). Activations and outputs are always NHWC.
enum class weight_layout { oihw, ohwi };

/// Stride, zero padding, dilation, groups and the activation zero point of a convolution.
/// Semantics (every path): out[n][oh][ow][o] = sum over taps (kh, kw, c) of (a - za) * w, where
/// a is the input code at (ih, iw) = (oh*stride - pad + kh*dilation, ...) when that is inside
/// the image and `padding_value` (default: za, the quantized zero, so padded taps add 0)
/// otherwise. For binary {-1, +1} activations there is no zero code: the default still makes
/// padded taps contribute exactly 0, as if the image were surrounded by zeros.
struct conv2d_params {
  std::size_t stride_h = 1, stride_w = 1;
  std::size_t pad_h = 0, pad_w = 0;
  std::size_t dilation_h = 1, dilation_w = 1;
  /// cin and cout must both be multiples of groups; depthwise is groups == cin.
  std::size_t groups = 1;
  /// za: the code of real zero of the activations (quant_params::zero_point).
  int activation_zero_point = 0;
  /// The code that fills the padding; std::nullopt means activation_zero_point.
  std::optional<int> padding_value;
  /// Threads and instruction-set path of the bit-serial GEMM (and the packing).
  gemm_options gemm;
  /// The GEMM behind the packed product: std::nullopt uses lowbit_gemm's active kernel table
  /// (bit-serial when w * a <= 4, the int8 VNNI path otherwise); set it to force one.
  std::optional<gemm_kernel> kernel;

  int pad_code() const noexcept { return padding_value.value_or(activation_zero_point); }
};

/// The checked sizes of one convolution.
struct conv2d_geometry {
  std::size_t batch = 0, in_h = 0, in_w = 0, in_c = 0;
  std::size_t out_c = 0, kernel_h = 0, kernel_w = 0, groups = 1;
  std::size_t out_h = 0, out_w = 0;
  std::size_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;

  std::size_t cin_per_group() const noexcept { return in_c / groups; }
  std::size_t cout_per_group() const noexcept { return out_c / groups; }
  std::size_t taps() const noexcept { return kernel_h * kernel_w; }
  /// K of the per-group GEMM: the (kh, kw, cin/groups) patch.
  std::size_t patch() const noexcept { return taps() * cin_per_group(); }
  /// Output pixels per group (rows of the GEMM).
  std::size_t pixels() const noexcept { return batch * out_h * out_w; }
  std::size_t output_size() const noexcept { return pixels() * out_c; }
  /// Multiply-accumulates of the whole convolution.
  std::size_t macs() const noexcept { return output_size() * patch(); }
  /// Input row of output row oh at tap ky (may be outside 0..in_h-1: padding).
  std::ptrdiff_t in_y(std::size_t oh, std::size_t ky) const noexcept {
    return std::ptrdiff_t(oh * stride_h + ky * dilation_h) - std::ptrdiff_t(pad_h);
  }
  std::ptrdiff_t in_x(std::size_t ow, std::size_t kx) const noexcept {
    return std::ptrdiff_t(ow * stride_w + kx * dilation_w) - std::ptrdiff_t(pad_w);
  }
  bool inside(std::ptrdiff_t y, std::ptrdiff_t x) const noexcept {
    return y >= 0 && x >= 0 && y < std::ptrdiff_t(in_h) && x < std::ptrdiff_t(in_w);
  }
};

/// Checks an NHWC input shape against weights (out_c, cin/groups, kh, kw) and the parameters,
/// and returns the geometry. shape_error says what was wrong and what was expected.
inline conv2d_geometry make_conv2d_geometry(std::span<const std::size_t> input_shape,
                                            std::size_t out_c, std::size_t weight_cin,
                                            std::size_t kernel_h, std::size_t kernel_w,
                                            std::size_t weight_groups, const conv2d_params& p,
                                            const char* who) {
  using mixq::detail::cat;
  if (input_shape.size() != 4)
    throw shape_error(cat(who, ": input of shape ", shape_string(input_shape),
                          " is not 4-d: expected NHWC (batch, height, width, channels)"));
  if (p.stride_h == 0 || p.stride_w == 0 || p.dilation_h == 0 || p.dilation_w == 0)
    throw shape_error(cat(who, ": stride ", p.stride_h, "x", p.stride_w, " and dilation ",
                          p.dilation_h, "x", p.dilation_w, ": expected all >= 1"));
  if (p.groups == 0) throw shape_error(cat(who, ": groups is 0, expected >= 1"));
  if (p.groups != weight_groups)
    throw shape_error(cat(who, ": the weights were packed for ", weight_groups,
                          " groups but the call asks for ", p.groups, ": expected the same"));
  conv2d_geometry g;
  g.batch = input_shape[0], g.in_h = input_shape[1], g.in_w = input_shape[2];
  g.in_c = input_shape[3], g.out_c = out_c, g.kernel_h = kernel_h, g.kernel_w = kernel_w;
  g.groups = p.groups, g.stride_h = p.stride_h, g.stride_w = p.stride_w, g.pad_h = p.pad_h;
  g.pad_w = p.pad_w, g.dilation_h = p.dilation_h, g.dilation_w = p.dilation_w;
  if (g.in_c % g.groups != 0 || g.out_c % g.groups != 0)
    throw shape_error(cat(who, ": ", g.in_c, " input and ", g.out_c,
                          " output channels with groups = ", g.groups,
                          ": expected both channel counts to be multiples of groups"));
  if (g.in_c / g.groups != weight_cin)
    throw shape_error(cat(who, ": input has ", g.in_c, " channels = ", g.groups, " groups of ",
                          g.in_c / g.groups, " but the weights expect ", weight_cin,
                          " channels per group"));
  if (kernel_h == 0 || kernel_w == 0 || g.in_c == 0 || g.out_c == 0)
    throw shape_error(cat(who, ": kernel ", kernel_h, "x", kernel_w, ", ", g.in_c, " -> ", g.out_c,
                          " channels: expected all >= 1"));
  const std::size_t ext_h = (kernel_h - 1) * g.dilation_h + 1;
  const std::size_t ext_w = (kernel_w - 1) * g.dilation_w + 1;
  if (ext_h > g.in_h + 2 * g.pad_h || ext_w > g.in_w + 2 * g.pad_w)
    throw shape_error(cat(who, ": dilated kernel ", ext_h, "x", ext_w,
                          " is larger than the padded input ", g.in_h + 2 * g.pad_h, "x",
                          g.in_w + 2 * g.pad_w, ": expected it to fit"));
  g.out_h = (g.in_h + 2 * g.pad_h - ext_h) / g.stride_h + 1;
  g.out_w = (g.in_w + 2 * g.pad_w - ext_w) / g.stride_w + 1;
  return g;
}

namespace detail {
/// Index of weight (o, c, ky, kx) in a tensor of the given layout.
inline std::size_t weight_offset(weight_layout layout, std::size_t o, std::size_t c, std::size_t ky,
                                 std::size_t kx, std::size_t cin, std::size_t kh,
                                 std::size_t kw) noexcept {
  return layout == weight_layout::oihw ? ((o * cin + c) * kh + ky) * kw + kx
                                       : ((o * kh + ky) * kw + kx) * cin + c;
}

/// (out_c, cin/groups, kh, kw) of a 4-d weight tensor shape.
inline std::array<std::size_t, 4> weight_dims(std::span<const std::size_t> shape,
                                              weight_layout layout, const char* who) {
  if (shape.size() != 4)
    throw shape_error(mixq::detail::cat(who, ": weights of shape ", shape_string(shape),
                                        " are not 4-d: expected OIHW or OHWI"));
  if (layout == weight_layout::oihw) return {shape[0], shape[1], shape[2], shape[3]};
  return {shape[0], shape[3], shape[1], shape[2]};
}
}  // namespace detail

namespace detail {
/// The oracle's loops, instantiated per storage-type pair only.
template <class AS, class WS>
tensor<std::int32_t> reference_conv2d_impl(const tensor<AS>& input, const tensor<WS>& weights,
                                           weight_layout layout, const conv2d_params& p) {
  const auto [out_c, cin_g, kh, kw] = weight_dims(weights.shape(), layout, "reference_conv2d");
  const conv2d_geometry g =
      make_conv2d_geometry(input.shape(), out_c, cin_g, kh, kw, p.groups, p, "reference_conv2d");
  const std::size_t cout_g = g.cout_per_group();
  const std::int64_t za = p.activation_zero_point, pad = p.pad_code();
  tensor<std::int32_t> out({g.batch, g.out_h, g.out_w, g.out_c});
  std::size_t idx = 0;
  for (std::size_t n = 0; n < g.batch; ++n)
    for (std::size_t oh = 0; oh < g.out_h; ++oh)
      for (std::size_t ow = 0; ow < g.out_w; ++ow)
        for (std::size_t o = 0; o < g.out_c; ++o) {
          const std::size_t grp = o / cout_g;
          std::int64_t acc = 0;
          for (std::size_t ky = 0; ky < kh; ++ky)
            for (std::size_t kx = 0; kx < kw; ++kx) {
              const std::ptrdiff_t y = g.in_y(oh, ky), x = g.in_x(ow, kx);
              for (std::size_t c = 0; c < cin_g; ++c) {
                const std::int64_t a =
                    g.inside(y, x)
                        ? std::int64_t(
                              input[((n * g.in_h + std::size_t(y)) * g.in_w + std::size_t(x)) *
                                        g.in_c +
                                    grp * cin_g + c])
                        : pad;
                const std::int64_t w = weights[weight_offset(layout, o, c, ky, kx, cin_g, kh, kw)];
                acc += (a - za) * w;
              }
            }
          out[idx++] = static_cast<std::int32_t>(static_cast<std::uint32_t>(acc));
        }
  return out;
}
}  // namespace detail

/// The oracle: plain loops over the integer codes of an NHWC input and weights of `layout`,
/// accumulated in int64 and returned as int32 (wrapping like the fast path when it overflows).
/// Values are read as they are (not checked against the types).
template <quantized_type AT, quantized_type WT>
tensor<std::int32_t> reference_conv2d(const tensor<typename AT::storage_type>& input,
                                      const tensor<typename WT::storage_type>& weights,
                                      weight_layout layout, const conv2d_params& p = {}) {
  return detail::reference_conv2d_impl(input, weights, layout, p);
}

}  // namespace mixq::kernels
