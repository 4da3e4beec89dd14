// code_tensor: the integer codes of a quantized tensor and the affine map back to real values,
// value = scale[c] * (code - zero_point[c]) per tensor or per outer channel. Every fake-quant op
// in quant/ computes its forward value through this map, so simulation and integer inference
// share one definition; `to_quant_params` hands integral zero points to core's quant_params.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/quant_params.hpp"
#include "mixq/core/tensor.hpp"
// Policies that report code_tensors also report their input grids (search::bmpq_policy).
#include "mixq/quant/activation_grid.hpp"

namespace mixq::quant {

namespace detail {
using mixq::detail::cat;

/// Smallest and largest code of a runtime type (binary: -1, +1).
inline int code_min(bitwidth t) {
  return t.is_binary() ? -1 : (t.is_signed ? -(1 << (t.bits - 1)) : 0);
}
inline int code_max(bitwidth t) {
  return t.is_binary() ? 1 : (t.is_signed ? (1 << (t.bits - 1)) - 1 : (1 << t.bits) - 1);
}

/// Throws bits_error unless 1 <= bits <= 8.
inline void check_bits(int bits, const char* who) {
  if (bits < 1 || bits > 8)
    throw bits_error(cat(who, ": bit-width ", bits, " is out of range: expected 1..8"));
}

/// Number of (scale, zero point) channels of x: 1 per tensor, else its outer dimension.
inline std::size_t channel_count(const shape_t& s, bool per_channel, const char* who) {
  if (!per_channel) return 1;
  if (s.empty() || s[0] == 0)
    throw shape_error(cat(who,
                          ": per-channel quantization needs an outer (channel) dimension,"
                          " got shape ",
                          shape_string(s)));
  return s[0];
}

/// A per-channel bit list must have 1 entry or one per outer channel.
inline void check_bits_list(std::span<const int> bits, const shape_t& s, const char* who) {
  if (bits.empty() || (bits.size() > 1 && (s.empty() || s[0] != bits.size())))
    throw shape_error(cat(who, ": ", bits.size(), " bit-widths for shape ", shape_string(s),
                          ": expected 1 (per tensor) or one per outer channel"));
  for (int b : bits) check_bits(b, who);
}

/// A learnable scale / clipping value must be finite and > 0.
inline void check_positive(const tensor<float>& v, const char* who, const char* what) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!(v[i] > 0.0f) || !std::isfinite(v[i]))
      throw value_error(cat(who, ": ", what, " ", v[i],
                            (v.size() > 1 ? cat(" (channel ", i, ")") : ""),
                            " is invalid: expected a finite value > 0"));
}
}  // namespace detail

/// Codes of `type` (values in its range; binary codes are -1 / +1) in the row-major layout of
/// `shape`, with one (scale, zero_point) per tensor or one per outer channel (shape[0]).
/// The zero point is a real number in code units: DoReFa's grid {-1, ..., 1} is
/// (2 / L) * (k - L / 2) with L = 2^b - 1, a half-integral zero point; PACT and LSQ have 0.
struct code_tensor {
  bitwidth type{};
  shape_t shape;
  std::vector<std::int32_t> codes;
  std::vector<float> scale{1.0f};
  std::vector<float> zero_point{0.0f};

  std::size_t channels() const noexcept { return scale.size(); }
  /// Values per channel (the whole tensor when per tensor).
  std::size_t channel_size() const noexcept {
    return scale.empty() ? 0 : codes.size() / scale.size();
  }
  /// The real offset of channel c: value = scale * code + offset(c).
  float offset(std::size_t c) const { return -scale.at(c) * zero_point.at(c); }

  /// Throws value_error / shape_error unless the parts fit together and every code is a
  /// value of `type`.
  void validate() const {
    type.validate();
    if (codes.size() != shape_numel(shape))
      throw shape_error(detail::cat("code_tensor: ", codes.size(), " codes for shape ",
                                    shape_string(shape), " (", shape_numel(shape), " values)"));
    if (scale.empty() || scale.size() != zero_point.size())
      throw value_error(detail::cat("code_tensor: ", scale.size(), " scales and ",
                                    zero_point.size(), " zero points: expected equal, >= 1"));
    if (scale.size() > 1 && (shape.empty() || shape[0] != scale.size()))
      throw shape_error(detail::cat("code_tensor: ", scale.size(), " per-channel scales for shape ",
                                    shape_string(shape), ": expected one per outer channel"));
    for (std::size_t c = 0; c < scale.size(); ++c)
      if (!(scale[c] > 0.0f) || !std::isfinite(scale[c]) || !std::isfinite(zero_point[c]))
        throw value_error(detail::cat("code_tensor: scale ", scale[c], ", zero point ",
                                      zero_point[c], " (channel ", c,
                                      "): expected a finite scale > 0"));
    const int lo = detail::code_min(type), hi = detail::code_max(type);
    for (std::size_t i = 0; i < codes.size(); ++i) {
      const bool ok =
          type.is_binary() ? (codes[i] == -1 || codes[i] == 1) : (codes[i] >= lo && codes[i] <= hi);
      if (!ok)
        throw value_error(detail::cat("code_tensor: code ", codes[i], " at ", i,
                                      " is not a value of ", type.name()));
    }
  }

  /// The real values, value = scale[c] * (code - zero_point[c]): bit-identical to the forward
  /// value of the fake-quant op that produced the codes.
  tensor<float> dequantize() const {
    tensor<float> out(shape);
    const std::size_t block = channel_size();
    for (std::size_t c = 0; c < channels(); ++c)
      for (std::size_t i = c * block; i < (c + 1) * block; ++i)
        out[i] = scale[c] * (float(codes[i]) - zero_point[c]);
    return out;
  }

  /// core quant_params (real = scale * (q - zero_point), integer zero point). Throws
  /// value_error when a zero point is not an integer (DoReFa, two-sided PACT): such a grid
  /// needs the real offset, which integer inference folds into a row-sum correction.
  quant_params to_quant_params() const {
    quant_params p{scale, std::vector<std::int32_t>(zero_point.size())};
    for (std::size_t c = 0; c < zero_point.size(); ++c) {
      const float z = zero_point[c];
      if (z != std::nearbyint(z) || std::fabs(z) > float(std::numeric_limits<std::int32_t>::max()))
        throw value_error(detail::cat("code_tensor::to_quant_params: zero point ", z, " (channel ",
                                      c, ") is not an integer: the offset ", offset(c),
                                      " is not an integral multiple of the scale ", scale[c],
                                      "; use scale/zero_point (or offset()) directly"));
      p.zero_point[c] = std::int32_t(z);
    }
    p.validate();
    return p;
  }
};

}  // namespace mixq::quant
