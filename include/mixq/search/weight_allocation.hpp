// Shared by the allocation policies (OMPQ, BMPQ, HAWQ): per-layer weight-bit candidates at
// fixed activation bits, layers pinned to fixed bits, layers tied to equal bits
// (search_context::tied_layers), the multiple-choice knapsack of one budget built from
// per-layer values, its feasibility check and the resulting bit_config.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/policy.hpp"

namespace mixq::search {

/// The classes of layers that `tied` (groups of layer indices, possibly overlapping) makes
/// share their bits: every layer in exactly one class, classes in the order of their first
/// (smallest) layer, members ascending. shape_error for an index >= `layers`.
inline std::vector<std::vector<std::size_t>> tie_classes(
    std::size_t layers, std::span<const std::vector<std::size_t>> tied, const char* who) {
  std::vector<std::size_t> parent(layers);
  std::iota(parent.begin(), parent.end(), std::size_t{0});
  auto find = [&](std::size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (const auto& g : tied)
    for (std::size_t i : g) {
      if (i >= layers)
        throw shape_error(mixq::detail::cat(who, ": tied layer ", i,
                                            " does not exist; the model has ", layers, " layers"));
      parent[find(i)] = find(g.front());
    }
  std::vector<std::vector<std::size_t>> out;
  std::vector<std::size_t> class_of(layers, SIZE_MAX);
  for (std::size_t i = 0; i < layers; ++i) {
    const std::size_t r = find(i);
    if (class_of[r] == SIZE_MAX) class_of[r] = out.size(), out.emplace_back();
    out[class_of[r]].push_back(i);
  }
  return out;
}

/// What an allocation policy may choose: weight bits from `candidates` (ascending, 1..8) for
/// every layer except those pinned by `fixed_w_bits` (per layer, 0 = searched; may be empty),
/// activation bits `a_bits` everywhere. `pin_first` / `pin_last` pin the first / last layer
/// at `edge_bits` (OMPQ's and HAWQ-V3's first conv and classifier at 8 bits). With
/// `a_follows_w` a layer's activation bits equal its weight bits (HAWQ-V3's released W4A4 /
/// W8A8 layers) and `a_bits` is unused.
struct weight_search_space {
  std::vector<int> candidates{2, 3, 4, 5, 6, 8};
  int a_bits = 8;
  bool a_follows_w = false;
  bool pin_first = false, pin_last = false;
  int edge_bits = 8;
  std::vector<int> fixed_w_bits;

  static weight_search_space of(std::vector<int> candidates, int a_bits, bool a_follows_w = false) {
    weight_search_space s;
    s.candidates = std::move(candidates);
    s.a_bits = a_bits;
    s.a_follows_w = a_follows_w;
    return s;
  }

  /// Per layer: the pinned bit-width, or 0 if searched. bits_error / shape_error when the
  /// space does not make sense for `layers` layers. A pin extends to every layer tied to the
  /// pinned one (`tied`: groups of layer indices that share their bits); shape_error for a tied
  /// index out of range, value_error when one group holds two different pins.
  std::vector<int> pinned(std::size_t layers, const char* who,
                          std::span<const std::vector<std::size_t>> tied = {}) const {
    if (layers == 0) throw shape_error(mixq::detail::cat(who, ": the model has no layer costs"));
    if (candidates.empty())
      throw shape_error(mixq::detail::cat(who, ": no weight-bit candidates; expected >= 1"));
    for (std::size_t i = 0; i < candidates.size(); ++i)
      if (candidates[i] < 1 || candidates[i] > 8 || (i && candidates[i] <= candidates[i - 1]))
        throw bits_error(mixq::detail::cat(who, ": weight-bit candidate ", candidates[i],
                                           "; expected ascending values in 1..8"));
    if (a_bits < 1 || a_bits > 8 || edge_bits < 1 || edge_bits > 8)
      throw bits_error(mixq::detail::cat(who, ": activation bits ", a_bits, ", edge bits ",
                                         edge_bits, "; expected 1..8"));
    if (!fixed_w_bits.empty() && fixed_w_bits.size() != layers)
      throw shape_error(mixq::detail::cat(who, ": ", fixed_w_bits.size(), " fixed bit-widths for ",
                                          layers, " layers; expected one per layer or none"));
    std::vector<int> out(layers, 0);
    for (std::size_t i = 0; i < fixed_w_bits.size(); ++i) {
      if (fixed_w_bits[i] < 0 || fixed_w_bits[i] > 8)
        throw bits_error(mixq::detail::cat(who, ": fixed bits ", fixed_w_bits[i], " of layer ", i,
                                           "; expected 0 (searched) or 1..8"));
      out[i] = fixed_w_bits[i];
    }
    if (pin_first && out.front() == 0) out.front() = edge_bits;
    if (pin_last && out.back() == 0) out.back() = edge_bits;
    if (tied.empty()) return out;
    for (const auto& cls : tie_classes(layers, tied, who)) {
      int pin = 0;
      std::size_t by = 0;
      for (std::size_t i : cls) {
        if (!out[i]) continue;
        if (pin && pin != out[i])
          throw value_error(mixq::detail::cat(who, ": tied layers ", by, " and ", i,
                                              " are pinned to ", pin, " and ", out[i],
                                              " bits; expected equal pins within a tie group"));
        pin = out[i], by = i;
      }
      for (std::size_t i : cls) out[i] = pin;
    }
    return out;
  }

  /// The cheapest config of the space (smallest candidate on every searched layer).
  bit_config cheapest(std::size_t layers, const char* who,
                      std::span<const std::vector<std::size_t>> tied = {}) const {
    const auto pin = pinned(layers, who, tied);
    bit_config c = bit_config::uniform(layers, candidates.front(), a_bits);
    for (std::size_t i = 0; i < layers; ++i) {
      if (pin[i]) c.w_bits[i] = pin[i];
      if (a_follows_w) c.a_bits[i] = c.w_bits[i];
    }
    return c;
  }

  /// budget_error naming the smallest feasible value when even the cheapest config of the
  /// space exceeds `b`.
  void check_feasible(std::span<const layer_cost> costs, const budget& b, const char* who,
                      std::span<const std::vector<std::size_t>> tied = {}) const {
    const double least = b.cost_of(costs, cheapest(costs.size(), who, tied));
    if (least > b.value * (1 + 1e-9))
      throw budget_error(mixq::detail::cat(
          who, ": budget of ", detail::figure(b.value), " ", to_string(b.kind),
          " is infeasible: the cheapest config (W", candidates.front(), "A",
          a_follows_w ? candidates.front() : a_bits, " on every searched layer) costs ",
          detail::figure(least), "; the smallest feasible value is ", detail::figure(least)));
  }
};

/// The knapsack of one budget: layer i chooses among the candidates (or its pinned bits alone)
/// with value `value_of(i, w_bits)` (maximised) and cost in the budget's unit. Layers in one
/// `tied` group take the same bits (a pin on one of them pins them all).
inline allocation_problem make_weight_problem(
    std::span<const layer_cost> costs, const weight_search_space& space, const budget& b,
    const std::function<double(std::size_t, int)>& value_of, const char* who,
    std::span<const std::vector<std::size_t>> tied = {}) {
  const auto pin = space.pinned(costs.size(), who, tied);
  allocation_problem p;
  p.tied_layers.assign(tied.begin(), tied.end());
  p.budgets = {b.value * (1 + 1e-9)};  // the tolerance admits() grants
  for (std::size_t i = 0; i < costs.size(); ++i) {
    std::vector<allocation_option> layer;
    auto option = [&](int w) {
      const int a = space.a_follows_w ? w : space.a_bits;
      const double c = b.kind == budget_kind::bitops ? layer_bitops(costs[i], w, a)
                                                     : layer_size_bits(costs[i], w);
      layer.push_back({pin[i] ? 0.0 : value_of(i, w), {c}});
    };
    if (pin[i])
      option(pin[i]);
    else
      for (int w : space.candidates) option(w);
    p.layers.push_back(std::move(layer));
  }
  return p;
}

/// The config of a solved make_weight_problem (the same `tied` groups).
inline bit_config weight_config(std::span<const layer_cost> costs, const weight_search_space& space,
                                std::span<const std::size_t> choice, const char* who,
                                std::span<const std::vector<std::size_t>> tied = {}) {
  const auto pin = space.pinned(costs.size(), who, tied);
  bit_config c = bit_config::uniform(costs.size(), 1, space.a_bits);
  for (std::size_t i = 0; i < costs.size(); ++i) {
    c.w_bits[i] = pin[i] ? pin[i] : space.candidates.at(choice[i]);
    if (space.a_follows_w) c.a_bits[i] = c.w_bits[i];
  }
  return c;
}

/// For the lifetime of the scope: the model in eval mode and in full precision (any attached
/// precision_policy detached); both restored afterwards (the policy is re-attached, so its
/// on_attach() runs again). Proxies that read the float model (OMPQ's features, HAWQ's
/// Hessian) use it.
class full_precision_scope {
 public:
  explicit full_precision_scope(nn::module& model) : model_(model), training_(model.is_training()) {
    const auto layers = nn::quantized_layers(model);
    policy_ = layers.empty() ? nullptr : layers.front()->policy();
    if (policy_) nn::detach_policy(model);
    model.eval();
  }
  ~full_precision_scope() {
    model_.train(training_);
    if (policy_) nn::attach_policy(model_, *policy_);
  }
  full_precision_scope(const full_precision_scope&) = delete;
  full_precision_scope& operator=(const full_precision_scope&) = delete;

 private:
  nn::module& model_;
  bool training_;
  nn::precision_policy* policy_ = nullptr;
};

/// Symmetric uniform fake quantization of a weight tensor at `bits` (>= 2): per-tensor scale
/// s = max|w| / (2^(bits-1) - 1), values s * round(w / s). What BMPQ trains with and what
/// HAWQ's perturbation ||W - Q_b(W)||^2 measures.
inline std::vector<float> symmetric_fake_quant(std::span<const float> w, int bits) {
  if (bits < 2 || bits > 8)
    throw bits_error(mixq::detail::cat("symmetric_fake_quant: ", bits,
                                       " bits; expected 2..8 (a sign and a magnitude)"));
  float m = 0;
  for (float v : w) m = std::max(m, std::abs(v));
  std::vector<float> out(w.size(), 0.0f);
  if (!(m > 0)) return out;
  const float levels = float((1 << (bits - 1)) - 1), s = m / levels;
  for (std::size_t i = 0; i < w.size(); ++i)
    out[i] = s * std::clamp(std::round(w[i] / s), -levels, levels);
  return out;
}

/// The exact integer optimum of make_weight_problem as a config (budget checked first), tied
/// layers (search_context::tied_layers) sharing their bits.
inline bit_config solve_weight_allocation(std::span<const layer_cost> costs,
                                          const weight_search_space& space, const budget& b,
                                          const std::function<double(std::size_t, int)>& value_of,
                                          const char* who,
                                          std::span<const std::vector<std::size_t>> tied = {}) {
  space.check_feasible(costs, b, who, tied);
  const auto sol = solve_allocation(make_weight_problem(costs, space, b, value_of, who, tied));
  return weight_config(costs, space, sol.choice, who, tied);
}

}  // namespace mixq::search
