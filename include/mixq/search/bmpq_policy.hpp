// BMPQ (bit-gradient sensitivity driven mixed precision, trained from scratch) as an allocation
// policy that is also the precision policy of the training: weights are built from bit planes
// in the graph, so the gradient of every plane is read after each backward; per-layer
// sensitivities accumulated over E epochs feed an exact ILP that switches layer precisions
// during an early phase, after which the allocation is frozen.
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
#include "mixq/quant/code_tensor.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/weight_allocation.hpp"

namespace mixq::search {

/// The bit planes of a signed k-bit weight W_q = s * sign(W) * sum_{i<k-1} 2^i beta_i (per-tensor
/// scale s = max|W| / (2^(k-1) - 1)), built in the graph so that after a backward each plane
/// var holds dL/dbeta_i = s * 2^i * sign(W) * dL/dW_q. The planes pass the gradient straight
/// through to W: beta_i = bits_i + c_i (u - detach(u)) with u = |W| / s and
/// c_i = 1 / ((k-1) 2^i), so dW_q/dW = 1 (the usual STE).
struct bit_plane_weight {
  autodiff::var quantized;            // W_q, same shape as W
  std::vector<autodiff::var> planes;  // k-1 planes, least significant first
  float scale = 0;
};

inline bit_plane_weight make_bit_plane_weight(const autodiff::var& w, int bits) {
  using namespace autodiff;
  if (bits < 2 || bits > 8)
    throw bits_error(mixq::detail::cat("make_bit_plane_weight: ", bits,
                                       " bits; expected 2..8 (a sign and >= 1 magnitude plane)"));
  const ftensor& wv = w.value();
  float m = 0;
  for (float v : wv) m = std::max(m, std::abs(v));
  const int planes = bits - 1;
  const int levels = (1 << planes) - 1;
  bit_plane_weight out;
  out.scale = m > 0 ? m / float(levels) : 1.0f;
  const float s = out.scale;
  ftensor sign_s(wv.shape()), code(wv.shape());
  for (std::size_t i = 0; i < wv.size(); ++i) {
    sign_s[i] = wv[i] > 0 ? s : (wv[i] < 0 ? -s : 0.0f);
    code[i] = std::min(std::round(std::abs(wv[i]) / s), float(levels));
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

struct bmpq_options {
  weight_search_space space = weight_search_space::of({2, 3, 4, 5, 6, 8}, 4);
  std::size_t interval_epochs = 1;  // E: re-solve every E epochs ...
  std::size_t early_epochs = 4;     // ... while epoch < early_epochs, then freeze
  std::size_t probe_batches = 4;    // allocate(): training batches measured before the first ILP
  float act_momentum = 0.9f;        // EMA of the activation range (training mode only)
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
    if (opt_.space.candidates.empty() || opt_.space.candidates.front() < 2)
      throw bits_error(
          "bmpq_policy: weight-bit candidates must be >= 2 (a sign and a magnitude plane)");
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
    for (int p : pin)
      if (p == 1) throw bits_error("bmpq_policy: pinned bits must be >= 2");
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
      const auto q = symmetric_fake_quant(w.value().span(), bits);
      const autodiff::var qv = autodiff::constant(autodiff::ftensor(w.shape(), q));
      return autodiff::add(w, autodiff::detach(autodiff::sub(qv, w)));
    }
    collect(layer);  // the previous step's planes, now holding their gradients
    auto bp = make_bit_plane_weight(w, bits);
    pending_[layer] = bp.planes;
    return bp.quantized;
  }

  autodiff::var quantize_activations(std::size_t layer, const autodiff::var& x) override {
    check_layer(layer);
    return quantize_input(layer, x, layers_[layer] ? layers_[layer]->is_training() : false);
  }

  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    layers_.assign(layers.begin(), layers.end());
    lo_.assign(layers.size(), 0.0f);
    hi_.assign(layers.size(), 0.0f);
    range_set_.assign(layers.size(), false);
    pending_.assign(layers.size(), {});
    if (config_.size() != layers.size())
      config_ = bit_config::uniform(layers.size(), opt_.space.candidates.back(), opt_.space.a_bits);
    reset_accumulators();
  }

  // ---- inspection -----------------------------------------------------------------------
  const bit_config& config() const noexcept { return config_; }
  /// Number of attached quantized layers.
  std::size_t layers() const noexcept { return layers_.size(); }

  // ---- deployment (deploy::deployable_policy) ---------------------------------------------

  /// Layer i's weights as the eval forward quantizes them (symmetric_fake_quant, equal to the
  /// bit-plane sum of training): signed codes in +-(2^(b-1) - 1), zero point 0, one scale
  /// max|W| / (2^(b-1) - 1) per tensor (1 for an all-zero tensor, whose codes are all 0).
  quant::code_tensor weight_codes(std::size_t layer) const {
    check_attached(layer);
    const auto& w = layers_[layer]->weight.value();
    const int bits = config_.w_bits[layer];
    float m = 0;
    for (float v : w) m = std::max(m, std::abs(v));
    const float levels = float((1 << (bits - 1)) - 1), s = m > 0 ? m / levels : 1.0f;
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

  /// The upper end of layer i's activation range (the EMA the eval forward quantizes with):
  /// when the range is one-sided ([0, hi], hi > 0) the input grid is PACT's with alpha = hi.
  float clip_value(std::size_t layer) const {
    check_attached(layer);
    return hi_[layer];
  }
  /// Layer i's input grid for deployment: PACT's one-sided grid with alpha = clip_value(i).
  quant::activation_grid input_grid(std::size_t layer) const {
    return quant::activation_grid::pact(clip_value(layer));
  }

  /// "" when layer i's input grid is one-sided (deployable); otherwise why not: the range was
  /// never measured, has negative values (a signed grid), or is [0, 0] (passed through
  /// unquantized).
  std::string input_deploy_problem(std::size_t layer) const {
    check_attached(layer);
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
    sum_[layer] += s / (n * double(k));
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
    config_ = solve_weight_allocation(c.costs, opt_.space, b, value_of, who);
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

  /// Uniform activation quantization on an EMA range (unsigned when the range is >= 0).
  autodiff::var quantize_input(std::size_t layer, const autodiff::var& x, bool training) {
    using namespace autodiff;
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
