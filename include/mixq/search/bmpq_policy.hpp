// BMPQ (bit-gradient sensitivity driven mixed precision, trained from scratch) as an allocation
// policy that is also the precision policy of the training: weights are built from bit planes
// in the graph, so the gradient of every plane is read after each backward; per-layer
// sensitivities accumulated over E epochs feed an exact ILP that switches layer precisions
// during an early phase, after which the allocation is frozen. Activations (fixed bits) use a
// learned LSQ step by default.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mixq/autodiff/ops.hpp"
#include "mixq/autodiff/var.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/quant/binary.hpp"
#include "mixq/quant/code_tensor.hpp"
#include "mixq/quant/lsq.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/weight_allocation.hpp"

namespace mixq::search {

/// The bit planes of a signed k-bit weight W_q = s * sign(W) * sum_{i<k-1} 2^i beta_i (per-tensor
/// scale s = max|W| / (2^(k-1) - 1)), built in the graph so that after a backward each plane
/// var holds dL/dbeta_i = s * 2^i * sign(W) * dL/dW_q. The planes pass the gradient straight
/// through to W: beta_i = bits_i + c_i (u - detach(u)) with u = |W| / s and
/// c_i = 1 / ((k-1) 2^i), so dW_q/dW = 1 (the usual STE).
/// One bit (this library's extension; the formulation needs a magnitude plane): binary weights
/// W_q = s * sign(W) * beta_0 with s = mean|W| (sign(0) = +1, as quant::binary_sign) and one
/// plane beta_0 = 1; its gradient s * sign(W) * dL/dW_q is that of a 2-bit MSB plane at scale s.
struct bit_plane_weight {
  autodiff::var quantized;            // W_q, same shape as W
  std::vector<autodiff::var> planes;  // k-1 planes (1 for one bit), least significant first
  float scale = 0;
  /// Factor that brings the planes' squared gradients to the max scale max|W| / L, so that
  /// sensitivities compare across bits and scale choices: (max|W| / s)^2 at one bit (the
  /// 2-bit max scale), (max|W| / (L s))^2 otherwise (1 for the max scale).
  float sensitivity_scale = 1;
};

/// How BMPQ picks the per-tensor scale of a >= 2-bit weight.
enum class bmpq_weight_scale {
  max,  ///< s = max|W| / L (L = 2^(b-1) - 1): no weight is clipped
  /// s = t max|W| / L with t in [0.25, 1] (61 steps) minimising ||W - Q_s(W)||^2: at 2 bits
  /// (levels {-s, 0, s}) the max scale rounds most weights of a trained layer to 0.
  mse,
};

namespace detail {
/// The scale of a symmetric b-bit grid for w (b >= 2), or mean|W| for b = 1 (the binary
/// quantizer's); 1 for an all-zero tensor.
inline float bmpq_scale(std::span<const float> w, int bits, bmpq_weight_scale mode) {
  float m = 0;
  double abs_sum = 0;
  for (float v : w) m = std::max(m, std::abs(v)), abs_sum += std::abs(v);
  if (!(m > 0)) return 1.0f;
  if (bits == 1) return float(abs_sum / double(w.size()));
  const float levels = float((1 << (bits - 1)) - 1);
  if (mode == bmpq_weight_scale::max) return m / levels;
  float best_s = m / levels;
  double best = -1;
  for (int k = 60; k >= 0; --k) {  // from t = 1 down: ties keep the larger scale
    const float s = (0.25f + 0.75f * float(k) / 60.0f) * m / levels;
    double e = 0;
    for (float v : w) {
      const float d = v - s * std::clamp(std::round(v / s), -levels, levels);
      e += double(d) * double(d);
    }
    if (best < 0 || e < best) best = e, best_s = s;
  }
  return best_s;
}
}  // namespace detail

/// `scale` > 0 sets the grid's scale (b >= 2; see detail::bmpq_scale); 0 takes max|W| / L.
inline bit_plane_weight make_bit_plane_weight(const autodiff::var& w, int bits, float scale = 0) {
  using namespace autodiff;
  if (bits < 1 || bits > 8)
    throw bits_error(mixq::detail::cat("make_bit_plane_weight: ", bits, " bits; expected 1..8"));
  const ftensor& wv = w.value();
  float m = 0;
  double abs_sum = 0;
  for (float v : wv) m = std::max(m, std::abs(v)), abs_sum += std::abs(v);
  const bool binary = bits == 1;
  const int planes = binary ? 1 : bits - 1;
  const int levels = binary ? 1 : (1 << planes) - 1;
  bit_plane_weight out;
  if (binary) {
    const float mean = wv.size() ? float(abs_sum / double(wv.size())) : 0.0f;
    out.scale = mean > 0 ? mean : 1.0f;
    out.sensitivity_scale = mean > 0 ? (m / mean) * (m / mean) : 1.0f;
  } else {
    out.scale = m > 0 ? (scale > 0 ? scale : m / float(levels)) : 1.0f;
    // Gradient energies scale with s^2: refer them to the max scale's.
    if (m > 0)
      out.sensitivity_scale = (m / (float(levels) * out.scale)) * (m / (float(levels) * out.scale));
  }
  const float s = out.scale;
  ftensor sign_s(wv.shape()), code(wv.shape());
  for (std::size_t i = 0; i < wv.size(); ++i) {
    if (binary) {
      sign_s[i] = wv[i] >= 0 ? s : -s;
      code[i] = 1;
    } else {
      sign_s[i] = wv[i] > 0 ? s : (wv[i] < 0 ? -s : 0.0f);
      code[i] = std::min(std::round(std::abs(wv[i]) / s), float(levels));
    }
  }
  const var u = mul(abs(w), 1.0f / s);
  const var du = sub(u, detach(u));  // zero valued; carries d/dW
  var magnitude;
  for (int p = 0; p < planes; ++p) {
    ftensor bit(wv.shape());
    for (std::size_t i = 0; i < wv.size(); ++i) bit[i] = float((int(code[i]) >> p) & 1);
    const var beta = add(constant(std::move(bit)), mul(du, 1.0f / (float(planes) * float(1 << p))));
    out.planes.push_back(beta);
    const var term = mul(beta, float(1 << p));
    magnitude = magnitude.defined() ? add(magnitude, term) : term;
  }
  out.quantized = mul(constant(std::move(sign_s)), magnitude);
  return out;
}

/// How BMPQ quantizes layer inputs (the paper fixes activation bits and does not say how).
enum class bmpq_activation_quantizer {
  /// LSQ: a learned step per layer, set from the first training batch; an unsigned grid when
  /// that batch has no negative input, else a signed one. The default: at 2 bits a range
  /// that follows the batch maximum rounds most activations to 0 and training collapses.
  lsq,
  /// A uniform grid over an EMA of the batch range (act_momentum); no learned parameter.
  ema_range,
};

struct bmpq_options {
  /// Weight-bit candidates, 1..8 (1 = binary weights, see bit_plane_weight).
  weight_search_space space = weight_search_space::of({2, 3, 4, 5, 6, 8}, 4);
  std::size_t interval_epochs = 1;  // E: re-solve every E epochs ...
  std::size_t early_epochs = 4;     // ... while epoch < early_epochs, then freeze
  std::size_t probe_batches = 4;    // allocate(): training batches measured before the first ILP
  bmpq_activation_quantizer activations = bmpq_activation_quantizer::lsq;
  bmpq_weight_scale weight_scale = bmpq_weight_scale::mse;
  float act_momentum = 0.9f;  // ema_range: EMA of the activation range (training mode only)
};

/// One ILP solve: when, with which sensitivities, what it chose and what that costs.
struct bmpq_resolve {
  std::size_t epoch = 0;  // SIZE_MAX for the initial allocate()
  std::vector<double> sensitivity;
  bit_config config;
  double cost = 0;
  bool changed = false;
};

/// BMPQ as an allocation_policy and a precision_policy. Sensitivity of layer l over an
/// interval: S_l = mean over steps of (1 / (n_l (k_l - 1))) sum_i 4^(k_l-2-i) ||dL/dbeta_{l,i}||^2
/// (each plane's squared bit gradient brought to the most significant plane's weight, so S_l
/// does not depend on the layer's current bits). ILP (exact): minimise the sensitivity-weighted
/// quantisation noise sum_l n_l S_l 4^(-b_l) subject to the budget (weight bits or BitOps).
class bmpq_policy : public nn::precision_policy {
 public:
  explicit bmpq_policy(bmpq_options o = {}) : opt_(std::move(o)) {
    if (opt_.space.candidates.empty() || opt_.space.candidates.front() < 1 ||
        opt_.space.candidates.back() > 8)
      throw bits_error(
          "bmpq_policy: weight-bit candidates must be within 1..8 (none given or "
          "out of range)");
    if (opt_.interval_epochs == 0)
      throw value_error("bmpq_policy: interval_epochs is 0; expected >= 1");
    if (!(opt_.act_momentum >= 0 && opt_.act_momentum < 1))
      throw value_error(
          mixq::detail::cat("bmpq_policy: act_momentum ", opt_.act_momentum, "; expected [0, 1)"));
  }

