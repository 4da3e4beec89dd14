// What a search policy is: a `budget` (BitOps or weight bits, absolute or "like uniform WxAy"),
// the `search_context` a policy may read (model, layer costs, train/validation batches), and
// the two policy concepts the driver (search/driver.hpp) accepts: differentiable_policy
// (DNAS, EBS, FracBits) and allocation_policy (uniform, OMPQ, BMPQ, HAWQ).
#pragma once

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "mixq/autodiff/var.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/quant/bit_config.hpp"
#include "mixq/search/cost.hpp"

namespace mixq::search {

/// The unit a budget is expressed in. Every quantized layer is counted at its configured bits
/// (cost_conventions::all_layers(): no edge-layer exceptions, weights only, no bias/BN).
enum class budget_kind {
  bitops,       // sum over layers of MACs * w_bits * a_bits
  weight_bits,  // model size: sum over layers of params * w_bits (bits, not bytes)
};

inline const char* to_string(budget_kind k) {
  return k == budget_kind::bitops ? "bitops" : "weight_bits";
}

namespace detail {
/// A cost figure with 15 significant digits (exact for the integers a layer table sums to).
inline std::string figure(double x) {
  std::ostringstream os;
  os.precision(15);
  os << x;
  return os.str();
}
}  // namespace detail

/// An upper limit on one cost figure. Build it absolute (bitops(x), weight_bits(x)) or relative
/// to a uniform configuration (like_uniform(kind, costs, 3, 3) = "as much as uniform W3A3").
struct budget {
  budget_kind kind = budget_kind::bitops;
  double value = 0;  // in the kind's unit (BitOps, or bits of weights)

  static budget bitops(double v) { return checked({budget_kind::bitops, v}); }
  static budget weight_bits(double v) { return checked({budget_kind::weight_bits, v}); }

  /// The cost of uniform W`w`A`a` on these layers. bits_error unless 1 <= w, a <= 8;
  /// shape_error when there is no layer.
  static budget like_uniform(budget_kind kind, std::span<const layer_cost> costs, int w, int a) {
    check_bits(w, a, "budget::like_uniform");
    if (costs.empty())
      throw shape_error("budget::like_uniform: no layer costs; expected one per quantized layer");
    const budget b{kind, 0.0};
    return checked({kind, b.cost_of(costs, bit_config::uniform(costs.size(), w, a))});
  }

  /// The cost of `config` on `costs` in this budget's unit. shape_error / bits_error when the
  /// config does not fit the layers or has bits outside 1..8.
  double cost_of(std::span<const layer_cost> costs, const bit_config& config) const {
    config.validate(costs.size());
    double total = 0;
    for (std::size_t i = 0; i < costs.size(); ++i)
      total += kind == budget_kind::bitops
                   ? layer_bitops(costs[i], config.w_bits[i], config.a_bits[i])
                   : layer_size_bits(costs[i], config.w_bits[i]);
    return total;
  }

  /// Per-layer costs of `config` in this budget's unit (what cost_of() sums).
  std::vector<double> layer_costs(std::span<const layer_cost> costs,
                                  const bit_config& config) const {
    config.validate(costs.size());
    std::vector<double> out(costs.size());
    for (std::size_t i = 0; i < costs.size(); ++i)
      out[i] = kind == budget_kind::bitops
                   ? layer_bitops(costs[i], config.w_bits[i], config.a_bits[i])
                   : layer_size_bits(costs[i], config.w_bits[i]);
    return out;
  }

  /// cost_of(config) <= value, with a relative tolerance of 1e-9 (the figures are sums of
  /// doubles, and "like uniform" budgets must admit that very uniform config).
  bool admits(std::span<const layer_cost> costs, const bit_config& config) const {
    return cost_of(costs, config) <= value * (1 + 1e-9);
  }

  /// Throws budget_error, naming the smallest feasible value, when even `min_w_bits` /
  /// `min_a_bits` on every layer exceeds this budget (no config can meet it).
  void check_feasible(std::span<const layer_cost> costs, int min_w_bits, int min_a_bits) const {
    check_bits(min_w_bits, min_a_bits, "budget::check_feasible");
    const double least = cost_of(costs, bit_config::uniform(costs.size(), min_w_bits, min_a_bits));
    if (least > value * (1 + 1e-9))
      throw budget_error(mixq::detail::cat(
          "budget of ", detail::figure(value), " ", to_string(kind), " is infeasible: even W",
          min_w_bits, "A", min_a_bits, " on every layer costs ", detail::figure(least),
          "; the smallest feasible value is ", detail::figure(least)));
  }

  /// "bitops <= 1.2e+06" for logs.
  std::string describe() const {
    return mixq::detail::cat(to_string(kind), " <= ", detail::figure(value));
  }

