// Shared pieces of the differentiable search policies (dnas_policy, ebs_policy,
// fracbits_policy): candidate-set checks, layer costs read from the attached layers, relaxed
// cost terms as vars, the greedy repair that brings a derived configuration under budget, and
// the budget fill (greedy or exact) that spends what a cheap derived configuration left over.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "mixq/autodiff/ops.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/quant/bit_config.hpp"
#include "mixq/quant/dorefa.hpp"
#include "mixq/quant/pact.hpp"
#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/relaxed_cost.hpp"

namespace mixq::search::detail {

using autodiff::ftensor;
using autodiff::var;

/// Candidate bit-widths must be a non-empty set of values in 1..8 (duplicates removed, sorted).
inline std::vector<int> checked_candidates(std::vector<int> bits, const char* who,
                                           const char* what) {
  if (bits.empty())
    throw value_error(cat(who, ": the ", what,
                          " candidate set is empty; expected at least one bit-width in 1..8"));
  for (int b : bits)
    if (b < 1 || b > 8)
      throw bits_error(cat(who, ": ", what, " candidate ", b, " bits; expected 1..8"));
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  return bits;
}

/// The cost record of a quantized layer from its geometry and the output shape of its last
/// forward (MACs need the output size). value_error before the first forward.
inline layer_cost cost_of_layer(const nn::quantized_layer& l, const char* who) {
  const auto& out = l.output_shape();
  if (out.empty())
    throw value_error(cat(who, ": quantized layer ", l.index(),
                          " has not run a forward yet; run one forward (or call set_layer_costs) "
                          "before asking for costs"));
  layer_cost c;
  c.name = cat("layer", l.index());
  c.kind = l.kind() == nn::quantized_kind::linear           ? layer_kind::linear
           : l.kind() == nn::quantized_kind::depthwise_conv ? layer_kind::depthwise_conv
                                                            : layer_kind::conv;
  c.in_channels = std::int64_t(l.in_channels());
  c.out_channels = std::int64_t(l.out_channels());
  c.kernel = std::int64_t(l.kernel_size());
  c.stride = std::int64_t(l.stride());
  c.groups = std::int64_t(l.groups());
  c.out_h = out.size() == 4 ? std::int64_t(out[2]) : 1;
  c.out_w = out.size() == 4 ? std::int64_t(out[3]) : 1;
  c.params = std::int64_t(l.weight_params());
  c.bias_params = l.bias.defined() ? std::int64_t(l.bias.size()) : 0;
  c.macs = c.params * c.out_h * c.out_w;
  return c;
}

/// Layer costs of the attached layers (set explicitly, or read from the last forward).
class layer_cost_cache {
 public:
  void attach(std::span<nn::quantized_layer* const> layers) {
    layers_.assign(layers.begin(), layers.end());
    costs_.clear();
  }
  void set(std::vector<layer_cost> costs, const char* who) {
    if (!layers_.empty() && costs.size() != layers_.size())
      throw shape_error(cat(who, ": ", costs.size(), " layer costs for ", layers_.size(),
                            " quantized layers; expected one per layer"));
    costs_ = std::move(costs);
  }
  const std::vector<layer_cost>& get(const char* who) {
    if (costs_.empty()) {
      if (layers_.empty())
        throw value_error(cat(who, ": no quantized layer attached; attach the policy first"));
      for (const auto* l : layers_) costs_.push_back(cost_of_layer(*l, who));
    }
    return costs_;
  }
  std::span<nn::quantized_layer* const> layers() const { return layers_; }

 private:
  std::vector<nn::quantized_layer*> layers_;
  std::vector<layer_cost> costs_;
};

/// Cost of one layer at (w, a) bits in a budget's unit (the terms budget::cost_of sums).
inline double unit_cost(const layer_cost& c, budget_kind k, double w, double a) {
  return k == budget_kind::bitops ? layer_bitops(c, w, a) : layer_size_bits(c, w);
}

/// A one-element constant.
inline var scalar(double v) {
  return autodiff::constant(ftensor({1}, float(v)));
}

/// Element k of a vector var as a one-element var (gradient flows to that element only).
inline var element(const var& v, std::size_t k) {
  ftensor onehot(v.shape(), 0.0f);
  onehot[k] = 1.0f;
  return autodiff::sum(autodiff::mul(v, autodiff::constant(std::move(onehot))));
}

inline std::size_t argmax(std::span<const float> v) {
  return std::size_t(std::max_element(v.begin(), v.end()) - v.begin());
}

/// log softmax of a float vector (plain doubles, for choosing configurations).
inline std::vector<double> log_probs(std::span<const float> logits) {
  const double m = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float x : logits) s += std::exp(double(x) - m);
  std::vector<double> out;
  for (float x : logits) out.push_back(double(x) - m - std::log(s));
  return out;
}

/// One discrete (w, a) choice of a layer and its log-probability under the search state.
struct layer_choice {
  int w = 8, a = 8;
  double logp = 0;
};