  // ---- allocation_policy ----------------------------------------------------------------

  /// Measures bit gradients on `probe_batches` training batches (forward + backward, no
  /// update) at the largest candidate, then solves the ILP. Attaches itself to the model.
  bit_config allocate(search_context& c, const budget& b) {
    static constexpr const char* who = "bmpq_policy";
    const auto pin = opt_.space.pinned(c.costs.size(), who);
    opt_.space.check_feasible(c.costs, b, who);
    nn::attach_policy(c.model, *this);
    if (layers_.size() != c.costs.size())
      throw shape_error(mixq::detail::cat(who, ": the model has ", layers_.size(),
                                          " quantized layers but the context has ", c.costs.size(),
                                          " layer costs"));
    config_ = bit_config::uniform(c.costs.size(), opt_.space.candidates.back(), opt_.space.a_bits);
    for (std::size_t i = 0; i < pin.size(); ++i) {
      if (pin[i]) config_.w_bits[i] = pin[i];
      if (opt_.space.a_follows_w) config_.a_bits[i] = config_.w_bits[i];
    }
    reset_accumulators();
    const std::size_t n = std::min(opt_.probe_batches, c.train_batches());
    const bool training = c.model.is_training();
    c.model.train();
    for (std::size_t k = 0; k < n; ++k) {
      const auto bt = c.train_batch(k);
      const autodiff::var loss =
          autodiff::cross_entropy(c.model(autodiff::constant(bt.images)), bt.labels);
      autodiff::backward(loss);
      flush();
    }
    c.model.zero_grad();
    c.model.train(training);
    solve(c, b, SIZE_MAX);
    return config_;
  }

