// LSQ, learned step size quantization (algorithms.md §1.4): v_q = s round(clip(v / s, -Q_N, Q_P))
// with a learnable step s (per tensor or per outer channel). Straight-through rounding; the step
// gradient is round(v/s) - v/s inside the range, -Q_N / Q_P outside, scaled by 1/sqrt(N Q_P).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mixq/autodiff/var.hpp"
#include "mixq/quant/code_tensor.hpp"

namespace mixq::quant {

using autodiff::ftensor;
using autodiff::var;

namespace detail {
/// Q_N and Q_P of LSQ: signed b bits -> 2^(b-1), 2^(b-1) - 1; unsigned -> 0, 2^b - 1. Signed
/// 1-bit has Q_P = 0 (no gradient scale) and is rejected: use binary_sign for {-1, +1}.
inline void lsq_range(int bits, bool is_signed, int& qn, int& qp) {
  check_bits(bits, "lsq");
  if (is_signed && bits == 1)
    throw bits_error(
        "lsq: signed 1-bit has no positive level (Q_P = 0): expected bits >= 2 "
        "for signed LSQ (use binary_sign for {-1, +1} weights)");
  qn = is_signed ? 1 << (bits - 1) : 0;
  qp = is_signed ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
}

inline void check_step(const ftensor& step, const shape_t& x, const char* who) {
  if (step.size() != 1 && (x.empty() || x[0] != step.size()))
    throw shape_error(cat(who, ": step has ", step.size(), " values for input shape ",
                          shape_string(x), ": expected 1 or one per outer channel"));
  check_positive(step, who, "step size");
}
}  // namespace detail

/// The codes of LSQ: round(clip(v / s, -Q_N, Q_P)) as int<b> (signed) or uint<b>, scale s per
/// tensor or per outer channel, zero point 0.
inline code_tensor lsq_codes(const ftensor& x, const ftensor& step, int bits, bool is_signed) {
  int qn = 0, qp = 0;
  detail::lsq_range(bits, is_signed, qn, qp);
  detail::check_step(step, x.shape(), "lsq");
  code_tensor c;
  c.type = bitwidth{bits, is_signed};
  c.shape = x.shape();
  c.codes.resize(x.size());
  c.scale.assign(step.begin(), step.end());
  c.zero_point.assign(step.size(), 0.0f);
  const std::size_t block = c.channel_size();
  for (std::size_t ch = 0; ch < step.size(); ++ch)
    for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
      if (std::isnan(x[i])) throw value_error(detail::cat("lsq: value ", i, " is NaN"));
      const float u = std::clamp(x[i] / step[ch], -float(qn), float(qp));
      c.codes[i] = std::int32_t(std::nearbyint(u));
    }
  return c;
}

/// LSQ's initial step, 2 mean|v| / sqrt(Q_P) (per tensor).
inline float lsq_initial_step(const ftensor& x, int bits, bool is_signed) {
  int qn = 0, qp = 0;
  detail::lsq_range(bits, is_signed, qn, qp);
  double s = 0;
  for (float v : x) s += std::fabs(v);
  const double init = x.size() ? 2.0 * s / double(x.size()) / std::sqrt(double(qp)) : 1.0;
  return init > 0 ? float(init) : 1.0f;
}

/// LSQ fake quantization; `step` is a var of shape [1] or [C] (C = x.shape()[0]).
/// Forward = lsq_codes(x, step).dequantize(). dy/dx = 1 where -Q_N <= x/s <= Q_P, else 0;
/// dy/ds = round(x/s) - x/s inside, -Q_N below, Q_P above, times `grad_scale` (0 selects LSQ's
/// 1/sqrt(N Q_P), N = values per step).
inline var lsq(const var& x, const var& step, int bits, bool is_signed, float grad_scale = 0) {
  const code_tensor codes = lsq_codes(x.value(), step.value(), bits, is_signed);
  ftensor y = codes.dequantize();
  int qn = 0, qp = 0;
  detail::lsq_range(bits, is_signed, qn, qp);
  const std::size_t block = codes.channel_size();
  const float gs = grad_scale > 0 ? grad_scale : float(1.0 / std::sqrt(double(block) * double(qp)));
  return autodiff::detail::make_result(
      std::move(y), {x, step}, "lsq", [qn, qp, block, gs](autodiff::node& self) {
        const float* px = self.parents[0]->value.data();
        const float* ps = self.parents[1]->value.data();
        const std::size_t channels = self.parents[1]->value.size();
        const float* g = self.grad.data();
        ftensor* gx = autodiff::detail::parent_grad(self, 0);
        ftensor* gsv = autodiff::detail::parent_grad(self, 1);
        for (std::size_t ch = 0; ch < channels; ++ch) {
          double acc = 0;
          for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
            const float u = px[i] / ps[ch];
            if (u < -float(qn)) {
              acc -= double(g[i]) * qn;
            } else if (u > float(qp)) {
              acc += double(g[i]) * qp;
            } else {
              if (gx) (*gx)[i] += g[i];
              acc += double(g[i]) * (double(std::nearbyint(u)) - u);
            }
          }
          if (gsv) (*gsv)[ch] += float(acc) * gs;
        }
      });
}

}  // namespace mixq::quant