/// Config from per-layer choice indices.
inline bit_config config_of(const std::vector<std::vector<layer_choice>>& choices,
                            std::span<const std::size_t> chosen) {
  bit_config c;
  for (std::size_t l = 0; l < choices.size(); ++l) {
    c.w_bits.push_back(choices[l][chosen[l]].w);
    c.a_bits.push_back(choices[l][chosen[l]].a);
  }
  return c;
}

/// Greedy budget repair. (1) While the configuration costs more than `b`, move one layer to a
/// cheaper choice, picking the move that loses the least log-probability per unit of cost
/// saved. (2) Then, while a move to a more probable (and costlier) choice still fits, take the
/// one gaining the most log-probability per unit of cost added, so that step (1)'s overshoot
/// is given back. A configuration already within budget is returned unchanged. budget_error
/// if no cheaper choice is left (callers check feasibility first).
inline std::vector<std::size_t> repair_to_budget(
    const std::vector<std::vector<layer_choice>>& choices, std::vector<std::size_t> chosen,
    std::span<const layer_cost> costs, const budget& b, const char* who) {
  auto cost = [&](std::size_t l, std::size_t k) {
    return unit_cost(costs[l], b.kind, choices[l][k].w, choices[l][k].a);
  };
  const double limit = b.value * (1 + 1e-9);
  double total = 0;
  for (std::size_t l = 0; l < choices.size(); ++l) total += cost(l, chosen[l]);
  if (total <= limit) return chosen;
  while (total > limit) {
    double best_score = std::numeric_limits<double>::infinity(), best_saving = 0;
    std::size_t best_l = 0, best_k = 0;
    for (std::size_t l = 0; l < choices.size(); ++l) {
      const double now = cost(l, chosen[l]);
      for (std::size_t k = 0; k < choices[l].size(); ++k) {
        const double saving = now - cost(l, k);
        if (saving <= 0) continue;
        const double loss = std::max(0.0, choices[l][chosen[l]].logp - choices[l][k].logp);
        const double score = loss / saving;
        if (score < best_score || (score == best_score && saving > best_saving))
          best_score = score, best_saving = saving, best_l = l, best_k = k;
      }
    }
    if (best_saving <= 0)
      throw budget_error(
          cat(who, ": no cheaper candidate left at cost ", total, " against ", b.describe()));
    total -= best_saving;
    chosen[best_l] = best_k;
  }
  for (;;) {
    double best_score = 0, best_added = 0;
    std::size_t best_l = 0, best_k = 0;
    for (std::size_t l = 0; l < choices.size(); ++l) {
      const double now = cost(l, chosen[l]);
      for (std::size_t k = 0; k < choices[l].size(); ++k) {
        const double added = cost(l, k) - now;
        const double gain = choices[l][k].logp - choices[l][chosen[l]].logp;
        if (added <= 0 || gain <= 0 || total + added > limit) continue;
        if (gain / added > best_score)
          best_score = gain / added, best_added = added, best_l = l, best_k = k;
      }
    }
    if (best_added <= 0) return chosen;
    total += best_added;
    chosen[best_l] = best_k;
  }
}

/// Cost of a configuration of choices in b's unit.
inline double choices_cost(const std::vector<std::vector<layer_choice>>& choices,
                           std::span<const std::size_t> chosen, std::span<const layer_cost> costs,
                           budget_kind k) {
  double t = 0;
  for (std::size_t l = 0; l < choices.size(); ++l)
    t += unit_cost(costs[l], k, choices[l][chosen[l]].w, choices[l][chosen[l]].a);
  return t;
}

/// Greedy budget fill (this library's addition, not from a paper). From `chosen` (within
/// `b`), while the cost is below (1 - slack) * b.value, take the costlier move of one layer
/// that still fits and loses the least log-probability per unit of cost added (ties: the
/// larger step). Stops when no costlier move fits. The cost never decreases.
inline std::vector<std::size_t> fill_budget_greedy(
    const std::vector<std::vector<layer_choice>>& choices, std::vector<std::size_t> chosen,
    std::span<const layer_cost> costs, const budget& b, double slack) {
  auto cost = [&](std::size_t l, std::size_t k) {
    return unit_cost(costs[l], b.kind, choices[l][k].w, choices[l][k].a);
  };
  const double limit = b.value * (1 + 1e-9), target = (1 - slack) * b.value;
  double total = choices_cost(choices, chosen, costs, b.kind);
  while (total < target) {
    double best_score = std::numeric_limits<double>::infinity(), best_added = 0;
    std::size_t best_l = 0, best_k = 0;
    for (std::size_t l = 0; l < choices.size(); ++l) {
      const double now = cost(l, chosen[l]);
      for (std::size_t k = 0; k < choices[l].size(); ++k) {
        const double added = cost(l, k) - now;
        if (added <= 0 || total + added > limit) continue;
        const double score = (choices[l][chosen[l]].logp - choices[l][k].logp) / added;
        if (score < best_score || (score == best_score && added > best_added))
          best_score = score, best_added = added, best_l = l, best_k = k;
      }
    }
    if (best_added <= 0) break;
    total += best_added;
    chosen[best_l] = best_k;
  }
  return chosen;
}

