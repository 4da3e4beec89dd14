// Cost model for mixed-precision search: per-layer shapes (params, MACs), bit configurations,
// and model totals (params, MACs, BitOps, size) under the counting conventions of the papers,
// plus plain-double relaxed costs (FracBits, EBS/EdMIPS, DNAS) with their exact gradients.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/quant/bit_config.hpp"

namespace mixq::search {

namespace detail {
using mixq::detail::cat;
}  // namespace detail

enum class layer_kind { conv, depthwise_conv, linear };

/// One quantizable layer (conv, depthwise conv or fully connected) and what it costs.
/// `params` are the weights only; `bias_params` and `bn_params` (gamma, beta of a batch norm
/// that follows the layer) are kept apart because papers count them differently.
struct layer_cost {
  std::string name;
  layer_kind kind = layer_kind::conv;
  std::int64_t in_channels = 0, out_channels = 0;
  std::int64_t kernel = 1, stride = 1, groups = 1;
  std::int64_t out_h = 1, out_w = 1;
  std::int64_t params = 0;       // C_out * (C_in/g) * k * k
  std::int64_t bias_params = 0;  // C_out if the layer has a bias
  std::int64_t bn_params = 0;    // 2 * C_out if a batch norm follows
  std::int64_t macs = 0;         // params * H_out * W_out
};

/// A square conv with "same"-style padding (k/2, as torchvision uses): the output size follows
/// from the input size and the stride. `groups == in_channels == out_channels` (> 1) makes it
/// depthwise.
inline layer_cost make_conv(std::string name, std::int64_t in_channels, std::int64_t out_channels,
                            std::int64_t kernel, std::int64_t stride, std::int64_t groups,
                            std::int64_t in_size, bool has_bias = false, bool has_bn = true) {
  if (in_channels <= 0 || out_channels <= 0 || kernel <= 0 || stride <= 0 || groups <= 0 ||
      in_size <= 0)
    throw shape_error(detail::cat("make_conv(", name, "): channels ", in_channels, "->",
                                  out_channels, ", kernel ", kernel, ", stride ", stride,
                                  ", groups ", groups, ", input size ", in_size,
                                  "; expected all positive"));
  if (in_channels % groups != 0 || out_channels % groups != 0)
    throw shape_error(detail::cat("make_conv(", name, "): groups ", groups,
                                  " must divide in_channels ", in_channels, " and out_channels ",
                                  out_channels));
  const std::int64_t pad = kernel / 2;
  const std::int64_t out = (in_size + 2 * pad - kernel) / stride + 1;
  if (out <= 0)
    throw shape_error(detail::cat("make_conv(", name, "): input size ", in_size,
                                  " is too small for kernel ", kernel));
  layer_cost l;
  l.name = std::move(name);
  l.kind = (groups > 1 && groups == in_channels && groups == out_channels)
               ? layer_kind::depthwise_conv
               : layer_kind::conv;
  l.in_channels = in_channels;
  l.out_channels = out_channels;
  l.kernel = kernel;
  l.stride = stride;
  l.groups = groups;
  l.out_h = l.out_w = out;
  l.params = out_channels * (in_channels / groups) * kernel * kernel;
  l.bias_params = has_bias ? out_channels : 0;
  l.bn_params = has_bn ? 2 * out_channels : 0;
  l.macs = l.params * out * out;
  return l;
}

/// A fully connected layer: a 1x1 conv on a 1x1 input.
inline layer_cost make_linear(std::string name, std::int64_t in_features, std::int64_t out_features,
                              bool has_bias = true) {
  if (in_features <= 0 || out_features <= 0)
    throw shape_error(detail::cat("make_linear(", name, "): features ", in_features, "->",
                                  out_features, "; expected both positive"));
  layer_cost l;
  l.name = std::move(name);
  l.kind = layer_kind::linear;
  l.in_channels = in_features;
  l.out_channels = out_features;
  l.params = in_features * out_features;
  l.bias_params = has_bias ? out_features : 0;
  l.macs = l.params;
  return l;
}

/// The quantizable layers of a network in execution order (first = the stem conv, last = the
/// classifier), plus the groups of layers that read the same input tensor (a ResNet block's
/// conv1 and its downsample conv), whose activation bits must agree.
struct model_desc {
  std::string name;
  std::vector<layer_cost> layers;
  std::vector<std::vector<std::size_t>> shared_input_groups;

