// ebs_policy: EBS mixed-precision search (Li et al., arXiv 2003.07577) as a
// differentiable_policy: one shared meta weight per layer, softmax strengths over weight and
// activation candidates, and ONE convolution per layer on the aggregated quantized tensors.
//
// [reconstruction] beyond the abstract (algorithms.md §4; it coincides with EdMIPS's verified
// shared-weight mode, §8):
//  - strengths s_w[l] over weight bits, s_a[l] over activation bits, r = softmax(s), no noise
//    (strength_init, default 0.01 as EdMIPS);
//  - W_hat = sum_i r_w[i] DoReFa_{b_i}(W), X_hat = sum_j r_a[j] PACT_{b_j}(X) (quant::
//    dorefa_weights, quant::pact with one alpha per layer and activation candidate; the PACT
//    knobs are nn::fixed_policy's), Y = conv(X_hat, W_hat): one convolution,
//    equal to the expectation over all (w, a) pairs because the convolution is bilinear;
//  - expected cost MACs * E[w] * E[a] (BitOps) or params * E[w] (weight bits);
//  - penalty: absolute (default) kappa * |C - T| / T, or linear (EdMIPS) lambda * C / T, with
//    T the budget value (dividing by T keeps kappa and lambda scale-free);
//  - joint single-level updates (update_scheme::joint), as EdMIPS;
//  - final choice: argmax of the strengths per layer for weights and activations separately;
//    when that exceeds the budget it is repaired greedily (least log-probability lost per
//    cost saved), an addition so the driver always receives a config within budget.
//
// Budget fill (this library's addition, not the paper's; ebs_options::derive, on by default).
// After a short search the strengths are still close to uniform, so the expected cost (a mean
// over candidates, ~3.6 bits for {1,2,3,4,8}) sits far above a low budget such as W2A2 and
// the penalty pushes every layer's argmax to the cheapest candidates: on Fashion-MNIST (demo
// CNN, one search epoch, W2A2 BitOps) argmax used 29.5% of the budget (finetuned 61.2%, uniform
// 73.0%); filled, 98.3% (71.4%). The repair above only moves down, so that leftover was never
// spent. ebs_derive::fill_exact (default) returns the
// exact optimum of
//     max sum_l log p_l(w_l, a_l)   subject to   lower <= cost <= T,
//     lower = max(cost of argmax+repair, (1 - fill_slack) T)
// (log p_l(w, a) = log r_w + log r_a) from solve_allocation() as a two-budget multiple-choice
// knapsack (detail::fill_budget_exact; fill_slack doubles while the window holds no config).
// It is the most probable configuration that spends the budget, it is exact (brute-force
// checked in the tests) and, with 25 (w, a) options per layer and random strengths, took
// under 1 ms on ResNet-18's 21 layers and up to 0.1 s on MobileNetV2's 53 (W2..W4 budgets);
// fill_max_nodes caps the branch and bound (the best find is kept). ebs_derive::fill_greedy is the
// cheap heuristic (the upgrade losing the least log-probability per unit of cost added, while it
// fits, until the floor is met); ebs_derive::argmax is the paper's plain rule.
#pragma once

#include <cstdint>
#include <vector>

#include "mixq/search/differentiable_common.hpp"

namespace mixq::search {

enum class ebs_penalty { absolute, linear };

/// How derive() turns strengths into a config (see the header comment).
enum class ebs_derive {
  argmax,       // the paper's: argmax per layer (repaired greedily only when over budget)
  fill_greedy,  // argmax + repair, then greedy upgrades until the cost floor is met
  fill_exact,   // the most probable config with cost in [floor, T] (exact; the default)
};

struct ebs_options {
  std::vector<int> w_bits{1, 2, 3, 4, 8};
  std::vector<int> a_bits{1, 2, 3, 4, 8};
  float strength_init = 0.01f;
  pact_settings activations{};
  ebs_penalty penalty = ebs_penalty::absolute;
  float kappa = 1.0f;                           // absolute: kappa * |C - T| / T
  float lambda = 0.1f;                          // linear: lambda * C / T
  budget_kind cost_kind = budget_kind::bitops;  // unit of expected_cost() before a budget is seen
  ebs_derive derive = ebs_derive::fill_exact;
  double fill_slack = 0.02;  // cost floor of the fill: (1 - fill_slack) * budget, in (0, 1]
  std::uint64_t fill_max_nodes = 1'000'000;  // branch-and-bound cap of fill_exact
};

class ebs_policy : public nn::precision_policy {
 public:
  using var = autodiff::var;
  using ftensor = autodiff::ftensor;