/// An exactly filled configuration and the window it is optimal for.
struct budget_fill {
  std::vector<std::size_t> chosen;
  double lower = 0;             // the cost floor of the window [lower, b.value] solved for
  bool proven_optimal = false;  // false: node limit hit (best found) or `start` kept
};

/// Exact budget fill (this library's addition, not from a paper): the configuration that
/// maximises sum_l logp_l(c_l) subject to lower <= cost <= b.value, with
/// lower = max(cost(start), (1 - s) * b.value), solved by solve_allocation() as a
/// multiple-choice knapsack with two budgets (cost <= T and -cost <= -lower). `start` must be
/// within b (e.g. argmax after repair_to_budget), so the result never costs less than it. If
/// no configuration falls in the window, s doubles until one does; once the floor reaches
/// cost(start) the window holds `start` itself, so this ends. A search that hits `max_nodes`
/// keeps its best find (proven_optimal = false), or `start` if it found none.
inline budget_fill fill_budget_exact(const std::vector<std::vector<layer_choice>>& choices,
                                     const std::vector<std::size_t>& start,
                                     std::span<const layer_cost> costs, const budget& b,
                                     double slack, std::uint64_t max_nodes = 1'000'000) {
  const double start_cost = choices_cost(choices, start, costs, b.kind);
  allocation_problem p;
  for (std::size_t l = 0; l < choices.size(); ++l) {
    std::vector<allocation_option> opts;
    for (const auto& ch : choices[l]) {
      const double c = unit_cost(costs[l], b.kind, ch.w, ch.a);
      opts.push_back({ch.logp, {c, -c}});
    }
    p.layers.push_back(std::move(opts));
  }
  allocation_solver_options so;
  so.max_nodes = max_nodes;
  double s = std::clamp(slack, 1e-6, 1.0);
  for (;;) {
    const double lower = std::max(start_cost, (1 - s) * b.value);
    p.budgets = {b.value * (1 + 1e-9), -lower * (1 - 1e-9)};
    try {
      const auto sol = solve_allocation(p, so);
      return {sol.choice, lower, sol.proven_optimal};
    } catch (const budget_error&) {
      if (lower <= start_cost) return {start, lower, false};  // node limit before any find
    }
    s = std::min(1.0, 2 * s);
  }
}

}  // namespace mixq::search::detail

// ---- quantizers (quant/) -------------------------------------------------------------------
namespace mixq::search {

/// PACT settings of the differentiable policies: the same knobs (and defaults) as
/// nn::fixed_policy, so the searched and the finetuned models quantize alike.
struct pact_settings {
  quant::pact_options pact{};  // alpha gradient variant (residual by default)
  /// Layers whose input can be negative: PACT clips them to [-alpha, alpha].
  std::vector<std::size_t> two_sided_layers{};
  float conv_alpha = 8.0f;  // initial alpha of conv layers (FracBits' value)
  float linear_alpha = 10.0f;
};

}  // namespace mixq::search

namespace mixq::search::detail {

inline void check_pact_settings(const pact_settings& p, const char* who) {
  if (!(p.conv_alpha > 0) || !(p.linear_alpha > 0) || !std::isfinite(p.conv_alpha) ||
      !std::isfinite(p.linear_alpha))
    throw value_error(cat(who, ": initial PACT alphas ", p.conv_alpha, " (conv) and ",
                          p.linear_alpha, " (linear); expected finite values > 0"));
}
inline void check_two_sided(const pact_settings& p, std::size_t layers, const char* who) {
  for (std::size_t l : p.two_sided_layers)
    if (l >= layers)
      throw shape_error(cat(who, ": two-sided layer ", l, " does not exist; the model has ", layers,
                            " quantized layers"));
}
inline var initial_alpha(const pact_settings& p, const nn::quantized_layer& l) {
  return var::parameter(
      ftensor({1}, l.kind() == nn::quantized_kind::linear ? p.linear_alpha : p.conv_alpha));
}
/// quant::pact on layer `layer`'s input. alpha is kept >= 1e-3 (quant::pact needs alpha > 0
/// and a trained alpha could cross 0; the gradient passes while alpha is above the floor).
inline quant::pact_quantizer pact_for(const pact_settings& p, std::size_t layer, const var& alpha) {
  quant::pact_options o = p.pact;
  o.two_sided = o.two_sided || std::find(p.two_sided_layers.begin(), p.two_sided_layers.end(),
                                         layer) != p.two_sided_layers.end();
  return {autodiff::maximum(alpha, scalar(1e-3)), o};
}
inline var pact_activation(const pact_settings& p, std::size_t layer, const var& x,
                           const var& alpha, int bits) {
  const int b[1] = {bits};
  return pact_for(p, layer, alpha)(x, std::span<const int>(b));
}
inline var dorefa_weight(const var& w, int bits) {
  return quant::dorefa_weights(w, bits);
}

/// The layer costs as a model_desc for the relaxed-cost vars of search/relaxed_cost.hpp.
inline model_desc desc_of(const std::vector<layer_cost>& costs) {
  return {"searched", costs, {}};
}
inline cost_metric metric_of(budget_kind k) {
  return k == budget_kind::bitops ? cost_metric::bitops : cost_metric::size_bits;
}

}  // namespace mixq::search::detail