  std::size_t size() const { return layers.size(); }
  std::int64_t weight_params() const {
    std::int64_t s = 0;
    for (const auto& l : layers) s += l.params;
    return s;
  }
  std::int64_t bias_params() const {
    std::int64_t s = 0;
    for (const auto& l : layers) s += l.bias_params;
    return s;
  }
  std::int64_t bn_params() const {
    std::int64_t s = 0;
    for (const auto& l : layers) s += l.bn_params;
    return s;
  }
  /// Weights + biases + batch-norm affine parameters: torchvision's parameter count.
  std::int64_t total_params() const { return weight_params() + bias_params() + bn_params(); }
  std::int64_t macs() const {
    std::int64_t s = 0;
    for (const auto& l : layers) s += l.macs;
    return s;
  }
};

using quant::bit_config;

enum class size_unit {
  mb,   // 1e6 bytes (FracBits)
  mib,  // 2^20 bytes (HAWQ-V3 and OMPQ, which print "MB"/"Mb")
};

inline double bits_per_unit(size_unit u) {
  return u == size_unit::mb ? 8e6 : 8.0 * 1048576.0;
}

/// How the first (stem) or last (classifier) layer is charged. `counted = false` leaves the
/// layer out of BitOps and size (EdMIPS: kept in full precision and not counted). A fixed
/// bit-width (> 0) overrides the bit_config's entry (e.g. 8 for HAWQ-V3, 32 for a layer kept
/// in float and counted); 0 uses the bit_config.
struct edge_layer_rule {
  bool counted = true;
  int fixed_w_bits = 0;
  int fixed_a_bits = 0;
};

/// The counting conventions of §9.2 of the algorithms notes. Defaults: every layer at its
/// configured bits, weights only, MiB. Presets name the papers.
struct cost_conventions {
  edge_layer_rule first_layer{};
  edge_layer_rule last_layer{};
  bool count_bias = false;  // biases at bias_bits (FracBits: the FC bias at 32 bits)
  int bias_bits = 32;
  bool count_bn = false;  // batch-norm gamma/beta at bn_bits (OMPQ's units include them)
  int bn_bits = 32;
  size_unit unit = size_unit::mib;

