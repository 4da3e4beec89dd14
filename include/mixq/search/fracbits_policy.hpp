// fracbits_policy: FracBits mixed-precision search (Yang & Jin, arXiv 2007.02017) as a
// differentiable_policy: learnable real bit-widths lambda per layer (or per output channel)
// for weights and activations, the kappa |C - T| regulariser, and at a chosen fraction of the
// search the offset bisection + rounding that fixes integer bits for the rest of the run.
//
// Follows the official code (algorithms.md §3) except where said:
//  - quant::fracbits_quantize: Q_lambda(x) = f Q_{floor+1}(x) + (1 - f) Q_floor(x),
//    f = lambda - floor(lambda), lambda clamped to [min_bits, max_bits] (zero gradient
//    outside); DoReFa weights, PACT activations with one alpha per layer (the PACT knobs are
//    nn::fixed_policy's). floor + 1 instead of ceil keeps the lambda gradient alive at integer
//    lambda (the official ceil makes it 0 there); the value is the same.
//  - kernel_wise: lambda_w per output channel (one fractional width per filter during the
//    search; the BitOps/size term uses the channel mean). bit_config is layer-wise, so the
//    discretisation rounds the per-layer mean of lambda_w (a limitation of this library's
//    config, not of the paper).
//  - regulariser kappa |C - T| / T (relative: the official one is in GBitOps or MB);
//  - cost C = MACs * lambda_w * lambda_a (BitOps) or params * lambda_w (weight bits), the
//    plain product equal to the official bilinear interpolation;
//  - at epoch >= hard_assign_fraction * epochs (0.8 as the paper), or in derive() if that has
//    not happened: bisection of one offset o shared by all lambdas so round(lambda + o)
//    (clamped) meets the budget. Deviation: the bracket is [-(max-min)-1, max-min+1] instead
//    of [-1, 0] so a solution always exists, and only configurations within budget are
//    accepted (the official code also accepts up to 1% above): the search stops at the first
//    o whose cost is in [T (1 - tolerance), T], else returns the largest o within budget after
//    max_trials. Afterwards the integer bits are used and the cost term is dropped.
//  - joint single-level updates (update_scheme::joint); lambdas and alphas share one batch.
#pragma once

#include <cmath>
#include <optional>
#include <vector>

#include "mixq/quant/fracbits.hpp"
#include "mixq/search/differentiable_common.hpp"

namespace mixq::search {

struct fracbits_options {
  double init_bits = 3.5;  // initial lambda (all configs of the paper)
  /// At the first search_loss(): every lambda = (the uniform bit-width that costs the budget)
  /// + init_margin, as the paper's ablation recommends (target + 0.5); off: init_bits stays.
  bool init_from_budget = true;
  double init_margin = 0.5;
  int min_bits = 1, max_bits = 8;
  bool kernel_wise = false;
  float kappa = 1.0f;
  pact_settings activations{};
  double hard_assign_fraction = 0.8;  // of the search epochs; >= 1: only in derive()
  double tolerance = 0.01;            // bisection target band [T (1 - tol), T]
  int max_trials = 40;
  budget_kind cost_kind = budget_kind::bitops;  // unit of expected_cost() before a budget is seen
};

/// What the last discretisation did.
struct fracbits_bisection {
  double offset = 0;
  double cost = 0, target = 0;
  int trials = 0;
  bool within_tolerance = false;
};

class fracbits_policy : public nn::precision_policy {
 public:
  using var = autodiff::var;
  using ftensor = autodiff::ftensor;

  explicit fracbits_policy(fracbits_options o = {}) : o_(std::move(o)) {
    if (o_.min_bits < 1 || o_.max_bits > 8 || o_.min_bits > o_.max_bits)
      throw bits_error(detail::cat("fracbits_policy: bit range [", o_.min_bits, ", ", o_.max_bits,
                                   "]; expected 1 <= min_bits <= max_bits <= 8"));
    if (!(o_.init_bits >= o_.min_bits && o_.init_bits <= o_.max_bits))
      throw bits_error(detail::cat("fracbits_policy: init_bits ", o_.init_bits,
                                   "; expected within [", o_.min_bits, ", ", o_.max_bits, "]"));
    detail::check_pact_settings(o_.activations, "fracbits_policy");
    if (!(o_.kappa >= 0) || !(o_.hard_assign_fraction > 0) ||
        !(o_.tolerance > 0 && o_.tolerance < 1) || o_.max_trials < 1)
      throw value_error(detail::cat(
          "fracbits_policy: kappa ", o_.kappa, ", hard_assign_fraction ", o_.hard_assign_fraction,
          ", tolerance ", o_.tolerance, ", max_trials ", o_.max_trials,
          "; expected kappa >= 0, fraction > 0, 0 < tolerance < 1, trials >= 1"));
    kind_ = o_.cost_kind;
  }

