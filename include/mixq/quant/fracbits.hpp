// FracBits (algorithms.md §3): a quantizer with a learnable real bit-width lambda, per layer or
// per output channel (kernel-wise). With lambda clamped to [min, max] and f = lambda - floor:
// Q(x) = f Q_{floor+1}(x) + (1 - f) Q_floor(x), generic over the base quantizer (DoReFa
// weights, PACT activations). Gradients: STE to x through both branches, <dy, Q_ceil - Q_floor>
// to lambda, none outside the clamp range.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <span>
#include <vector>

#include "mixq/autodiff/ops.hpp"
#include "mixq/quant/code_tensor.hpp"

namespace mixq::quant {

using autodiff::ftensor;
using autodiff::var;

/// A closed range of (real) bit-widths inside [1, 8].
struct bit_range {
  float min_bits = 1.0f;
  float max_bits = 8.0f;

  /// Throws bits_error unless 1 <= min_bits <= max_bits <= 8.
  void validate() const {
    if (!(min_bits >= 1.0f && min_bits <= max_bits && max_bits <= 8.0f))
      throw bits_error(detail::cat("bit range [", min_bits, ", ", max_bits,
                                   "] is invalid: expected 1 <= min <= max <= 8"));
  }
  /// This range with its minimum raised to `layer_min` (FracBits' per-layer minimums, e.g. 8
  /// for the first and last layer); bits_error when layer_min is outside [1, max_bits].
  bit_range with_minimum(float layer_min) const {
    validate();
    if (!(layer_min >= 1.0f && layer_min <= max_bits))
      throw bits_error(
          detail::cat("per-layer minimum ", layer_min, " bits is outside [1, ", max_bits, "]"));
    return {std::max(min_bits, layer_min), max_bits};
  }
};

/// A base quantizer for fracbits_quantize: q(x, bits) with one bit-width per layer or one per
/// outer channel.
template <class Q>
concept bits_quantizer = requires(const Q& q, const var& x, std::span<const int> bits) {
  { q(x, bits) } -> std::convertible_to<var>;
};

namespace detail {
/// y = qf + f (qc - qf) with f of size 1 or one per outer channel. dqf = (1 - f) dy,
/// dqc = f dy, df_c = sum over the channel of dy (qc - qf).
inline var fractional_mix(const var& qf, const var& qc, const var& f) {
  const std::size_t n = qf.size(), channels = f.size();
  const std::size_t block = channels ? n / channels : 0;
  ftensor y(qf.shape());
  const float *a = qf.value().data(), *b = qc.value().data(), *pf = f.value().data();
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t i = c * block; i < (c + 1) * block; ++i) y[i] = a[i] + pf[c] * (b[i] - a[i]);
  return autodiff::detail::make_result(
      std::move(y), {qf, qc, f}, "fractional_mix", [block, channels](autodiff::node& self) {
        const float* a = self.parents[0]->value.data();
        const float* b = self.parents[1]->value.data();
        const float* pf = self.parents[2]->value.data();
        const float* g = self.grad.data();
        ftensor* ga = autodiff::detail::parent_grad(self, 0);
        ftensor* gb = autodiff::detail::parent_grad(self, 1);
        ftensor* gf = autodiff::detail::parent_grad(self, 2);
        for (std::size_t c = 0; c < channels; ++c) {
          double dot = 0;
          for (std::size_t i = c * block; i < (c + 1) * block; ++i) {
            if (ga) (*ga)[i] += (1.0f - pf[c]) * g[i];
            if (gb) (*gb)[i] += pf[c] * g[i];
            dot += double(g[i]) * (double(b[i]) - a[i]);
          }
          if (gf) (*gf)[c] += float(dot);
        }
      });
}
}  // namespace detail

/// lambda clamped to `range`: the value min(max(lambda, min), max) with gradient 1 inside the
/// closed range and 0 outside (as torch's clamp), so a lambda pushed past a bound freezes.
inline var clamp_bits(const var& lambda, const bit_range& range) {
  range.validate();
  for (float v : lambda.value())
    if (!std::isfinite(v))
      throw value_error(detail::cat("fractional bit-width ", v, " is not a finite number"));
  return autodiff::clip(lambda, range.min_bits, range.max_bits);
}

