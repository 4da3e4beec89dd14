// Uniform affine fake quantization on autodiff vars: symmetric or asymmetric, per tensor or per
// output channel, with quant_params given (static ranges) or chosen from the tensor's own range.
// Straight-through gradient: dy/dx = 1 inside the representable range, 0 where it saturates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mixq/autodiff/var.hpp"
#include "mixq/core/quant_params.hpp"
#include "mixq/quant/code_tensor.hpp"

namespace mixq::quant {

using autodiff::ftensor;
using autodiff::var;

enum class granularity {
  per_tensor,   ///< one scale and zero point for the whole tensor
  per_channel,  ///< one per outer (output-channel) slice
};

namespace detail {
inline void check_params_for(const quant_params& p, bitwidth type, const shape_t& s,
                             const char* who) {
  type.validate();
  p.validate();
  if (p.channels() > 1 && (s.empty() || s[0] != p.channels()))
    throw shape_error(cat(who, ": ", p.channels(), " per-channel parameters for shape ",
                          shape_string(s), ": expected one per outer channel"));
  for (std::size_t c = 0; c < p.channels(); ++c) {
    const bool ok = type.is_binary()
                        ? p.zero_point[c] == 0
                        : p.zero_point[c] >= code_min(type) && p.zero_point[c] <= code_max(type);
    if (!ok)
      throw value_error(cat(who, ": zero point ", p.zero_point[c], " (channel ", c,
                            ") is not a value of ", type.name()));
  }
}
}  // namespace detail

/// Codes of `x` under `p` for `type`: round half to even of x / scale + zero point, saturated
/// (binary: +1 for x >= 0, else -1), exactly as core's quantize(). NaN raises value_error.
inline code_tensor uniform_codes(const ftensor& x, const quant_params& p, bitwidth type) {
  detail::check_params_for(p, type, x.shape(), "uniform_codes");
  code_tensor out;
  out.type = type;
  out.shape = x.shape();
  out.codes.resize(x.size());
  out.scale = p.scale;
  out.zero_point.assign(p.zero_point.begin(), p.zero_point.end());
  const std::size_t block = out.channel_size();
  const double lo = detail::code_min(type), hi = detail::code_max(type);
  for (std::size_t c = 0; c < p.channels(); ++c)
    for (std::size_t i = c * block; i < (c + 1) * block; ++i) {
      if (std::isnan(x[i]))
        throw value_error(detail::cat("uniform_codes: value ", i, " is NaN: expected a number"));
      if (type.is_binary()) {
        out.codes[i] = x[i] >= 0.0f ? 1 : -1;
      } else {
        const double q = std::nearbyint(double(x[i]) / double(p.scale[c])) + p.zero_point[c];
        out.codes[i] = std::int32_t(std::clamp(q, lo, hi));
      }
    }
  return out;
}

/// Fake quantization with fixed parameters: forward = uniform_codes(x).dequantize(); the
/// straight-through gradient passes where min <= x / scale + zero point <= max (binary:
/// |x / scale| <= 1) and is 0 where the value saturates. The scale gets no gradient.
inline var fake_quantize(const var& x, const quant_params& p, bitwidth type) {
  const code_tensor codes = uniform_codes(x.value(), p, type);
  ftensor y = codes.dequantize();
  const std::size_t block = codes.channel_size();
  const float lo = type.is_binary() ? -1.0f : float(detail::code_min(type));
  const float hi = type.is_binary() ? 1.0f : float(detail::code_max(type));
  return autodiff::detail::make_result(
      std::move(y), {x}, "fake_quantize", [p, block, lo, hi](autodiff::node& self) {
        ftensor* gx = autodiff::detail::parent_grad(self, 0);
        if (!gx) return;
        const float* px = self.parents[0]->value.data();
        for (std::size_t c = 0; c < p.channels(); ++c)
          for (std::size_t i = c * block; i < (c + 1) * block; ++i) {
            const float u = px[i] / p.scale[c] + float(p.zero_point[c]);
            if (u >= lo && u <= hi) (*gx)[i] += self.grad[i];
          }
      });
}

/// Parameters for `type` from the range of `x` (per tensor or per outer channel), by core's
/// choose_params: symmetric = zero point 0, asymmetric = [min, max] onto the full code range.
inline quant_params choose_uniform_params(const ftensor& x, bitwidth type, quant_scheme scheme,
                                          granularity g = granularity::per_tensor) {
  const std::size_t channels =
      detail::channel_count(x.shape(), g == granularity::per_channel, "choose_uniform_params");
  return dispatch(
      [&](auto tag) {
        using Q = typename decltype(tag)::type;
        if (channels == 1) return choose_params<Q>(x.span(), scheme);
        return choose_params_per_channel<Q>(x.span(), channels, scheme);
      },
      type);
}

/// Dynamic-range fake quantization: parameters from x's own range (treated as constants in
/// the backward pass), then fake_quantize().
inline var uniform_quantize(const var& x, bitwidth type, quant_scheme scheme,
                            granularity g = granularity::per_tensor) {
  return fake_quantize(x, choose_uniform_params(x.value(), type, scheme, g), type);
}

}  // namespace mixq::quant