  static cost_conventions all_layers() { return {}; }
  /// HAWQ-V3 / OMPQ QAT: first conv and FC at W8A8, sizes in 2^20 bytes.
  static cost_conventions first_last_8bit(size_unit u = size_unit::mib) {
    cost_conventions c;
    c.first_layer = {true, 8, 8};
    c.last_layer = {true, 8, 8};
    c.unit = u;
    return c;
  }
  static cost_conventions hawq_v3() { return first_last_8bit(size_unit::mib); }
  static cost_conventions ompq_qat() { return first_last_8bit(size_unit::mib); }
  /// FracBits: first conv W8A8, FC weights 8 bit with searched activation bits, the FC bias at
  /// 32 bits, MB = 1e6 bytes, BN excluded.
  static cost_conventions fracbits() {
    cost_conventions c;
    c.first_layer = {true, 8, 8};
    c.last_layer = {true, 8, 0};
    c.count_bias = true;
    c.unit = size_unit::mb;
    return c;
  }
  /// EdMIPS: first conv and FC stay in float and are not counted.
  static cost_conventions edmips() {
    cost_conventions c;
    c.first_layer.counted = false;
    c.last_layer.counted = false;
    return c;
  }
};

/// Totals of one model under one bit_config and convention.
struct cost_report {
  std::vector<double> layer_bitops;     // macs * w * a (0 for uncounted layers)
  std::vector<double> layer_size_bits;  // params * w (+ bias/BN as the convention says)
  std::int64_t params = 0;              // weights of the counted layers
  std::int64_t macs = 0;                // MACs of the counted layers
  double bitops = 0;
  double size_bits = 0;
  double size = 0;  // size_bits in the convention's unit
  double gbitops() const { return bitops * 1e-9; }
  /// DNAS-style compression ratios of the counted layers against a 32-bit model: weight bits
  /// (32 * params / size_bits) and compute (32 * 32 * MACs / BitOps).
  double size_compression_vs_fp32() const { return 32.0 * double(params) / size_bits; }
  double compute_compression_vs_fp32() const { return 1024.0 * double(macs) / bitops; }
};

namespace detail {
inline void check_rule_bits(const edge_layer_rule& r, const char* which) {
  if (r.fixed_w_bits < 0 || r.fixed_w_bits > 32 || r.fixed_a_bits < 0 || r.fixed_a_bits > 32)
    throw bits_error(cat("cost_conventions: ", which, " layer fixed bits w=", r.fixed_w_bits,
                         " a=", r.fixed_a_bits, "; expected 0 (use the bit_config) or 1..32"));
}

/// The rule that applies to layer i (nullptr for a middle layer).
inline const edge_layer_rule* rule_for(const cost_conventions& c, std::size_t i, std::size_t n) {
  if (i + 1 == n) return &c.last_layer;  // a one-layer model is charged as its last layer
  if (i == 0) return &c.first_layer;
  return nullptr;
}

/// Effective (w, a) bits of layer i under the convention, or counted = false.
struct effective_bits {
  bool counted = true;
  bool w_fixed = false, a_fixed = false;
  int w = 0, a = 0;
};
inline effective_bits effective(const cost_conventions& c, std::size_t i, std::size_t n, int w,
                                int a) {
  effective_bits e{true, false, false, w, a};
  if (const auto* r = rule_for(c, i, n)) {
    e.counted = r->counted;
    if (r->fixed_w_bits > 0) e.w = r->fixed_w_bits, e.w_fixed = true;
    if (r->fixed_a_bits > 0) e.a = r->fixed_a_bits, e.a_fixed = true;
  }
  return e;
}

/// Full-precision extras (bias, BN) of a counted layer, in bits.
inline double extra_bits(const cost_conventions& c, const layer_cost& l) {
  double b = 0;
  if (c.count_bias) b += double(l.bias_params) * c.bias_bits;
  if (c.count_bn) b += double(l.bn_params) * c.bn_bits;
  return b;
}

inline void check_conventions(const cost_conventions& c) {
  check_rule_bits(c.first_layer, "first");
  check_rule_bits(c.last_layer, "last");
  if (c.bias_bits < 1 || c.bias_bits > 32 || c.bn_bits < 1 || c.bn_bits > 32)
    throw bits_error(cat("cost_conventions: bias_bits ", c.bias_bits, ", bn_bits ", c.bn_bits,
                         "; expected 1..32"));
}
}  // namespace detail

inline double layer_bitops(const layer_cost& l, double w_bits, double a_bits) {
  return double(l.macs) * w_bits * a_bits;
}
inline double layer_size_bits(const layer_cost& l, double w_bits) {
  return double(l.params) * w_bits;
}

/// Totals of `model` at `config` under `conv`. Throws shape_error / bits_error on a bad config.
inline cost_report evaluate(const model_desc& model, const bit_config& config,
                            const cost_conventions& conv = {}) {
  const std::size_t n = model.size();
  config.validate(n);
  detail::check_conventions(conv);
  cost_report r;
  r.layer_bitops.assign(n, 0.0);
  r.layer_size_bits.assign(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& l = model.layers[i];
    const auto e = detail::effective(conv, i, n, config.w_bits[i], config.a_bits[i]);
    if (!e.counted) continue;
    r.layer_bitops[i] = layer_bitops(l, e.w, e.a);
    r.layer_size_bits[i] = layer_size_bits(l, e.w) + detail::extra_bits(conv, l);
    r.params += l.params;
    r.macs += l.macs;
    r.bitops += r.layer_bitops[i];
    r.size_bits += r.layer_size_bits[i];
  }
  r.size = r.size_bits / bits_per_unit(conv.unit);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Relaxed costs (plain doubles). The var versions in relaxed_cost.hpp call these (one formula);
// each returns the value and its exact gradient. Edge-layer rules apply as in evaluate():
// a fixed bit-width is a constant (zero gradient), an uncounted layer contributes nothing.

enum class cost_metric { bitops, size_bits };

/// Value and gradient w.r.t. the real weight bits and activation bits of every layer.
struct relaxed_bits_cost {
  double value = 0;
  std::vector<double> d_w_bits, d_a_bits;
};

/// FracBits: cost of real-valued bit-widths lambda. BitOps = MACs * lambda_w * lambda_a per
/// layer (the official bilinear interpolation over floor/ceil corners equals this product);
/// size = params * lambda_w (+ extras). Lambdas are clamped to [min_bits, max_bits] first; at or
/// beyond a bound the gradient of that lambda is zero (as torch's clamp gives outside it).
inline relaxed_bits_cost fracbits_cost(const model_desc& model, std::span<const double> lambda_w,
                                       std::span<const double> lambda_a, cost_metric metric,
                                       const cost_conventions& conv = {}, double min_bits = 1.0,
                                       double max_bits = 8.0) {
  const std::size_t n = model.size();
  if (lambda_w.size() != n || lambda_a.size() != n)
    throw shape_error(detail::cat("fracbits_cost: ", lambda_w.size(), " weight and ",
                                  lambda_a.size(), " activation bit-widths; expected ", n));
  if (!(min_bits >= 1.0 && min_bits <= max_bits && max_bits <= 32.0))
    throw bits_error(detail::cat("fracbits_cost: bit range [", min_bits, ", ", max_bits,
                                 "]; expected 1 <= min <= max <= 32"));
  detail::check_conventions(conv);
  relaxed_bits_cost r;
  r.d_w_bits.assign(n, 0.0);
  r.d_a_bits.assign(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& l = model.layers[i];
    const auto e = detail::effective(conv, i, n, 0, 0);
    if (!e.counted) continue;
    auto clamp = [&](double x, bool& inside) {
      if (!std::isfinite(x))
        throw value_error(detail::cat("fracbits_cost: bit-width of layer ", i, " is ", x,
                                      "; expected a finite number"));
      inside = x > min_bits && x < max_bits;
      return x < min_bits ? min_bits : (x > max_bits ? max_bits : x);
    };
    bool w_in = false, a_in = false;
    double w = clamp(lambda_w[i], w_in), a = clamp(lambda_a[i], a_in);
    if (e.w_fixed) w = e.w, w_in = false;
    if (e.a_fixed) a = e.a, a_in = false;
    if (metric == cost_metric::bitops) {
      r.value += double(l.macs) * w * a;
      if (w_in) r.d_w_bits[i] = double(l.macs) * a;
      if (a_in) r.d_a_bits[i] = double(l.macs) * w;
    } else {
      r.value += double(l.params) * w + detail::extra_bits(conv, l);
      if (w_in) r.d_w_bits[i] = double(l.params);
    }
  }
  return r;
}

/// Value and gradient w.r.t. per-layer probability vectors over candidate bit-widths.
struct relaxed_prob_cost {
  double value = 0;
  std::vector<std::vector<double>> d_p_w, d_p_a;
};

namespace detail {
inline void check_probs(std::span<const std::vector<double>> p, std::span<const int> cand,
                        std::size_t n, const char* what) {
  if (p.size() != n)
    throw shape_error(cat("expected_bits_cost: ", p.size(), " ", what,
                          " probability vectors; expected ", n, " (one per layer)"));
  for (std::size_t i = 0; i < n; ++i)
    if (p[i].size() != cand.size())
      throw shape_error(cat("expected_bits_cost: layer ", i, " has ", p[i].size(), " ", what,
                            " probabilities; expected ", cand.size(), " (one per candidate)"));
  for (int b : cand)
    if (b < 1 || b > 32)
      throw bits_error(cat("expected_bits_cost: ", what, " candidate ", b, "; expected 1..32"));
}
}  // namespace detail

/// EBS / EdMIPS: per layer, E[w] = sum_i p_w[i] * w_cand[i] and E[a] likewise; BitOps =
/// MACs * E[w] * E[a] (product of expectations), size = params * E[w] (+ extras). The
/// probabilities are used as given (softmax them first; see softmax_backward for the chain).
inline relaxed_prob_cost expected_bits_cost(const model_desc& model,
                                            std::span<const std::vector<double>> p_w,
                                            std::span<const int> w_candidates,
                                            std::span<const std::vector<double>> p_a,
                                            std::span<const int> a_candidates, cost_metric metric,
                                            const cost_conventions& conv = {}) {
  const std::size_t n = model.size();
  detail::check_probs(p_w, w_candidates, n, "weight");
  detail::check_probs(p_a, a_candidates, n, "activation");
  detail::check_conventions(conv);
  relaxed_prob_cost r;
  r.d_p_w.assign(n, std::vector<double>(w_candidates.size(), 0.0));
  r.d_p_a.assign(n, std::vector<double>(a_candidates.size(), 0.0));
  for (std::size_t i = 0; i < n; ++i) {
    const auto& l = model.layers[i];
    const auto e = detail::effective(conv, i, n, 0, 0);
    if (!e.counted) continue;
    double ew = 0, ea = 0;
    for (std::size_t k = 0; k < w_candidates.size(); ++k) ew += p_w[i][k] * w_candidates[k];
    for (std::size_t k = 0; k < a_candidates.size(); ++k) ea += p_a[i][k] * a_candidates[k];
    if (e.w_fixed) ew = e.w;
    if (e.a_fixed) ea = e.a;
    if (metric == cost_metric::bitops) {
      r.value += double(l.macs) * ew * ea;
      if (!e.w_fixed)
        for (std::size_t k = 0; k < w_candidates.size(); ++k)
          r.d_p_w[i][k] = double(l.macs) * w_candidates[k] * ea;
      if (!e.a_fixed)
        for (std::size_t k = 0; k < a_candidates.size(); ++k)
          r.d_p_a[i][k] = double(l.macs) * ew * a_candidates[k];
    } else {
      r.value += double(l.params) * ew + detail::extra_bits(conv, l);
      if (!e.w_fixed)
        for (std::size_t k = 0; k < w_candidates.size(); ++k)
          r.d_p_w[i][k] = double(l.params) * w_candidates[k];
    }
  }
  return r;
}

/// One (w, a) candidate operator of a DNAS super-net edge.
struct bit_pair {
  int w = 8, a = 8;
};

/// Value and gradient w.r.t. the per-layer mixture weights m[l][k].
struct relaxed_mixture_cost {
  double value = 0;
  std::vector<std::vector<double>> d_m;
};

/// DNAS: C = sum_l sum_k m[l][k] * cost(l, candidate k), cost = MACs*w*a or params*w (+ extras
/// once per layer, weighted by sum_k m[l][k]). Edge-layer rules override the candidate's bits.
inline relaxed_mixture_cost mixture_cost(const model_desc& model,
                                         std::span<const std::vector<double>> m,
                                         std::span<const bit_pair> candidates, cost_metric metric,
                                         const cost_conventions& conv = {}) {
  const std::size_t n = model.size();
  if (m.size() != n)
    throw shape_error(detail::cat("mixture_cost: ", m.size(), " mixture vectors; expected ", n));
  for (std::size_t i = 0; i < n; ++i)
    if (m[i].size() != candidates.size())
      throw shape_error(detail::cat("mixture_cost: layer ", i, " has ", m[i].size(),
                                    " mixture weights; expected ", candidates.size()));
  for (const auto& c : candidates)
    if (c.w < 1 || c.w > 8 || c.a < 1 || c.a > 8)
      throw bits_error(
          detail::cat("mixture_cost: candidate (w=", c.w, ", a=", c.a, "); expected bits 1..8"));
  detail::check_conventions(conv);
  relaxed_mixture_cost r;
  r.d_m.assign(n, std::vector<double>(candidates.size(), 0.0));
  for (std::size_t i = 0; i < n; ++i) {
    const auto& l = model.layers[i];
    for (std::size_t k = 0; k < candidates.size(); ++k) {
      const auto e = detail::effective(conv, i, n, candidates[k].w, candidates[k].a);
      if (!e.counted) continue;
      const double c = metric == cost_metric::bitops
                           ? layer_bitops(l, e.w, e.a)
                           : layer_size_bits(l, e.w) + detail::extra_bits(conv, l);
      r.value += m[i][k] * c;
      r.d_m[i][k] = c;
    }
  }
  return r;
}

/// Chain rule through r = softmax(s): given dC/dr, returns dC/ds_i = r_i (g_i - sum_j r_j g_j).
inline std::vector<double> softmax_backward(std::span<const double> r, std::span<const double> g) {
  if (r.size() != g.size())
    throw shape_error(detail::cat("softmax_backward: ", r.size(), " probabilities and ", g.size(),
                                  " gradients; expected equal lengths"));
  double dot = 0;
  for (std::size_t i = 0; i < r.size(); ++i) dot += r[i] * g[i];
  std::vector<double> out(r.size());
  for (std::size_t i = 0; i < r.size(); ++i) out[i] = r[i] * (g[i] - dot);
  return out;
}

}  // namespace mixq::search