/// Integer bit-widths of a clamped lambda: floor (per entry) and floor + 1 capped at max_bits.
inline void split_bits(const ftensor& clamped, const bit_range& range, std::vector<int>& lo,
                       std::vector<int>& hi) {
  lo.resize(clamped.size());
  hi.resize(clamped.size());
  for (std::size_t i = 0; i < clamped.size(); ++i) {
    lo[i] = int(std::floor(clamped[i]));
    hi[i] = std::min(lo[i] + 1, int(std::floor(range.max_bits)));
  }
}

/// FracBits quantization of x at real bit-width(s) `lambda` (shape [1], or [C] with C =
/// x.shape()[0] for kernel-wise weights). Forward (1 - f) base(x, floor) + f base(x, floor + 1)
/// with f = lambda - floor(lambda) after clamping to `range`; at integral lambda this is
/// base(x, lambda) exactly. The upper branch is floor + 1 (not ceil), so at integral lambda the
/// lambda gradient is the one-sided difference <dy, Q_{lambda+1} - Q_lambda> instead of 0.
template <bits_quantizer Base>
var fracbits_quantize(const var& x, const var& lambda, const bit_range& range, const Base& base) {
  if (lambda.size() != 1 && (x.shape().empty() || x.shape()[0] != lambda.size()))
    throw shape_error(detail::cat("fracbits: lambda has ", lambda.size(),
                                  " bit-widths for input shape ", shape_string(x.shape()),
                                  ": expected 1 or one per outer channel"));
  const var lam = clamp_bits(lambda, range);
  std::vector<int> lo, hi;
  split_bits(lam.value(), range, lo, hi);
  const var f = autodiff::sub(lam, autodiff::floor(lam));  // df/dlambda = 1 (inside the range)
  const var qf = base(x, std::span<const int>(lo));
  if (lo == hi) {
    // Every channel sits at max_bits: f = 0 and both branches coincide.
    return detail::fractional_mix(qf, qf, f);
  }
  const var qc = base(x, std::span<const int>(hi));
  return detail::fractional_mix(qf, qc, f);
}

/// A learnable real bit-width per layer (channels = 1) or per output channel, initialised to
/// `init` (FracBits: 3.5 = target + 0.5), with its clamp range (per-layer minimum included).
class fractional_bits {
 public:
  fractional_bits(float init, std::size_t channels = 1, bit_range range = {}) : range_(range) {
    range_.validate();
    if (channels == 0) throw shape_error("fractional_bits: needs at least one channel");
    if (!(init >= range_.min_bits && init <= range_.max_bits))
      throw bits_error(detail::cat("fractional_bits: initial bit-width ", init, " is outside [",
                                   range_.min_bits, ", ", range_.max_bits, "]"));
    lambda_ = var::parameter(ftensor({channels}, init));
  }
  /// The trainable parameter, shape [channels].
  const var& lambda() const noexcept { return lambda_; }
  const bit_range& range() const noexcept { return range_; }
  std::size_t channels() const { return lambda_.size(); }
  /// lambda clamped to the range (a var: use it in the cost regulariser).
  var clamped() const { return clamp_bits(lambda_, range_); }
  /// round(lambda + offset) clamped to the range, per channel (FracBits' final assignment).
  std::vector<int> rounded(float offset = 0.0f) const {
    std::vector<int> out(channels());
    for (std::size_t i = 0; i < out.size(); ++i) {
      const float v = std::clamp(lambda_.value()[i] + offset, range_.min_bits, range_.max_bits);
      out[i] = int(
          std::clamp(std::nearbyint(v), std::ceil(range_.min_bits), std::floor(range_.max_bits)));
    }
    return out;
  }
  /// Overwrites lambda (e.g. with the rounded bits at hard assignment).
  void assign(std::span<const float> values) {
    if (values.size() != channels())
      throw shape_error(detail::cat("fractional_bits::assign: ", values.size(), " values for ",
                                    channels(), " channels"));
    for (std::size_t i = 0; i < values.size(); ++i) lambda_.value()[i] = values[i];
  }
  /// Quantizes x with the base quantizer at the current lambda.
  template <bits_quantizer Base>
  var operator()(const var& x, const Base& base) const {
    return fracbits_quantize(x, lambda_, range_, base);
  }

 private:
  bit_range range_;
  var lambda_;
};

}  // namespace mixq::quant