  /// Every E epochs during the early phase: the ILP on the sensitivities accumulated since the
  /// last solve; returns the config when it changed. Frozen afterwards (std::nullopt).
  std::optional<bit_config> on_epoch_end(search_context& c, const budget& b, std::size_t epoch) {
    if (frozen(epoch)) {
      frozen_ = true;
      return std::nullopt;
    }
    if ((epoch + 1) % opt_.interval_epochs != 0) return std::nullopt;
    flush();
    const bit_config before = config_;
    solve(c, b, epoch);
    if (frozen(epoch + 1)) frozen_ = true;
    return config_ == before ? std::nullopt : std::optional<bit_config>(config_);
  }

  // ---- precision_policy -----------------------------------------------------------------

  autodiff::var quantize_weights(std::size_t layer, const autodiff::var& w) override {
    check_layer(layer);
    const int bits = config_.w_bits[layer];
    if (frozen_ || !autodiff::grad_enabled() || !w.requires_grad()) {
      // No sensitivity needed: a plain STE fake quantization.
      if (bits == 1)
        return quant::binary_sign(w, quant::binary_scaling::mean_abs,
                                  quant::granularity::per_tensor);
      const quant::code_tensor c = codes_of(w.value(), bits);
      const autodiff::var qv = autodiff::constant(c.dequantize());
      return autodiff::add(w, autodiff::detach(autodiff::sub(qv, w)));
    }
    collect(layer);  // the previous step's planes, now holding their gradients
    auto bp = make_bit_plane_weight(w, bits,
                                    detail::bmpq_scale(w.value().span(), bits, opt_.weight_scale));
    pending_[layer] = bp.planes;
    pending_scale_[layer] = bp.sensitivity_scale;
    return bp.quantized;
  }

  autodiff::var quantize_activations(std::size_t layer, const autodiff::var& x) override {
    check_layer(layer);
    return quantize_input(layer, x, layers_[layer] ? layers_[layer]->is_training() : false);
  }

