// Affine quantization parameters (real = scale * (q - zero_point)), per tensor or per output
// channel; quantize (round half to even, saturate) and dequantize over float spans; and the
// choice of scale and zero point from a value range for symmetric and asymmetric schemes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"

namespace mixq {

enum class quant_scheme {
  symmetric,   ///< zero point 0, range [-m, m] (unsigned types: [0, m])
  asymmetric,  ///< range [lo, hi] mapped onto [Q::min, Q::max] with an integer zero point
};

/// Scale and zero point for one tensor (size 1) or one per channel. Channels are the outermost
/// dimension: channel c owns the contiguous block [c*n/C, (c+1)*n/C) of a tensor of n values.
struct quant_params {
  std::vector<float> scale{1.0f};
  std::vector<std::int32_t> zero_point{0};

  static quant_params per_tensor(float s, std::int32_t zp = 0) { return {{s}, {zp}}; }
  static quant_params per_channel(std::vector<float> s, std::vector<std::int32_t> zp) {
    quant_params p{std::move(s), std::move(zp)};
    p.validate();
    return p;
  }

  std::size_t channels() const noexcept { return scale.size(); }
  bool is_per_channel() const noexcept { return scale.size() > 1; }

  /// Throws value_error for a non-positive or non-finite scale, or mismatched sizes.
  void validate() const {
    if (scale.empty() || scale.size() != zero_point.size())
      throw value_error(detail::cat("quant_params has ", scale.size(), " scales and ",
                                    zero_point.size(), " zero points: expected equal, >= 1"));
    for (std::size_t c = 0; c < scale.size(); ++c)
      if (!(scale[c] > 0.0f) || !std::isfinite(scale[c]))
        throw value_error(detail::cat("quantization scale ", scale[c], " (channel ", c,
                                      ") is invalid: expected a finite value > 0"));
  }
  /// validate(), and that every zero point is a value of Q (binary types need zero point 0).
  template <quantized_type Q>
  void validate_for() const {
    validate();
    for (std::size_t c = 0; c < zero_point.size(); ++c) {
      const bool ok = Q::is_binary ? zero_point[c] == 0
                                   : zero_point[c] >= Q::min && zero_point[c] <= Q::max;
      if (!ok)
        throw value_error(detail::cat("zero point ", zero_point[c], " (channel ", c,
                                      ") does not fit ", bitwidth_of<Q>().name(), ": expected ",
                                      Q::is_binary ? "0" : "a value in its range"));
    }
  }
};

namespace detail {
inline std::size_t channel_block(const quant_params& p, std::size_t n) {
  if (n % p.channels() != 0)
    throw shape_error(detail::cat(n, " values cannot be split into ", p.channels(),
                                  " channels of equal size"));
  return p.channels() == 0 ? 0 : n / p.channels();
}

/// One value: round half to even on x/scale + zero point, then saturate to Q's range.
template <quantized_type Q>
typename Q::storage_type quantize_one(float x, float scale, std::int32_t zp) {
  if constexpr (Q::is_binary) {
    return static_cast<typename Q::storage_type>(x >= 0.0f ? 1 : -1);
  } else {
    // nearbyint honours the default rounding mode, round-to-nearest-even; dividing (rather
    // than multiplying by a rounded reciprocal) keeps exact halves exact.
    const double q = std::nearbyint(static_cast<double>(x) / static_cast<double>(scale)) + zp;
    const double c = std::clamp(q, double(Q::min), double(Q::max));
    return static_cast<typename Q::storage_type>(c);
  }
}
}  // namespace detail

/// Quantizes `x` into `out` (same length). NaN inputs raise value_error.
template <quantized_type Q>
void quantize(std::span<const float> x, const quant_params& p,
              std::span<typename Q::storage_type> out) {
  p.validate_for<Q>();
  if (out.size() != x.size())
    throw shape_error(detail::cat("quantize: output has ", out.size(), " values, expected ",
                                  x.size()));
  const std::size_t block = detail::channel_block(p, x.size());
  for (std::size_t c = 0; c < p.channels(); ++c) {
    for (std::size_t i = c * block; i < (c + 1) * block; ++i) {
      if (std::isnan(x[i]))
        throw value_error(detail::cat("quantize: value ", i, " is NaN: expected a number"));
      out[i] = detail::quantize_one<Q>(x[i], p.scale[c], p.zero_point[c]);
    }
  }
}

template <quantized_type Q>
std::vector<typename Q::storage_type> quantize(std::span<const float> x, const quant_params& p) {
  std::vector<typename Q::storage_type> out(x.size());
  quantize<Q>(x, p, std::span<typename Q::storage_type>(out));
  return out;
}

/// real = scale * (q - zero_point).
template <quantized_type Q>
void dequantize(std::span<const typename Q::storage_type> q, const quant_params& p,
                std::span<float> out) {
  p.validate_for<Q>();
  if (out.size() != q.size())
    throw shape_error(detail::cat("dequantize: output has ", out.size(), " values, expected ",
                                  q.size()));
  const std::size_t block = detail::channel_block(p, q.size());
  for (std::size_t c = 0; c < p.channels(); ++c)
    for (std::size_t i = c * block; i < (c + 1) * block; ++i)
      out[i] = p.scale[c] * static_cast<float>(static_cast<std::int32_t>(q[i]) - p.zero_point[c]);
}

template <quantized_type Q>
std::vector<float> dequantize(std::span<const typename Q::storage_type> q, const quant_params& p) {
  std::vector<float> out(q.size());
  dequantize<Q>(q, p, std::span<float>(out));
  return out;
}

/// Scale and zero point that map the range [lo, hi] onto Q. The range is widened to hold 0
/// (so that 0 is exactly representable) and a degenerate range gets scale 1.
///  - symmetric, signed: scale = max(|lo|, |hi|) / Q::max, zero point 0; binary: scale = max|.|
///  - symmetric, unsigned: scale = max(hi, 0) / Q::max, zero point 0 (negative values clip)
///  - asymmetric: scale = (hi - lo) / (levels - 1), zero point = round(Q::min - lo / scale)
template <quantized_type Q>
quant_params choose_params(float lo, float hi, quant_scheme scheme) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi)
    throw value_error(detail::cat("choose_params: range [", lo, ", ", hi,
                                  "] is invalid: expected finite lo <= hi"));
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  auto safe = [](double s) {
    return static_cast<float>(s > 0 && std::isfinite(s) && s >= std::numeric_limits<float>::min()
                                  ? s
                                  : 1.0);
  };
  if (Q::is_binary) return quant_params::per_tensor(safe(std::max(-lo, hi)), 0);
  if (scheme == quant_scheme::symmetric) {
    const double m = Q::is_signed ? std::max(-double(lo), double(hi)) : double(hi);
    return quant_params::per_tensor(safe(m / Q::max), 0);
  }
  const float s = safe((double(hi) - double(lo)) / (Q::levels - 1));
  const double zp = std::nearbyint(Q::min - double(lo) / s);
  return quant_params::per_tensor(s, static_cast<std::int32_t>(std::clamp(zp, double(Q::min),
                                                                          double(Q::max))));
}

/// choose_params over the values' own range.
template <quantized_type Q>
quant_params choose_params(std::span<const float> x, quant_scheme scheme) {
  if (x.empty()) return quant_params::per_tensor(1.0f, 0);
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  return choose_params<Q>(*lo, *hi, scheme);
}

/// One scale and zero point per channel (the outermost dimension, `channels` equal blocks).
template <quantized_type Q>
quant_params choose_params_per_channel(std::span<const float> x, std::size_t channels,
                                       quant_scheme scheme) {
  if (channels == 0 || x.size() % channels != 0)
    throw shape_error(detail::cat(x.size(), " values cannot be split into ", channels,
                                  " channels of equal size"));
  const std::size_t block = x.size() / channels;
  quant_params p{std::vector<float>(channels), std::vector<std::int32_t>(channels)};
  for (std::size_t c = 0; c < channels; ++c) {
    const quant_params one = choose_params<Q>(x.subspan(c * block, block), scheme);
    p.scale[c] = one.scale[0];
    p.zero_point[c] = one.zero_point[0];
  }
  return p;
}

}  // namespace mixq