 private:
  static budget checked(budget b) {
    if (!std::isfinite(b.value) || b.value <= 0)
      throw budget_error(mixq::detail::cat("budget of ", b.value, " ", to_string(b.kind),
                                           "; expected a finite figure > 0"));
    return b;
  }
  static void check_bits(int w, int a, const char* who) {
    if (w < 1 || w > 8 || a < 1 || a > 8)
      throw bits_error(mixq::detail::cat(who, ": W", w, "A", a, "; expected bits 1..8"));
  }
};

/// One mini-batch: images [B, C, H, W] and their class labels (the same fields as
/// data::batch, so nn::train_epoch / evaluate accept either).
struct batch {
  autodiff::ftensor images;
  std::vector<int> labels;
};

/// What a policy may read during a search. The model is the one being searched (its quantized
/// layers in nn::quantized_layers() order, which is the order of `costs` and of bit_configs).
/// The batch sources are the driver's train and validation splits of the training set, in the
/// current epoch's order; the test set is never exposed to policies.
struct search_context {
  nn::module& model;
  std::vector<layer_cost> costs;
  std::function<std::size_t()> train_batches;
  std::function<batch(std::size_t)> train_batch;
  std::function<std::size_t()> val_batches;
  std::function<batch(std::size_t)> val_batch;
  std::uint64_t seed = 0;
  std::ostream* log = nullptr;  // where a policy may print progress (nullptr: silent)
  /// Groups of layer indices that must share their weight bits (and so, with a_follows_w,
  /// their activation bits): the traced model's shared_input_groups, e.g. a residual block's
  /// conv1 and downsampling conv, which read the same tensor. The allocation policies pass
  /// them to the solver; empty = no tie. Last, so that positional initialisation still works.
  std::vector<std::vector<std::size_t>> tied_layers{};
};

/// Differentiable search (DNAS, EBS, FracBits). The policy is a precision_policy that the
/// driver attaches to the model for the warm-up and search phases; its
/// architecture_parameters() are updated by Adam on search_loss(), the weights (and its
/// parameters()) by SGD on the task loss.
///  - search_loss(task_loss, b): the loss of an architecture step, built from the task loss
///    and the expected cost (e.g. CE * beta * (log C)^gamma, or CE + kappa * |C - T|).
///  - expected_cost(): the relaxed cost of the current architecture state, in b's unit, as
///    a one-element var depending on the architecture parameters.
///  - on_search_epoch(c, epoch, epochs): called before each search epoch (temperature
///    annealing, FracBits' bisection at 80%, ...).
///  - derive(c, b): the discrete config at the end of the search; the driver checks that
///    b admits it (budget_error otherwise), detaches the policy and finetunes the layers'
///    own weights at the config, so a policy that trains separate weights per candidate
///    (DNAS) should copy the chosen candidate's weights into the layers here.
/// Optional: `search::update_scheme update_scheme() const` to ask for joint instead of
/// alternating weight / architecture updates (search_options may override).
template <class P>
concept differentiable_policy = std::derived_from<P, nn::precision_policy> &&
    requires(P& p, const search_context& c, const autodiff::var& task_loss, const budget& b,
             std::size_t epoch, std::size_t epochs) {
  { p.search_loss(task_loss, b) } -> std::same_as<autodiff::var>;
  { p.expected_cost() } -> std::same_as<autodiff::var>;
  p.on_search_epoch(c, epoch, epochs);
  { p.derive(c, b) } -> std::same_as<bit_config>;
};

/// Allocation (uniform, OMPQ, BMPQ, HAWQ): scores from the model and a few batches, a solver,
/// a bit_config.
///  - allocate(c, b): the config, computed once after the warm-up; must be admitted by b.
///  - on_epoch_end(c, b, epoch): called after every finetune epoch; a new config switches the
///    model to it (BMPQ's periodic re-allocation), std::nullopt keeps the current one.
/// If P also derives from nn::precision_policy, the driver attaches the policy itself for the
/// finetune (it must then quantize at the bits it returned); otherwise it uses a fixed-bit
/// precision policy at the returned config.
template <class P>
concept allocation_policy = requires(P& p, search_context& c, const budget& b, std::size_t epoch) {
  { p.allocate(c, b) } -> std::same_as<bit_config>;
  { p.on_epoch_end(c, b, epoch) } -> std::same_as<std::optional<bit_config>>;
};

/// How the driver interleaves weight and architecture steps of a differentiable search.
enum class update_scheme {
  alternating,  // per step: a weight step on a train batch, then an architecture step on a
                // validation batch (DNAS)
  joint,        // per step: one backward of search_loss on a train batch updates both (EBS,
                // EdMIPS); the validation split is then used only for reporting
};

}  // namespace mixq::search
