// Binary sign quantization: y = a * sign(x) with codes +-1 (sign(0) = +1) and a = 1 or the mean
// |x| per tensor or per outer channel (XNOR-Net). Straight-through gradient clipped at |x| <= 1
// (BinaryConnect's hardtanh), plus the exact derivative of the mean-|x| scale.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "mixq/autodiff/var.hpp"
#include "mixq/quant/code_tensor.hpp"
#include "mixq/quant/uniform.hpp"

namespace mixq::quant {

enum class binary_scaling {
  none,      ///< y = sign(x)
  mean_abs,  ///< y = mean|x| * sign(x) (per tensor or per outer channel)
};

/// The codes of the sign quantizer (binary type, +-1) and its scale(s).
inline code_tensor binary_codes(const ftensor& x, binary_scaling scaling = binary_scaling::none,
                                granularity g = granularity::per_tensor) {
  const std::size_t channels =
      scaling == binary_scaling::none
          ? 1
          : detail::channel_count(x.shape(), g == granularity::per_channel, "binary_sign");
  code_tensor c;
  c.type = bitwidth{1, true};
  c.shape = x.shape();
  c.codes.resize(x.size());
  c.scale.assign(channels, 1.0f);
  c.zero_point.assign(channels, 0.0f);
  const std::size_t block = c.channel_size();
  for (std::size_t ch = 0; ch < channels; ++ch) {
    double s = 0;
    for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
      if (std::isnan(x[i])) throw value_error(detail::cat("binary_sign: value ", i, " is NaN"));
      c.codes[i] = x[i] >= 0.0f ? 1 : -1;
      s += std::fabs(x[i]);
    }
    // An all-zero channel keeps a tiny positive scale so that the map stays valid.
    if (scaling == binary_scaling::mean_abs)
      c.scale[ch] =
          block ? std::max(float(s / double(block)), std::numeric_limits<float>::min()) : 1.0f;
  }
  return c;
}

/// Sign quantization, forward = binary_codes(x).dequantize(). With a_c the channel's scale and
/// n_c its size: dL/dx_j = a_c g_j [|x_j| <= 1] + (mean_abs only) sign(x_j) / n_c *
/// sum_{i in c} g_i code_i.
inline var binary_sign(const var& x, binary_scaling scaling = binary_scaling::none,
                       granularity g = granularity::per_tensor) {
  code_tensor codes = binary_codes(x.value(), scaling, g);
  ftensor y = codes.dequantize();
  const std::size_t block = codes.channel_size();
  return autodiff::detail::make_result(
      std::move(y), {x}, "binary_sign",
      [scale = std::move(codes.scale), block, scaling](autodiff::node& self) {
        ftensor* gx = autodiff::detail::parent_grad(self, 0);
        if (!gx) return;
        const float* px = self.parents[0]->value.data();
        const float* g = self.grad.data();
        for (std::size_t ch = 0; ch < scale.size(); ++ch) {
          double dot = 0;  // sum g_i code_i = d L / d a
          for (std::size_t i = ch * block; i < (ch + 1) * block; ++i)
            dot += double(g[i]) * (px[i] >= 0.0f ? 1.0 : -1.0);
          const float da = scaling == binary_scaling::mean_abs ? float(dot / double(block)) : 0.0f;
          for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
            float d = std::fabs(px[i]) <= 1.0f ? scale[ch] * g[i] : 0.0f;
            d += da * (px[i] > 0.0f ? 1.0f : (px[i] < 0.0f ? -1.0f : 0.0f));
            (*gx)[i] += d;
          }
        }
      });
}

}  // namespace mixq::quant
