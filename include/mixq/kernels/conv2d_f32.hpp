// conv2d_f32: the float convolution (NHWC input and output, OHWI or OIHW weights) as im2col +
// gemm_f32 per group; padding is 0.0f. The baseline the bit-serial convolution is measured
// against, and a float path for callers that need one.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_conv2d/reference.hpp"
#include "mixq/kernels/gemm_f32.hpp"

namespace mixq::kernels {

/// out (NHWC, N*OH*OW*Cout) = conv(input NHWC, weights of `layout`); p's zero point and
/// padding value are ignored (float padding is 0), p.gemm is ignored (gemm_f32 decides).
/// shape_error for inconsistent shapes or a wrong output size.
inline void conv2d_f32(const tensor<float>& input, const tensor<float>& weights,
                       weight_layout layout, std::span<float> out, const conv2d_params& p = {}) {
  const auto [out_c, cin_g, kh, kw] = detail::weight_dims(weights.shape(), layout, "conv2d_f32");
  const conv2d_geometry g =
      make_conv2d_geometry(input.shape(), out_c, cin_g, kh, kw, p.groups, p, "conv2d_f32");
  if (out.size() != g.output_size())
    throw shape_error(mixq::detail::cat("conv2d_f32: output has ", out.size(),
                                        " elements, expected ", g.output_size()));
  const std::size_t K = g.patch(), M = g.pixels(), cout_g = g.cout_per_group();
  // Weights of group grp as a K x cout/groups matrix (rows in the patch order (kh, kw, cin)),
  // so the GEMM's inner loop runs contiguously over output channels.
  std::vector<float> wk(g.groups * K * cout_g);
  for (std::size_t o = 0; o < out_c; ++o)
    for (std::size_t ky = 0; ky < kh; ++ky)
      for (std::size_t kx = 0; kx < kw; ++kx)
        for (std::size_t c = 0; c < cin_g; ++c)
          wk[((o / cout_g) * K + (ky * kw + kx) * cin_g + c) * cout_g + o % cout_g] =
              weights[detail::weight_offset(layout, o, c, ky, kx, cin_g, kh, kw)];
  aligned_vector<float> cols(M * K);
  for (std::size_t grp = 0; grp < g.groups; ++grp) {
    float* row = cols.data();
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t oh = 0; oh < g.out_h; ++oh)
        for (std::size_t ow = 0; ow < g.out_w; ++ow)
          for (std::size_t ky = 0; ky < kh; ++ky)
            for (std::size_t kx = 0; kx < kw; ++kx, row += cin_g) {
              const std::ptrdiff_t y = g.in_y(oh, ky), x = g.in_x(ow, kx);
              if (!g.inside(y, x)) {
                std::fill(row, row + cin_g, 0.0f);
                continue;
              }
              const float* src =
                  input.data() +
                  ((n * g.in_h + std::size_t(y)) * g.in_w + std::size_t(x)) * g.in_c + grp * cin_g;
              std::copy(src, src + cin_g, row);
            }
    gemm_f32(transpose::no, transpose::no, M, cout_g, K, 1.0f, cols.data(), K,
             wk.data() + grp * K * cout_g, cout_g, 0.0f, out.data() + grp * cout_g, g.out_c);
  }
}

}  // namespace mixq::kernels
