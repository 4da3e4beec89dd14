// activation_grid: the one-sided (unsigned) grid a static activation quantizer puts a layer's
// input on, as a value: PACT's (code = rint(L clip(x, 0, alpha) / alpha)) or LSQ's (code =
// rint(clip(x / step, 0, L))), with the quantizers' own float arithmetic, so that code() agrees
// bit for bit with quant::pact_codes and quant::lsq_codes. Policies report it per layer;
// deployment encodes integer inputs with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "mixq/core/error.hpp"

namespace mixq::quant {

/// Which quantizer's one-sided grid an activation_grid is.
enum class activation_grid_kind : std::uint8_t {
  pact = 0,  ///< value = alpha, the clip value: step alpha / L, levels 0..L
  step = 1,  ///< value = the step (LSQ's s): levels 0..L times the step
};

/// A one-sided activation grid of 2^bits levels. Built with pact(alpha) or step(s).
struct activation_grid {
  activation_grid_kind kind = activation_grid_kind::pact;
  float value = 1.0f;  ///< PACT's clip value alpha, or LSQ's step

  static constexpr activation_grid pact(float alpha) noexcept {
    return {activation_grid_kind::pact, alpha};
  }
  static constexpr activation_grid step(float s) noexcept {
    return {activation_grid_kind::step, s};
  }

  static constexpr int max_code(int bits) noexcept { return (1 << bits) - 1; }

  /// The real value of code 1 (value of code k = k * scale).
  float scale(int bits) const noexcept {
    return kind == activation_grid_kind::step ? value : value / float(max_code(bits));
  }

  /// PACT: clamp(nearbyint(L * (clamp(x, 0, alpha) / alpha)), 0, L), quant::pact_codes'
  /// one-sided arithmetic. rint rather than nearbyint: the same value (current rounding mode,
  /// half to even), but g++ inlines and vectorises rint, nearbyint stays a libm call.
  float pact_code(float x, int bits) const noexcept {
    const float levels = float(max_code(bits));
    const float u = std::clamp(x, 0.0f, value) / value;
    return std::clamp(std::rint(levels * u), 0.0f, levels);
  }
  /// LSQ: nearbyint(clamp(x / step, 0, L)), quant::lsq_codes' unsigned arithmetic (its
  /// clamp's lower end is -0.0f, which rounds to the same code 0). max/min in this order also
  /// send NaN to code 0.
  float step_code(float x, int bits) const noexcept {
    const float levels = float(max_code(bits));
    return std::rint(std::min(std::max(0.0f, x / value), levels));
  }
  /// The code of x, 0..2^bits - 1.
  std::int32_t code(float x, int bits) const noexcept {
    return std::int32_t(kind == activation_grid_kind::step ? step_code(x, bits)
                                                           : pact_code(x, bits));
  }

  /// "clip value" or "step": what value is, for messages.
  const char* value_name() const noexcept {
    return kind == activation_grid_kind::step ? "step" : "clip value";
  }
  /// value_error unless the kind is known and the value finite and > 0.
  void validate(const std::string& who) const {
    if (kind != activation_grid_kind::pact && kind != activation_grid_kind::step)
      throw value_error(mixq::detail::cat(who, ": activation grid kind ", int(kind),
                                          ": expected 0 (PACT) or 1 (step)"));
    if (!(value > 0.0f) || !std::isfinite(value))
      throw value_error(mixq::detail::cat(who, ": activation ", value_name(), " ", value,
                                          " is invalid: expected a finite value > 0"));
  }

  friend constexpr bool operator==(const activation_grid&, const activation_grid&) = default;
};

}  // namespace mixq::quant
