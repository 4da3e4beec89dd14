// DoReFa weight quantization (algorithms.md §1.2): w_t = tanh(w) / max|tanh(w)| over the layer,
// w_q = 2 round_b((w_t + 1) / 2) - 1 on the grid {-1, -1 + 2/L, ..., 1}, L = 2^b - 1. One node:
// straight-through rounding, exact derivatives through tanh and the max normalisation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "mixq/autodiff/var.hpp"
#include "mixq/quant/code_tensor.hpp"

namespace mixq::quant {

using autodiff::ftensor;
using autodiff::var;

namespace detail {
/// Codes of DoReFa weights with `bits` per tensor (1 entry) or per outer channel, plus the
/// normalised tanh values the backward pass needs. All channels 1-bit: binary codes +-1
/// (scale 1); otherwise unsigned codes k of the widest channel type with scale 2/L and zero
/// point L/2 per channel, i.e. value = (2/L) (k - L/2) = 2k/L - 1.
struct dorefa_encoding {
  code_tensor codes;
  ftensor t;               // tanh(w)
  float m = 1;             // max |tanh(w)| (1 when all weights are 0)
  std::size_t argmax = 0;  // where the max was found
};

inline dorefa_encoding dorefa_encode(const ftensor& w, std::span<const int> bits, const char* who) {
  check_bits_list(bits, w.shape(), who);
  dorefa_encoding e;
  e.t = ftensor(w.shape());
  float m = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (std::isnan(w[i])) throw value_error(cat(who, ": weight ", i, " is NaN"));
    e.t[i] = std::tanh(w[i]);
    if (std::fabs(e.t[i]) > m) m = std::fabs(e.t[i]), e.argmax = i;
  }
  e.m = m > 0.0f ? m : 1.0f;
  const bool binary = std::all_of(bits.begin(), bits.end(), [](int b) { return b == 1; });
  const int widest = *std::max_element(bits.begin(), bits.end());
  code_tensor& c = e.codes;
  c.type = binary ? bitwidth{1, true} : bitwidth{widest, false};
  c.shape = w.shape();
  c.codes.resize(w.size());
  c.scale.assign(bits.size(), 1.0f);
  c.zero_point.assign(bits.size(), 0.0f);
  const std::size_t block = bits.size() ? w.size() / bits.size() : 0;
  for (std::size_t ch = 0; ch < bits.size(); ++ch) {
    const int L = (1 << bits[ch]) - 1;
    if (!binary) c.scale[ch] = 2.0f / float(L), c.zero_point[ch] = 0.5f * float(L);
    for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
      const float u = (e.t[i] / e.m + 1.0f) * 0.5f;  // in [0, 1]
      const auto k = std::int32_t(std::clamp(std::nearbyint(float(L) * u), 0.0f, float(L)));
      c.codes[i] = binary ? 2 * k - 1 : k;
    }
  }
  return e;
}
}  // namespace detail

/// The integer codes and affine map of DoReFa-quantized weights at `bits`.
inline code_tensor dorefa_codes(const ftensor& w, int bits) {
  const int b[1] = {bits};
  return detail::dorefa_encode(w, b, "dorefa_codes").codes;
}

/// DoReFa fake-quantized weights; `bits` has one entry (per layer) or one per output channel
/// (kernel-wise bit-widths; the max normalisation stays layer-wide). Forward =
/// dorefa_codes(w).dequantize(). Backward with g = dL/dw_q, t = tanh(w), m = |t_j*|:
/// dL/dt_i = g_i / m, plus sign(t_j*) * (-sum_i g_i t_i / m^2) at j*; dL/dw = dL/dt (1 - t^2).
inline var dorefa_weights(const var& w, std::span<const int> bits) {
  auto e = detail::dorefa_encode(w.value(), bits, "dorefa_weights");
  ftensor y = e.codes.dequantize();
  return autodiff::detail::make_result(
      std::move(y), {w}, "dorefa_weights",
      [t = std::move(e.t), m = e.m, j = e.argmax](autodiff::node& self) {
        ftensor* gw = autodiff::detail::parent_grad(self, 0);
        if (!gw) return;
        const float* g = self.grad.data();
        double dot = 0;
        for (std::size_t i = 0; i < t.size(); ++i) dot += double(g[i]) * t[i];
        const float dm = float(-dot / (double(m) * m));
        for (std::size_t i = 0; i < t.size(); ++i) {
          float dt = g[i] / m;
          if (i == j) dt += dm * (t[i] > 0.0f ? 1.0f : (t[i] < 0.0f ? -1.0f : 0.0f));
          (*gw)[i] += dt * (1.0f - t[i] * t[i]);
        }
      });
}
inline var dorefa_weights(const var& w, int bits) {
  const int b[1] = {bits};
  return dorefa_weights(w, std::span<const int>(b));
}

/// Base quantizer adaptor for fracbits_quantize (per layer or kernel-wise bits).
struct dorefa_weight_quantizer {
  var operator()(const var& w, std::span<const int> bits) const { return dorefa_weights(w, bits); }
};

}  // namespace mixq::quant