  explicit ebs_policy(ebs_options o = {}) : o_(std::move(o)) {
    o_.w_bits = detail::checked_candidates(o_.w_bits, "ebs_policy", "weight");
    o_.a_bits = detail::checked_candidates(o_.a_bits, "ebs_policy", "activation");
    if (!(o_.kappa >= 0) || !(o_.lambda >= 0) || !std::isfinite(o_.strength_init))
      throw value_error(detail::cat("ebs_policy: kappa ", o_.kappa, ", lambda ", o_.lambda,
                                    ", strength_init ", o_.strength_init,
                                    "; expected kappa, lambda >= 0 and a finite init"));
    if (!(o_.fill_slack > 0 && o_.fill_slack <= 1) || o_.fill_max_nodes == 0)
      throw value_error(detail::cat("ebs_policy: fill_slack ", o_.fill_slack, ", fill_max_nodes ",
                                    o_.fill_max_nodes,
                                    "; expected 0 < fill_slack <= 1 and fill_max_nodes >= 1"));
    detail::check_pact_settings(o_.activations, "ebs_policy");
    kind_ = o_.cost_kind;
  }

  const ebs_options& options() const noexcept { return o_; }
  search::update_scheme update_scheme() const noexcept { return update_scheme::joint; }
  void set_layer_costs(std::vector<layer_cost> costs) {
    costs_.set(std::move(costs), "ebs_policy");
  }

  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    detail::check_two_sided(o_.activations, layers.size(), "ebs_policy");
    costs_.attach(layers);
    state_.clear();
    for (std::size_t l = 0; l < layers.size(); ++l) {
      layer_state s;
      s.s_w = var::parameter(ftensor({o_.w_bits.size()}, o_.strength_init));
      s.s_a = var::parameter(ftensor({o_.a_bits.size()}, o_.strength_init));
      for (std::size_t j = 0; j < o_.a_bits.size(); ++j)
        s.alphas.push_back(detail::initial_alpha(o_.activations, *layers[l]));
      state_.push_back(std::move(s));
    }
  }

  /// W_hat = sum_i r_w[i] Q_{w_i}(W) (the meta weight is the layer's own weight).
  var quantize_weights(std::size_t layer, const var& w) override {
    auto& s = at(layer);
    std::vector<var> qs;
    for (int b : o_.w_bits) qs.push_back(detail::dorefa_weight(w, b));
    return autodiff::weighted_sum(qs, autodiff::softmax(s.s_w));
  }
  /// X_hat = sum_j r_a[j] PACT_{a_j}(X) (one weighted_sum node: the terms are activation-sized).
  var quantize_activations(std::size_t layer, const var& x) override {
    auto& s = at(layer);
    std::vector<var> qs;
    for (std::size_t j = 0; j < o_.a_bits.size(); ++j)
      qs.push_back(detail::pact_activation(o_.activations, layer, x, s.alphas[j], o_.a_bits[j]));
    return autodiff::weighted_sum(qs, autodiff::softmax(s.s_a));
  }
  // forward(): the precision_policy default, one layer.compute() on the two aggregates.

  std::vector<var> parameters() override {
    std::vector<var> out;
    for (auto& s : state_) out.insert(out.end(), s.alphas.begin(), s.alphas.end());
    return out;
  }
  std::vector<var> architecture_parameters() override {
    std::vector<var> out;
    for (auto& s : state_) {
      out.push_back(s.s_w);
      out.push_back(s.s_a);
    }
    return out;
  }

  /// sum_l MACs_l E[w_l] E[a_l] (BitOps) or sum_l params_l E[w_l] (weight bits).
  var expected_cost() {
    const auto& costs = costs_.get("ebs_policy::expected_cost");
    check_attached();
    std::vector<var> pw, pa;
    for (auto& s : state_) {
      pw.push_back(autodiff::softmax(s.s_w));
      pa.push_back(autodiff::softmax(s.s_a));
    }
    return expected_bits_cost(detail::desc_of(costs), pw, o_.w_bits, pa, o_.a_bits,
                              detail::metric_of(kind_));
  }

