// bit_config: the per-layer weight and input-activation bit-widths a search produces and
// every later stage (quantized layers, cost model, deployment) consumes.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mixq/core/error.hpp"

namespace mixq::quant {

/// Per-layer weight bits and input-activation bits (the bits of the tensor the layer reads),
/// indexed like the model's quantizable layers.
struct bit_config {
  std::vector<int> w_bits;
  std::vector<int> a_bits;

  /// Same bits for every layer.
  static bit_config uniform(std::size_t layers, int w, int a) {
    return {std::vector<int>(layers, w), std::vector<int>(layers, a)};
  }

  std::size_t size() const noexcept { return w_bits.size(); }

  /// Lengths must equal the model's layer count (shape_error); bits must be 1..8 (bits_error).
  void validate(std::size_t layers) const {
    if (w_bits.size() != layers || a_bits.size() != layers)
      throw shape_error(mixq::detail::cat("bit_config has ", w_bits.size(), " weight and ",
                                          a_bits.size(), " activation bit-widths; expected ",
                                          layers, " each (one per quantizable layer)"));
    for (std::size_t i = 0; i < layers; ++i) {
      if (w_bits[i] < 1 || w_bits[i] > 8)
        throw bits_error(mixq::detail::cat("bit_config: weight bits of layer ", i, " are ",
                                           w_bits[i], "; expected 1..8"));
      if (a_bits[i] < 1 || a_bits[i] > 8)
        throw bits_error(mixq::detail::cat("bit_config: activation bits of layer ", i, " are ",
                                           a_bits[i], "; expected 1..8"));
    }
  }

  /// "w4a8 w2a2 ..." for logs.
  std::string to_string() const {
    std::string s;
    for (std::size_t i = 0; i < w_bits.size(); ++i) {
      if (i) s += ' ';
      s += 'w' + std::to_string(w_bits[i]) + 'a' +
           (i < a_bits.size() ? std::to_string(a_bits[i]) : std::string("?"));
    }
    return s;
  }

  friend bool operator==(const bit_config&, const bit_config&) = default;
};

}  // namespace mixq::quant
