// uniform_policy: the baseline allocation_policy. Every layer gets the same (w, a) bits: a
// fixed pair, or the most expensive pair among candidates that the budget admits. It runs
// through search::run like any other policy, so comparisons share warm-up and finetune.
#pragma once

#include <optional>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/policy.hpp"

namespace mixq::search {

class uniform_policy {
 public:
  /// W1A1, W2A2, ..., W8A8.
  static std::vector<bit_pair> equal_bits() {
    std::vector<bit_pair> c;
    for (int b = 1; b <= 8; ++b) c.push_back({b, b});
    return c;
  }

  /// Chooses, at allocate(), the candidate whose uniform config costs the most within the
  /// budget (ties: more activation bits, then more weight bits). bits_error for candidates
  /// outside 1..8, value_error for none.
  explicit uniform_policy(std::vector<bit_pair> candidates = equal_bits())
      : candidates_(std::move(candidates)) {
    if (candidates_.empty())
      throw value_error("uniform_policy: no candidate bit pairs; expected at least one");
    for (const auto& c : candidates_)
      if (c.w < 1 || c.w > 8 || c.a < 1 || c.a > 8)
        throw bits_error(mixq::detail::cat("uniform_policy: candidate W", c.w, "A", c.a,
                                           "; expected bits 1..8"));
  }
  /// Exactly W`w`A`a`; allocate() throws budget_error if the budget does not admit it.
  static uniform_policy fixed(int w, int a) { return uniform_policy({{w, a}}); }

  bit_config allocate(search_context& c, const budget& b) const {
    const bit_pair* best = nullptr;
    double best_cost = -1, cheapest = -1;
    for (const auto& p : candidates_) {
      const double cost = b.cost_of(c.costs, bit_config::uniform(c.costs.size(), p.w, p.a));
      if (cheapest < 0 || cost < cheapest) cheapest = cost;
      if (!b.admits(c.costs, bit_config::uniform(c.costs.size(), p.w, p.a))) continue;
      if (!best || cost > best_cost ||
          (cost == best_cost && (p.a > best->a || (p.a == best->a && p.w > best->w)))) {
        best = &p;
        best_cost = cost;
      }
    }
    if (!best)
      throw budget_error(mixq::detail::cat(
          "uniform_policy: no candidate fits the budget of ", detail::figure(b.value), " ",
          to_string(b.kind), "; the cheapest candidate costs ", detail::figure(cheapest),
          ", the smallest feasible value"));
    return bit_config::uniform(c.costs.size(), best->w, best->a);
  }
  std::optional<bit_config> on_epoch_end(search_context&, const budget&, std::size_t) const {
    return std::nullopt;
  }

  const std::vector<bit_pair>& candidates() const noexcept { return candidates_; }

 private:
  std::vector<bit_pair> candidates_;
};

static_assert(allocation_policy<uniform_policy>);

}  // namespace mixq::search