  /// CE + kappa |C - T| / T (absolute) or CE + lambda C / T (linear).
  var search_loss(const var& task_loss, const budget& b) {
    kind_ = b.kind;
    b.check_feasible(costs_.get("ebs_policy::search_loss"), o_.w_bits.front(), o_.a_bits.front());
    const var rel = autodiff::mul(expected_cost(), float(1.0 / b.value));
    const var pen = o_.penalty == ebs_penalty::absolute
                        ? autodiff::mul(autodiff::abs(autodiff::add(rel, -1.0f)), o_.kappa)
                        : autodiff::mul(rel, o_.lambda);
    return autodiff::add(task_loss, pen);
  }

  void on_search_epoch(const search_context& c, std::size_t epoch, std::size_t epochs) {
    (void)epoch, (void)epochs;
    if (!c.costs.empty()) costs_.set(c.costs, "ebs_policy");
  }

  /// Argmax per layer of the weight and activation strengths, repaired to the budget if needed,
  /// then (options().derive) filled up to the budget.
  bit_config derive(const search_context& c, const budget& b) {
    kind_ = b.kind;
    if (!c.costs.empty()) costs_.set(c.costs, "ebs_policy");
    const auto& costs = costs_.get("ebs_policy::derive");
    check_attached();
    b.check_feasible(costs, o_.w_bits.front(), o_.a_bits.front());
    std::vector<std::vector<detail::layer_choice>> choices;
    std::vector<std::size_t> best;
    for (const auto& s : state_) {
      const auto lw = detail::log_probs(s.s_w.value().span());
      const auto la = detail::log_probs(s.s_a.value().span());
      std::vector<detail::layer_choice> ch;
      for (std::size_t i = 0; i < o_.w_bits.size(); ++i)
        for (std::size_t j = 0; j < o_.a_bits.size(); ++j)
          ch.push_back({o_.w_bits[i], o_.a_bits[j], lw[i] + la[j]});
      best.push_back(detail::argmax(s.s_w.value().span()) * o_.a_bits.size() +
                     detail::argmax(s.s_a.value().span()));
      choices.push_back(std::move(ch));
    }
    auto chosen = detail::repair_to_budget(choices, best, costs, b, "ebs_policy");
    if (o_.derive == ebs_derive::argmax) return detail::config_of(choices, chosen);
    const auto start = chosen;
    bool proven = true;
    if (o_.derive == ebs_derive::fill_greedy) {
      chosen = detail::fill_budget_greedy(choices, std::move(chosen), costs, b, o_.fill_slack);
    } else {
      auto f =
          detail::fill_budget_exact(choices, start, costs, b, o_.fill_slack, o_.fill_max_nodes);
      chosen = std::move(f.chosen);
      proven = f.proven_optimal;
    }
    if (c.log) {
      auto describe = [&](const std::vector<std::size_t>& k) {
        return detail::cat(detail::config_of(choices, k).to_string(), " (",
                           100 * detail::choices_cost(choices, k, costs, b.kind) / b.value,
                           "% of the budget, log p ", log_prob(choices, k), ")");
      };
      *c.log << "ebs: argmax" << (start == best ? "" : " repaired") << " " << describe(start)
             << "\n     filled (" << (o_.derive == ebs_derive::fill_greedy ? "greedy" : "exact")
             << (proven ? "" : ", node limit hit") << ") " << describe(chosen) << "\n";
    }
    return detail::config_of(choices, chosen);
  }

 private:
  struct layer_state {
    var s_w, s_a;
    std::vector<var> alphas;
  };
  layer_state& at(std::size_t l) {
    if (l >= state_.size())
      throw shape_error(detail::cat("ebs_policy: layer ", l, " of ", state_.size(),
                                    "; attach the policy to the model first"));
    return state_[l];
  }
  static double log_prob(const std::vector<std::vector<detail::layer_choice>>& choices,
                         const std::vector<std::size_t>& k) {
    double v = 0;
    for (std::size_t l = 0; l < choices.size(); ++l) v += choices[l][k[l]].logp;
    return v;
  }
  void check_attached() const {
    if (state_.empty())
      throw value_error("ebs_policy: not attached to a model; call nn::attach_policy first");
  }

  ebs_options o_;
  std::vector<layer_state> state_;
  detail::layer_cost_cache costs_;
  budget_kind kind_ = budget_kind::bitops;
};

static_assert(differentiable_policy<ebs_policy>);

}  // namespace mixq::search
