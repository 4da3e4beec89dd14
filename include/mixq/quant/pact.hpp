// PACT activation quantization (algorithms.md §1.3) with a learnable clipping value alpha:
// one-sided y = clip(x, 0, alpha), y_q = (alpha / L) round(L y / alpha); two-sided clips to
// [-alpha, alpha] and quantizes (y / alpha + 1) / 2 on the same grid. The alpha gradient is
// selectable: the PACT paper's indicator or the autograd (quantization residual) variant.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "mixq/autodiff/var.hpp"
#include "mixq/quant/code_tensor.hpp"

namespace mixq::quant {

using autodiff::ftensor;
using autodiff::var;

/// How d y_q / d alpha is computed.
enum class pact_alpha_gradient {
  /// PACT paper: 1 where x >= alpha (two-sided: -1 where x <= -alpha), 0 inside the range.
  paper,
  /// What autograd gives for alpha * round_ste(clip(x, 0, alpha) / alpha * L) / L (FracBits'
  /// code): (y_q - x) / alpha inside the range (the quantization residual, LSQ-like), 1 above
  /// alpha, 0 below 0 (two-sided: -1 below -alpha).
  residual,
};

struct pact_options {
  bool two_sided = false;
  pact_alpha_gradient alpha_gradient = pact_alpha_gradient::residual;
};

/// The codes of PACT-quantized activations. One-sided: unsigned k = round(L clip(x,0,a) / a),
/// scale a / L, zero point 0. Two-sided: k = round(L (clip(x,-a,a) / a + 1) / 2), scale 2a / L,
/// zero point L / 2 (value = a (2k / L - 1)). alpha must hold one finite value > 0.
inline code_tensor pact_codes(const ftensor& x, float alpha, int bits, bool two_sided = false) {
  detail::check_bits(bits, "pact");
  if (!(alpha > 0.0f) || !std::isfinite(alpha))
    throw value_error(detail::cat("pact: clipping value alpha ", alpha,
                                  " is invalid: expected a finite value > 0"));
  const int L = (1 << bits) - 1;
  const float fl = float(L);
  code_tensor c;
  c.type = bitwidth{bits, false};
  c.shape = x.shape();
  c.codes.resize(x.size());
  c.scale = {two_sided ? 2.0f * alpha / fl : alpha / fl};
  c.zero_point = {two_sided ? 0.5f * fl : 0.0f};
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) throw value_error(detail::cat("pact: activation ", i, " is NaN"));
    float u;
    if (two_sided)
      u = (std::clamp(x[i], -alpha, alpha) / alpha + 1.0f) * 0.5f;
    else
      u = std::clamp(x[i], 0.0f, alpha) / alpha;
    c.codes[i] = std::int32_t(std::clamp(std::nearbyint(fl * u), 0.0f, fl));
  }
  return c;
}

/// PACT fake quantization; alpha is a var of shape [1] (a learnable parameter). Forward =
/// pact_codes(x, alpha).dequantize(). dy/dx = 1 for lo <= x <= alpha (lo = 0 or -alpha), else
/// 0; dy/dalpha as `options.alpha_gradient` says.
inline var pact(const var& x, const var& alpha, int bits, const pact_options& options = {}) {
  if (alpha.size() != 1)
    throw shape_error(
        detail::cat("pact: alpha has shape ", shape_string(alpha.shape()), "; expected one value"));
  const float a = alpha.value()[0];
  const code_tensor codes = pact_codes(x.value(), a, bits, options.two_sided);
  ftensor y = codes.dequantize();
  return autodiff::detail::make_result(
      std::move(y), {x, alpha}, "pact", [a, options](autodiff::node& self) {
        const float* px = self.parents[0]->value.data();
        const float* py = self.value.data();
        const float* g = self.grad.data();
        const std::size_t n = self.value.size();
        const float lo = options.two_sided ? -a : 0.0f;
        if (ftensor* gx = autodiff::detail::parent_grad(self, 0))
          for (std::size_t i = 0; i < n; ++i)
            if (px[i] >= lo && px[i] <= a) (*gx)[i] += g[i];
        if (ftensor* ga = autodiff::detail::parent_grad(self, 1)) {
          double s = 0;
          const bool paper = options.alpha_gradient == pact_alpha_gradient::paper;
          for (std::size_t i = 0; i < n; ++i) {
            const float v = px[i];
            if (paper ? v >= a : v > a)
              s += g[i];
            else if (options.two_sided && (paper ? v <= lo : v < lo))
              s -= g[i];
            else if (!paper && v >= lo)
              s += double(g[i]) * (double(py[i]) - v) / a;
          }
          (*ga)[0] += float(s);
        }
      });
}

/// Base quantizer adaptor for fracbits_quantize: PACT with its own alpha (per layer bits).
struct pact_quantizer {
  var alpha;
  pact_options options{};
  var operator()(const var& x, std::span<const int> bits) const {
    if (bits.size() != 1)
      throw shape_error(
          detail::cat("pact: ", bits.size(), " bit-widths given; activations take one per layer"));
    return pact(x, alpha, bits[0], options);
  }
};

}  // namespace mixq::quant