  /// Attaching again to the same layers (the driver re-attaches for the finetune) keeps the
  /// measured ranges and learned steps; other layers start afresh.
  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    if (std::equal(layers.begin(), layers.end(), layers_.begin(), layers_.end())) return;
    layers_.assign(layers.begin(), layers.end());
    lo_.assign(layers.size(), 0.0f);
    hi_.assign(layers.size(), 0.0f);
    range_set_.assign(layers.size(), false);
    signed_input_.assign(layers.size(), false);
    step_bits_.assign(layers.size(), 0);
    act_steps_.clear();
    for (std::size_t i = 0; i < layers.size(); ++i)
      act_steps_.push_back(autodiff::var::parameter(autodiff::ftensor({1}, 1.0f)));
    pending_.assign(layers.size(), {});
    pending_scale_.assign(layers.size(), 1.0f);
    if (config_.size() != layers.size())
      config_ = bit_config::uniform(layers.size(), opt_.space.candidates.back(), opt_.space.a_bits);
    reset_accumulators();
  }

  /// The LSQ steps (lsq activations; trained with the weights), else none.
  std::vector<autodiff::var> parameters() override {
    if (opt_.activations != bmpq_activation_quantizer::lsq) return {};
    return act_steps_;
  }

  // ---- inspection -----------------------------------------------------------------------
  const bit_config& config() const noexcept { return config_; }
  /// Number of attached quantized layers.
  std::size_t layers() const noexcept { return layers_.size(); }

  // ---- deployment (deploy::deployable_policy) ---------------------------------------------

  /// Layer i's weights as the eval forward quantizes them (equal to the bit-plane sum of
  /// training): signed codes in +-(2^(b-1) - 1), zero point 0, one scale per tensor
  /// (options().weight_scale; 1 for an all-zero tensor, whose codes are all 0). One bit:
  /// binary codes +-1 with scale mean|W| (quant::binary_codes).
  quant::code_tensor weight_codes(std::size_t layer) const {
    check_attached(layer);
    return codes_of(layers_[layer]->weight.value(), config_.w_bits[layer]);
  }

 private:
  quant::code_tensor codes_of(const autodiff::ftensor& w, int bits) const {
    if (bits == 1)
      return quant::binary_codes(w, quant::binary_scaling::mean_abs,
                                 quant::granularity::per_tensor);
    float m = 0;
    for (float v : w) m = std::max(m, std::abs(v));
    const float levels = float((1 << (bits - 1)) - 1);
    const float s = detail::bmpq_scale(w.span(), bits, opt_.weight_scale);
    quant::code_tensor c;
    c.type = bitwidth{bits, true};
    c.shape = w.shape();
    c.scale = {s};
    c.zero_point = {0.0f};
    c.codes.resize(w.size());
    for (std::size_t i = 0; i < w.size(); ++i)
      c.codes[i] = m > 0 ? std::int32_t(std::clamp(std::round(w[i] / s), -levels, levels)) : 0;
    return c;
  }

 public:
  /// The upper end of layer i's input grid: ema_range, the EMA maximum (when the range is
  /// one-sided, [0, hi] with hi > 0, the grid is PACT's with alpha = hi); lsq, step * (2^b - 1).
  float clip_value(std::size_t layer) const {
    check_attached(layer);
    if (opt_.activations == bmpq_activation_quantizer::lsq)
      return act_steps_[layer].value()[0] * float((1 << config_.a_bits[layer]) - 1);
    return hi_[layer];
  }
  /// Whether layer i's LSQ grid is signed (its first training batch had negative inputs).
  bool input_is_signed(std::size_t layer) const {
    check_attached(layer);
    return signed_input_[layer];
  }
  /// Layer i's learned LSQ step (lsq activations).
  float activation_step(std::size_t layer) const {
    check_attached(layer);
    if (opt_.activations != bmpq_activation_quantizer::lsq)
      throw value_error("bmpq_policy::activation_step: activations use the EMA range, not LSQ");
    return act_steps_[layer].value()[0];
  }
  /// Layer i's input grid for deployment: LSQ's step grid (lsq activations; see
  /// input_deploy_problem for when it is one-sided), else PACT's with alpha = clip_value(i).
  quant::activation_grid input_grid(std::size_t layer) const {
    if (opt_.activations == bmpq_activation_quantizer::lsq)
      return quant::activation_grid::step(activation_step(layer));
    return quant::activation_grid::pact(clip_value(layer));
  }