  const fracbits_options& options() const noexcept { return o_; }
  search::update_scheme update_scheme() const noexcept { return update_scheme::joint; }
  void set_layer_costs(std::vector<layer_cost> costs) {
    costs_.set(std::move(costs), "fracbits_policy");
  }
  /// True once the bits are integer (after the bisection).
  bool hard_assigned() const noexcept { return hard_.has_value(); }
  const std::optional<bit_config>& assigned_config() const noexcept { return hard_; }
  const fracbits_bisection& last_bisection() const noexcept { return bisection_; }

  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    detail::check_two_sided(o_.activations, layers.size(), "fracbits_policy");
    costs_.attach(layers);
    state_.clear();
    hard_.reset();
    for (auto* l : layers) {
      layer_state s;
      const std::size_t nw = o_.kernel_wise ? l->out_channels() : 1;
      s.lambda_w = var::parameter(ftensor({nw}, float(o_.init_bits)));
      s.lambda_a = var::parameter(ftensor({1}, float(o_.init_bits)));
      s.alpha = detail::initial_alpha(o_.activations, *l);
      state_.push_back(std::move(s));
    }
  }

  var quantize_weights(std::size_t layer, const var& w) override {
    auto& s = at(layer);
    if (hard_) return detail::dorefa_weight(w, hard_->w_bits[layer]);
    return quant::fracbits_quantize(w, s.lambda_w, range(), quant::dorefa_weight_quantizer{});
  }
  var quantize_activations(std::size_t layer, const var& x) override {
    auto& s = at(layer);
    if (hard_)
      return detail::pact_activation(o_.activations, layer, x, s.alpha, hard_->a_bits[layer]);
    return quant::fracbits_quantize(x, s.lambda_a, range(),
                                    detail::pact_for(o_.activations, layer, s.alpha));
  }

  std::vector<var> parameters() override {
    std::vector<var> out;
    for (auto& s : state_) out.push_back(s.alpha);
    return out;
  }
  /// lambda_w (per layer [1], or [C_out] kernel-wise) and lambda_a ([1]) of every layer.
  std::vector<var> architecture_parameters() override {
    std::vector<var> out;
    for (auto& s : state_) {
      out.push_back(s.lambda_w);
      out.push_back(s.lambda_a);
    }
    return out;
  }

  /// sum_l MACs_l mean(lambda_w) lambda_a (BitOps) or params_l mean(lambda_w) (weight bits),
  /// lambdas clamped to [min_bits, max_bits].
  var expected_cost() {
    const auto& costs = costs_.get("fracbits_policy::expected_cost");
    check_attached();
    std::vector<var> lw, la;
    for (auto& s : state_) lw.push_back(s.lambda_w), la.push_back(s.lambda_a);
    return fracbits_cost(detail::desc_of(costs), lw, la, detail::metric_of(kind_), {}, range());
  }

  /// CE + kappa |C - T| / T; CE alone once the bits are integer.
  var search_loss(const var& task_loss, const budget& b) {
    kind_ = b.kind;
    const auto& costs = costs_.get("fracbits_policy::search_loss");
    b.check_feasible(costs, o_.min_bits, o_.min_bits);
    if (o_.init_from_budget && !budget_ && !hard_) init_lambdas(costs, b);
    budget_ = b;
    if (hard_) return task_loss;
    const var rel = autodiff::mul(expected_cost(), float(1.0 / b.value));
    return autodiff::add(task_loss,
                         autodiff::mul(autodiff::abs(autodiff::add(rel, -1.0f)), o_.kappa));
  }

  /// At epoch >= hard_assign_fraction * epochs: the bisection and rounding (needs the budget
  /// of a previous search_loss call; otherwise derive() does it).
  void on_search_epoch(const search_context& c, std::size_t epoch, std::size_t epochs) {
    if (!c.costs.empty()) costs_.set(c.costs, "fracbits_policy");
    if (!hard_ && budget_ && o_.hard_assign_fraction < 1 &&
        double(epoch) >= std::ceil(o_.hard_assign_fraction * double(epochs)))
      hard_assign(*budget_);
  }