  /// "" when layer i's input grid is one-sided (deployable); otherwise why not: the range was
  /// never measured, has negative values (a signed grid), or is [0, 0] (passed through
  /// unquantized).
  std::string input_deploy_problem(std::size_t layer) const {
    check_attached(layer);
    if (opt_.activations == bmpq_activation_quantizer::lsq) {
      if (!step_bits_[layer])
        return "has no LSQ activation step yet (run a training forward first)";
      if (signed_input_[layer])
        return "has a signed LSQ activation grid (its first training batch had negative "
               "inputs); integer models take one-sided inputs";
      if (step_bits_[layer] != config_.a_bits[layer])
        return mixq::detail::cat("has an LSQ step set for ", step_bits_[layer],
                                 "-bit activations but runs at ", config_.a_bits[layer],
                                 " bits (run a forward at the current bits first)");
      return {};
    }
    if (!range_set_[layer])
      return "has no measured activation range (run a training forward first)";
    if (lo_[layer] < 0)
      return mixq::detail::cat("has a signed activation range [", lo_[layer], ", ", hi_[layer],
                               "] (a two-sided grid); integer models take one-sided inputs");
    if (!(hi_[layer] > 0))
      return "has an activation range [0, 0]: BMPQ passes that input through unquantized";
    return {};
  }
  const std::vector<bmpq_resolve>& history() const noexcept { return history_; }
  bool is_frozen() const noexcept { return frozen_; }
  /// Sensitivities accumulated since the last solve (flushing pending planes first).
  std::vector<double> current_sensitivity() {
    flush();
    std::vector<double> s(sum_.size(), 0.0);
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = steps_[i] ? sum_[i] / double(steps_[i]) : 0;
    return s;
  }

 private:
  bool frozen(std::size_t epoch) const { return epoch >= opt_.early_epochs; }

  void check_attached(std::size_t layer) const {
    if (layer >= layers_.size())
      throw shape_error(mixq::detail::cat("bmpq_policy: layer ", layer, " does not exist; ",
                                          layers_.size(), " quantized layers attached"));
  }
  void check_layer(std::size_t layer) const {
    if (layer >= config_.size())
      throw shape_error(mixq::detail::cat("bmpq_policy: layer ", layer, " but the config has ",
                                          config_.size(), " layers (attach the policy first)"));
  }

  void reset_accumulators() {
    sum_.assign(layers_.size(), 0.0);
    steps_.assign(layers_.size(), 0);
  }

  /// Adds the bit-gradient energy of layer `layer`'s last planes if a backward reached them.
  void collect(std::size_t layer) {
    auto& planes = pending_[layer];
    if (planes.empty() || !planes.front().has_grad()) {
      planes.clear();
      return;
    }
    const std::size_t k = planes.size();  // = bits - 1
    double s = 0;
    for (std::size_t i = 0; i < k; ++i) {
      double e = 0;
      for (float g : planes[i].grad()) e += double(g) * double(g);
      s += e * std::ldexp(1.0, 2 * int(k - 1 - i));  // 4^(k-1-i): to the MSB's weight
    }
    const double n = double(planes.front().size());
    sum_[layer] += double(pending_scale_[layer]) * s / (n * double(k));
    ++steps_[layer];
    planes.clear();
  }
  void flush() {
    for (std::size_t i = 0; i < pending_.size(); ++i) collect(i);
  }

  void solve(search_context& c, const budget& b, std::size_t epoch) {
    static constexpr const char* who = "bmpq_policy";
    bmpq_resolve r;
    r.epoch = epoch;
    r.sensitivity.assign(c.costs.size(), 0.0);
    for (std::size_t i = 0; i < r.sensitivity.size() && i < sum_.size(); ++i)
      r.sensitivity[i] = steps_[i] ? sum_[i] / double(steps_[i]) : 0.0;
    const auto& sens = r.sensitivity;
    auto value_of = [&](std::size_t i, int w) {
      return -double(c.costs[i].params) * sens[i] * std::ldexp(1.0, -2 * w);
    };
    const bit_config before = config_;
    config_ = solve_weight_allocation(c.costs, opt_.space, b, value_of, who, c.tied_layers);
    r.config = config_;
    r.cost = b.cost_of(c.costs, config_);
    r.changed = !(config_ == before);
    if (c.log)
      *c.log << "bmpq: "
             << (epoch == SIZE_MAX ? std::string("initial") : "epoch " + std::to_string(epoch))
             << " allocation " << config_.to_string() << " (" << r.cost << " " << to_string(b.kind)
             << ")\n";
    history_.push_back(std::move(r));
    reset_accumulators();
  }

  /// LSQ: the step is set from the first training batch (with its sign) and, when the bits
  /// change, rescaled to keep the clipping range. Until then inputs pass unquantized (an eval
  /// forward on a zero image, such as trace_costs', must not set it).
  autodiff::var quantize_lsq_input(std::size_t layer, const autodiff::var& x, bool training) {
    const int bits = config_.a_bits[layer];
    if (!step_bits_[layer]) {
      if (!training) return x;
      bool negative = false;
      for (float v : x.value()) negative = negative || v < 0;
      signed_input_[layer] = negative && bits >= 2;
      act_steps_[layer].value()[0] = quant::lsq_initial_step(x.value(), bits, signed_input_[layer]);
      step_bits_[layer] = bits;
    } else if (step_bits_[layer] != bits) {
      int qn0 = 0, qp0 = 0, qn1 = 0, qp1 = 0;
      quant::detail::lsq_range(step_bits_[layer], signed_input_[layer], qn0, qp0);
      signed_input_[layer] = signed_input_[layer] && bits >= 2;
      quant::detail::lsq_range(bits, signed_input_[layer], qn1, qp1);
      act_steps_[layer].value()[0] *= float(qp0) / float(qp1);
      step_bits_[layer] = bits;
    }
    return quant::lsq(x, act_steps_[layer], bits, signed_input_[layer]);
  }

  /// Uniform activation quantization on an EMA range (unsigned when the range is >= 0).
  autodiff::var quantize_input(std::size_t layer, const autodiff::var& x, bool training) {
    using namespace autodiff;
    if (opt_.activations == bmpq_activation_quantizer::lsq)
      return quantize_lsq_input(layer, x, training);
    const int bits = config_.a_bits[layer];
    if (training || !range_set_[layer]) {
      float lo = 0, hi = 0;
      for (float v : x.value()) lo = std::min(lo, v), hi = std::max(hi, v);
      if (!range_set_[layer]) {
        lo_[layer] = lo, hi_[layer] = hi, range_set_[layer] = true;
      } else {
        const float m = opt_.act_momentum;
        lo_[layer] = m * lo_[layer] + (1 - m) * lo;
        hi_[layer] = m * hi_[layer] + (1 - m) * hi;
      }
    }
    const float lo = lo_[layer], hi = hi_[layer];
    if (lo >= 0) {
      if (!(hi > 0)) return x;
      const float step = hi / float((1 << bits) - 1);
      return mul(round_ste(mul(clip(x, 0.0f, hi), 1.0f / step)), step);
    }
    const float r = std::max(-lo, hi);
    const int levels = bits > 1 ? (1 << (bits - 1)) - 1 : 1;
    const float step = r / float(levels);
    return mul(round_ste(mul(clip(x, -r, r), 1.0f / step)), step);
  }

  bmpq_options opt_;
  bit_config config_;
  std::vector<nn::quantized_layer*> layers_;
  std::vector<std::vector<autodiff::var>> pending_;
  std::vector<float> pending_scale_;
  std::vector<autodiff::var> act_steps_;  // LSQ activation steps, one per layer
  std::vector<int> step_bits_;            // bits each step was set for (0: not yet)
  std::vector<bool> signed_input_;
  std::vector<double> sum_;
  std::vector<std::size_t> steps_;
  std::vector<float> lo_, hi_;
  std::vector<bool> range_set_;
  std::vector<bmpq_resolve> history_;
  bool frozen_ = false;
};

static_assert(allocation_policy<bmpq_policy>);

/// deploy::deployable_policy's customisation point (found by argument-dependent lookup).
inline std::string deploy_input_problem(const bmpq_policy& p, std::size_t layer) {
  return p.input_deploy_problem(layer);
}

}  // namespace mixq::search