  /// The integer configuration (bisecting now if not done yet, or if b is another budget).
  bit_config derive(const search_context& c, const budget& b) {
    if (!c.costs.empty()) costs_.set(c.costs, "fracbits_policy");
    if (!hard_ || !budget_ || budget_->kind != b.kind || budget_->value != b.value ||
        !b.admits(costs_.get("fracbits_policy::derive"), *hard_))
      hard_assign(b);
    return *hard_;
  }

  /// Sets every lambda to the uniform bit-width whose cost equals b (BitOps: sqrt(T / MACs),
  /// weight bits: T / params) plus init_margin, clamped to the bit range.
  void init_lambdas(const std::vector<layer_cost>& costs, const budget& b) {
    double macs = 0, params = 0;
    for (const auto& c : costs) macs += double(c.macs), params += double(c.params);
    const double eq = b.kind == budget_kind::bitops ? std::sqrt(b.value / macs) : b.value / params;
    const float v = float(clamp(eq + o_.init_margin));
    for (auto& s : state_) {
      s.lambda_w.value().fill(v);
      s.lambda_a.value().fill(v);
    }
  }

  /// round(lambda + o) clamped, per layer (kernel-wise: the channel mean of lambda_w).
  bit_config rounded(double offset) const {
    check_attached();
    bit_config c;
    for (const auto& s : state_) {
      double mw = 0;
      for (float v : s.lambda_w.value()) mw += clamp(v);
      mw /= double(s.lambda_w.size());
      c.w_bits.push_back(round_bits(mw + offset));
      c.a_bits.push_back(round_bits(clamp(s.lambda_a.value()[0]) + offset));
    }
    return c;
  }

  /// The offset bisection (see the header comment); then the bits are integer.
  void hard_assign(const budget& b) {
    kind_ = b.kind;
    const auto& costs = costs_.get("fracbits_policy::hard_assign");
    check_attached();
    b.check_feasible(costs, o_.min_bits, o_.min_bits);
    budget_ = b;
    const double T = b.value;
    auto cost = [&](double o) { return b.cost_of(costs, rounded(o)); };
    auto good = [&](double c) { return c <= T * (1 + 1e-9) && c >= T * (1 - o_.tolerance); };
    const double span = double(o_.max_bits - o_.min_bits) + 1;
    double lo = -span, hi = span, o = 0;  // cost(lo) <= T (all minimum bits)
    fracbits_bisection r{lo, cost(lo), T, 0, false};
    for (int t = 0; t < o_.max_trials; ++t) {
      const double c = cost(o);
      r.trials = t + 1;
      if (c <= T * (1 + 1e-9)) {
        lo = o;
        r.offset = o, r.cost = c;
        if (good(c)) break;
      } else {
        hi = o;
      }
      o = 0.5 * (lo + hi);
    }
    r.within_tolerance = good(r.cost);
    bisection_ = r;
    hard_ = rounded(r.offset);
  }

 private:
  struct layer_state {
    var lambda_w, lambda_a, alpha;
  };
  layer_state& at(std::size_t l) {
    if (l >= state_.size())
      throw shape_error(detail::cat("fracbits_policy: layer ", l, " of ", state_.size(),
                                    "; attach the policy to the model first"));
    return state_[l];
  }
  void check_attached() const {
    if (state_.empty())
      throw value_error("fracbits_policy: not attached to a model; call nn::attach_policy first");
  }
  quant::bit_range range() const { return {float(o_.min_bits), float(o_.max_bits)}; }
  double clamp(double v) const { return std::clamp(v, double(o_.min_bits), double(o_.max_bits)); }
  int round_bits(double v) const {
    return int(std::clamp(std::nearbyint(v), double(o_.min_bits), double(o_.max_bits)));
  }

  fracbits_options o_;
  std::vector<layer_state> state_;
  detail::layer_cost_cache costs_;
  std::optional<budget> budget_;
  std::optional<bit_config> hard_;
  fracbits_bisection bisection_;
  budget_kind kind_ = budget_kind::bitops;
};

static_assert(differentiable_policy<fracbits_policy>);

}  // namespace mixq::search
