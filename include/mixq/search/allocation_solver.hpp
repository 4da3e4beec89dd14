// Exact solvers for bit allocation as a multiple-choice knapsack: one option per layer (a
// bit-width or a (w, a) pair) with a value and one cost per budget, tied layers sharing a
// choice. LP relaxation (greedy on convex hulls), exact integer optimum (branch and bound with
// LP bounds, with an optimality certificate), and OMPQ's budget-matching rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/search/cost.hpp"

namespace mixq::search {

/// One choice for one layer: its value (maximised; pass minus a sensitivity to minimise it)
/// and its cost under each budget (e.g. size bits, BitOps).
struct allocation_option {
  double value = 0;
  std::vector<double> cost;
};

/// Choose one option per layer to maximise the total value with total cost <= budgets[k] for
/// every k. Layers listed together in a `tied_layers` group must take the same option index
/// (so they need equally many options), e.g. a ResNet downsample conv and its block's conv1.
struct allocation_problem {
  std::vector<std::vector<allocation_option>> layers;
  std::vector<double> budgets;
  std::vector<std::vector<std::size_t>> tied_layers;
};

/// The LP relaxation's optimum for one budget: per layer a distribution over its options
/// (at most one layer, or one tied group, is split between two options).
struct lp_allocation {
  std::vector<std::vector<double>> weight;  // [layer][option], each row sums to 1
  double value = 0;                         // LP optimum: an upper bound on the integer optimum
  double cost = 0;                          // cost under the chosen budget
  std::size_t budget_index = 0;
  /// sum_j weight[i][j] * attribute[i][j] per layer (e.g. the real-valued bits); the attribute
  /// must have the problem's shape (shape_error otherwise).
  std::vector<double> expected(std::span<const std::vector<double>> attribute) const {
    if (attribute.size() != weight.size())
      throw shape_error(mixq::detail::cat("lp_allocation::expected: ", attribute.size(),
                                          " layers of attributes; expected ", weight.size()));
    std::vector<double> out(weight.size(), 0.0);
    for (std::size_t i = 0; i < weight.size(); ++i) {
      if (attribute[i].size() != weight[i].size())
        throw shape_error(mixq::detail::cat("lp_allocation::expected: layer ", i, " has ",
                                            attribute[i].size(), " attributes; expected ",
                                            weight[i].size(), " (one per option)"));
      for (std::size_t j = 0; j < weight[i].size(); ++j) out[i] += weight[i][j] * attribute[i][j];
    }
    return out;
  }
};

/// An integer solution and its certificate. When `proven_optimal`, the search visited or
/// pruned every node (prunes use LP bounds no better than the incumbent), so
/// `upper_bound == value` up to the relative tolerance; otherwise `upper_bound` is the root LP
/// bound and `gap()` says how far from optimal the solution can be.
struct allocation_solution {
  std::vector<std::size_t> choice;  // option index per layer
  double value = 0;
  std::vector<double> cost;  // per budget
  double upper_bound = 0;
  double root_lp_bound = 0;
  std::uint64_t nodes = 0;
  bool proven_optimal = false;
  double gap() const { return upper_bound - value; }
};

struct allocation_solver_options {
  std::uint64_t max_nodes = 200'000'000;  // stop (not proven optimal) after this many nodes
  double relative_tolerance = 1e-12;      // feasibility and pruning slack, relative to the scale
                                          // (layers x largest cost or value): rounding only
};

namespace detail {
using mixq::detail::cat;

/// Layers merged by tie groups into items; option j of an item is option j of every member.
struct merged_problem {
  std::vector<std::vector<std::size_t>> members;       // item -> layers
  std::vector<std::vector<double>> value;              // [item][option]
  std::vector<std::vector<std::vector<double>>> cost;  // [budget][item][option]
  std::vector<double> budgets;
  double value_scale = 1, cost_scale = 1;
};

inline void check_finite(double x, const char* what, std::size_t layer, std::size_t option) {
  if (!std::isfinite(x))
    throw value_error(cat("allocation problem: ", what, " of layer ", layer, " option ", option,
                          " is ", x, "; expected a finite number"));
}

inline merged_problem merge(const allocation_problem& p) {
  const std::size_t n = p.layers.size(), nb = p.budgets.size();
  if (n == 0) throw shape_error("allocation problem has no layers; expected at least one");
  if (nb == 0) throw shape_error("allocation problem has no budgets; expected at least one");
  for (std::size_t k = 0; k < nb; ++k)
    if (!std::isfinite(p.budgets[k]))
      throw value_error(cat("allocation problem: budget ", k, " is ", p.budgets[k],
                            "; expected a finite number"));
  for (std::size_t i = 0; i < n; ++i) {
    if (p.layers[i].empty())
      throw shape_error(cat("allocation problem: layer ", i, " has no options; expected >= 1"));
    for (std::size_t j = 0; j < p.layers[i].size(); ++j) {
      const auto& o = p.layers[i][j];
      if (o.cost.size() != nb)
        throw shape_error(cat("allocation problem: layer ", i, " option ", j, " has ",
                              o.cost.size(), " costs; expected ", nb, " (one per budget)"));
      check_finite(o.value, "value", i, j);
      for (double c : o.cost) check_finite(c, "cost", i, j);
    }
  }
  // Union-find over the tie groups.
  std::vector<std::size_t> parent(n);
  std::iota(parent.begin(), parent.end(), std::size_t{0});
  auto find = [&](std::size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  for (const auto& g : p.tied_layers)
    for (std::size_t idx : g) {
      if (idx >= n)
        throw shape_error(
            cat("allocation problem: tied layer index ", idx, " is out of range; expected < ", n));
      if (p.layers[idx].size() != p.layers[g.front()].size())
        throw shape_error(cat("allocation problem: tied layers ", g.front(), " and ", idx, " have ",
                              p.layers[g.front()].size(), " and ", p.layers[idx].size(),
                              " options; expected equal counts"));
      parent[find(idx)] = find(g.front());
    }
  merged_problem m;
  m.budgets = p.budgets;
  std::vector<std::size_t> item_of(n, SIZE_MAX);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t r = find(i);
    if (item_of[r] == SIZE_MAX) {
      item_of[r] = m.members.size();
      m.members.emplace_back();
    }
    m.members[item_of[r]].push_back(i);
  }
  const std::size_t items = m.members.size();
  m.value.resize(items);
  m.cost.assign(nb, std::vector<std::vector<double>>(items));
  double vs = 0, cs = 0;
  for (std::size_t t = 0; t < items; ++t) {
    const std::size_t k_opts = p.layers[m.members[t].front()].size();
    m.value[t].assign(k_opts, 0.0);
    for (std::size_t k = 0; k < nb; ++k) m.cost[k][t].assign(k_opts, 0.0);
    for (std::size_t layer : m.members[t])
      for (std::size_t j = 0; j < k_opts; ++j) {
        m.value[t][j] += p.layers[layer][j].value;
        for (std::size_t k = 0; k < nb; ++k) m.cost[k][t][j] += p.layers[layer][j].cost[k];
      }
    for (std::size_t j = 0; j < k_opts; ++j) {
      vs = std::max(vs, std::abs(m.value[t][j]));
      for (std::size_t k = 0; k < nb; ++k) cs = std::max(cs, std::abs(m.cost[k][t][j]));
    }
  }
  m.value_scale = std::max(1.0, vs * double(items));
  m.cost_scale = std::max(1.0, cs * double(items));
  return m;
}

/// Upper convex hull of one item's (cost, value) points for one budget: option indices in
/// increasing cost with strictly increasing value and strictly decreasing slopes. The first
/// point is the cheapest option (the most valuable among equally cheap ones).
inline std::vector<std::size_t> upper_hull(std::span<const double> cost,
                                           std::span<const double> value) {
  std::vector<std::size_t> order(cost.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (cost[a] != cost[b]) return cost[a] < cost[b];
    if (value[a] != value[b]) return value[a] > value[b];
    return a < b;
  });
  std::vector<std::size_t> hull;
  for (std::size_t j : order) {
    if (!hull.empty() && value[j] <= value[hull.back()]) continue;  // costlier, not better
    // Pop the last point while it lies on or below the segment from its predecessor to j.
    while (hull.size() >= 2) {
      const std::size_t a = hull[hull.size() - 2], b = hull.back();
      const double lhs = (value[b] - value[a]) * (cost[j] - cost[b]);
      const double rhs = (value[j] - value[b]) * (cost[b] - cost[a]);
      if (lhs <= rhs)
        hull.pop_back();
      else
        break;
    }
    hull.push_back(j);
  }
  return hull;
}

/// One step along an item's hull: from hull point `step` to `step + 1`.
struct hull_step {
  std::size_t item, step;
  double d_cost, d_value;
};

/// The LP machinery for one budget over items in a fixed order: hulls, suffix sums of the
/// cheapest points, and all hull steps sorted by efficiency (best first).
struct lp_budget {
  std::vector<std::vector<std::size_t>> hull;
  std::vector<double> suffix_base_cost, suffix_base_value;  // items >= d at their cheapest
  std::vector<hull_step> steps;

  lp_budget(const std::vector<std::vector<double>>& cost,
            const std::vector<std::vector<double>>& value) {
    const std::size_t items = cost.size();
    hull.resize(items);
    suffix_base_cost.assign(items + 1, 0.0);
    suffix_base_value.assign(items + 1, 0.0);
    for (std::size_t t = 0; t < items; ++t) {
      hull[t] = upper_hull(cost[t], value[t]);
      for (std::size_t s = 0; s + 1 < hull[t].size(); ++s) {
        const std::size_t a = hull[t][s], b = hull[t][s + 1];
        steps.push_back({t, s, cost[t][b] - cost[t][a], value[t][b] - value[t][a]});
      }
    }
    for (std::size_t t = items; t-- > 0;) {
      suffix_base_cost[t] = suffix_base_cost[t + 1] + cost[t][hull[t].front()];
      suffix_base_value[t] = suffix_base_value[t + 1] + value[t][hull[t].front()];
    }
    // Efficiency order; within an item hull slopes decrease, so its steps stay in order.
    std::stable_sort(steps.begin(), steps.end(), [](const hull_step& x, const hull_step& y) {
      return x.d_value * y.d_cost > y.d_value * x.d_cost;
    });
  }

  /// LP optimum over items >= first with the given remaining budget; -inf when even the
  /// cheapest choices do not fit (beyond `slack`).
  double bound(std::size_t first, double remaining, double slack) const {
    double room = remaining - suffix_base_cost[first];
    if (room < -slack) return -std::numeric_limits<double>::infinity();
    double v = suffix_base_value[first];
    if (room <= 0) return v;
    for (const auto& s : steps) {
      if (s.item < first) continue;
      if (s.d_cost <= room) {
        room -= s.d_cost;
        v += s.d_value;
      } else {
        v += s.d_value * (room / s.d_cost);
        break;
      }
    }
    return v;
  }
};

/// A cost printed with 15 significant digits (the default 6 would turn 11157504 into 1.11575e+07).
inline std::string number(double x) {
  std::ostringstream os;
  os.precision(15);
  os << x;
  return os.str();
}

inline void throw_infeasible(const merged_problem& m, std::size_t k, double cheapest) {
  throw budget_error(cat("budget ", k, " is ", number(m.budgets[k]),
                         " but the cheapest choice (every layer at its lowest-cost option) "
                         "costs ",
                         number(cheapest), "; the smallest feasible budget is ", number(cheapest)));
}
}  // namespace detail

/// Exact LP relaxation for budget `budget_index` (other budgets are ignored, so the value is
/// an upper bound on the integer optimum of the whole problem). Greedy on the upper convex
/// hulls: start every layer (tied group) at its cheapest option, then buy hull steps in
/// decreasing value-per-cost until the budget is used; the last step may be fractional.
/// Throws budget_error (naming the smallest feasible value) if even the cheapest choice
/// exceeds the budget.
inline lp_allocation solve_allocation_lp(const allocation_problem& problem,
                                         std::size_t budget_index = 0,
                                         const allocation_solver_options& opt = {}) {
  const auto m = detail::merge(problem);
  if (budget_index >= m.budgets.size())
    throw shape_error(detail::cat("solve_allocation_lp: budget index ", budget_index,
                                  "; expected < ", m.budgets.size()));
  const auto& cost = m.cost[budget_index];
  const detail::lp_budget lp(cost, m.value);
  const double budget = m.budgets[budget_index];
  const double slack = opt.relative_tolerance * m.cost_scale;
  if (lp.suffix_base_cost[0] > budget + slack)
    detail::throw_infeasible(m, budget_index, lp.suffix_base_cost[0]);
  const std::size_t items = m.members.size();
  // Position of each item along its hull: integer part = hull point, plus a fraction.
  std::vector<std::size_t> at(items, 0);
  std::vector<double> frac(items, 0.0);
  double room = budget - lp.suffix_base_cost[0];
  for (const auto& s : lp.steps) {
    if (room <= 0) break;
    if (s.d_cost <= room) {
      room -= s.d_cost;
      at[s.item] = s.step + 1;
    } else {
      frac[s.item] = room / s.d_cost;
      room = 0;
    }
  }
  lp_allocation out;
  out.budget_index = budget_index;
  out.weight.resize(problem.layers.size());
  for (std::size_t i = 0; i < problem.layers.size(); ++i)
    out.weight[i].assign(problem.layers[i].size(), 0.0);
  for (std::size_t t = 0; t < items; ++t) {
    const auto& h = lp.hull[t];
    const std::size_t lo = h[at[t]];
    double w_lo = 1.0 - frac[t], w_hi = frac[t];
    const std::size_t hi = at[t] + 1 < h.size() ? h[at[t] + 1] : lo;
    out.value += w_lo * m.value[t][lo] + w_hi * m.value[t][hi];
    out.cost += w_lo * cost[t][lo] + w_hi * cost[t][hi];
    for (std::size_t layer : m.members[t]) {
      out.weight[layer][lo] += w_lo;
      out.weight[layer][hi] += w_hi;
    }
  }
  return out;
}

/// Exact integer optimum under every budget: depth-first branch and bound over the layers
/// (tied groups merged), each node bounded by the minimum over budgets of the single-budget LP
/// of the remaining layers; dominated options are dropped first. Throws budget_error when no
/// choice meets the budgets (naming the smallest feasible value of a budget that the cheapest
/// choice already exceeds, or saying that the budgets conflict).
inline allocation_solution solve_allocation(const allocation_problem& problem,
                                            const allocation_solver_options& opt = {}) {
  const auto m0 = detail::merge(problem);
  const std::size_t nb = m0.budgets.size(), items = m0.members.size();
  const double slack = opt.relative_tolerance * m0.cost_scale;
  const double vtol = opt.relative_tolerance * m0.value_scale;
  for (std::size_t k = 0; k < nb; ++k) {
    double cheapest = 0;
    for (std::size_t t = 0; t < items; ++t)
      cheapest += *std::min_element(m0.cost[k][t].begin(), m0.cost[k][t].end());
    if (cheapest > m0.budgets[k] + slack) detail::throw_infeasible(m0, k, cheapest);
  }

  // Branch order: items with the widest value range first (they decide the most). Per item,
  // keep the options no other option dominates (cheaper-or-equal everywhere, better-or-equal
  // value), most valuable first.
  std::vector<std::size_t> order(items);
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto spread = [&](std::size_t t) {
    const auto [lo, hi] = std::minmax_element(m0.value[t].begin(), m0.value[t].end());
    return *hi - *lo;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return spread(a) > spread(b); });
  std::vector<std::vector<std::size_t>> opts(items);  // per position: original option indices
  std::vector<std::vector<double>> val(items);
  std::vector<std::vector<std::vector<double>>> cst(nb, std::vector<std::vector<double>>(items));
  for (std::size_t pos = 0; pos < items; ++pos) {
    const std::size_t t = order[pos];
    const std::size_t k_opts = m0.value[t].size();
    auto dominated = [&](std::size_t j) {
      for (std::size_t i = 0; i < k_opts; ++i) {
        if (i == j) continue;
        bool no_worse = m0.value[t][i] >= m0.value[t][j],
             strictly = m0.value[t][i] > m0.value[t][j];
        for (std::size_t k = 0; k < nb && no_worse; ++k) {
          no_worse = m0.cost[k][t][i] <= m0.cost[k][t][j];
          strictly = strictly || m0.cost[k][t][i] < m0.cost[k][t][j];
        }
        if (no_worse && (strictly || i < j)) return true;  // equal twins: keep the first
      }
      return false;
    };
    for (std::size_t j = 0; j < k_opts; ++j)
      if (!dominated(j)) opts[pos].push_back(j);
    std::stable_sort(opts[pos].begin(), opts[pos].end(),
                     [&](std::size_t a, std::size_t b) { return m0.value[t][a] > m0.value[t][b]; });
    for (std::size_t j : opts[pos]) {
      val[pos].push_back(m0.value[t][j]);
      for (std::size_t k = 0; k < nb; ++k) cst[k][pos].push_back(m0.cost[k][t][j]);
    }
  }
  std::vector<detail::lp_budget> lps;
  lps.reserve(nb);
  for (std::size_t k = 0; k < nb; ++k) lps.emplace_back(cst[k], val);

  auto bound_at = [&](std::size_t first, const std::vector<double>& remaining) {
    double b = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < nb; ++k) b = std::min(b, lps[k].bound(first, remaining[k], slack));
    return b;
  };

  allocation_solution sol;
  sol.root_lp_bound = bound_at(0, m0.budgets);
  double best = -std::numeric_limits<double>::infinity();
  std::vector<std::size_t> best_pick, pick(items, 0);
  std::vector<double> remaining = m0.budgets;
  std::uint64_t nodes = 0;
  bool aborted = false;

  // Seed the incumbent: for each budget, its LP solution rounded down (the fractional item
  // takes its cheaper hull point), kept if it meets every budget.
  for (std::size_t k = 0; k < nb; ++k) {
    std::vector<std::size_t> at(items, 0);
    double room = m0.budgets[k] - lps[k].suffix_base_cost[0];
    for (const auto& s : lps[k].steps) {
      if (s.d_cost > room) break;
      room -= s.d_cost;
      at[s.item] = s.step + 1;
    }
    double v = 0;
    bool ok = true;
    std::vector<std::size_t> cand(items);
    for (std::size_t pos = 0; pos < items; ++pos) {
      cand[pos] = lps[k].hull[pos][at[pos]];
      v += val[pos][cand[pos]];
    }
    for (std::size_t q = 0; q < nb && ok; ++q) {
      double c = 0;
      for (std::size_t pos = 0; pos < items; ++pos) c += cst[q][pos][cand[pos]];
      ok = c <= m0.budgets[q] + slack;
    }
    if (ok && v > best) best = v, best_pick = cand;
  }

  // Depth-first search; `value` is the value of the options fixed so far.
  auto dfs = [&](auto&& self, std::size_t pos, double value) -> void {
    if (aborted) return;
    if (++nodes > opt.max_nodes) {
      aborted = true;
      return;
    }
    if (pos == items) {
      if (value > best) best = value, best_pick = pick;
      return;
    }
    for (std::size_t j = 0; j < val[pos].size(); ++j) {
      bool fits = true;
      for (std::size_t k = 0; k < nb; ++k) {
        remaining[k] -= cst[k][pos][j];
        fits = fits && remaining[k] - lps[k].suffix_base_cost[pos + 1] >= -slack;
      }
      if (fits) {
        const double v = value + val[pos][j];
        if (bound_at(pos + 1, remaining) + v > best + vtol) {
          pick[pos] = j;
          self(self, pos + 1, v);
        }
      }
      for (std::size_t k = 0; k < nb; ++k) remaining[k] += cst[k][pos][j];
      if (aborted) return;
    }
  };
  dfs(dfs, 0, 0.0);
  sol.nodes = nodes;

  if (best_pick.empty()) {
    if (aborted)
      throw budget_error(detail::cat("solve_allocation: no feasible choice found within ",
                                     opt.max_nodes, " nodes; raise max_nodes"));
    throw budget_error(detail::cat(
        "solve_allocation: the budgets conflict: each alone can be met by the cheapest choice "
        "for it, but no single choice meets all ",
        nb, " budgets together"));
  }
  sol.proven_optimal = !aborted;
  sol.choice.assign(problem.layers.size(), 0);
  sol.cost.assign(nb, 0.0);
  sol.value = 0;
  for (std::size_t pos = 0; pos < items; ++pos) {
    const std::size_t t = order[pos];
    const std::size_t j = opts[pos][best_pick[pos]];
    for (std::size_t layer : m0.members[t]) {
      sol.choice[layer] = j;
      sol.value += problem.layers[layer][j].value;
      for (std::size_t k = 0; k < nb; ++k) sol.cost[k] += problem.layers[layer][j].cost[k];
    }
  }
  sol.upper_bound = sol.proven_optimal ? std::max(sol.value, best) : sol.root_lp_bound;
  return sol;
}

/// Result of OMPQ's budget-matching rounding.
struct budget_matching_result {
  std::vector<int> bits;
  double total = 0;   // sum_i bits[i] * unit_cost[i]
  double target = 0;  // sum_i real_bits[i] * unit_cost[i]
  bool exhaustive = true;
};

/// OMPQ's discretisation (official `DFS_bit`, §5 (5)): each unit takes floor or ceil of its
/// real bit-width; among all 2^L combinations return one whose total cost sum b_i * P_i is
/// <= the continuous total sum x_i * P_i and closest to it. The objective plays no part.
/// Depth-first over the units in decreasing (ceil - floor) * P order, ceil tried before floor;
/// ties go to the first found. Pruned exactly: a subtree is skipped when even all its
/// ceilings cannot beat the best total, and completed at once when all its ceilings fit; the
/// search stops early on an exact match. Worst case exponential (a subset-sum): after
/// `max_nodes` nodes it returns the best found with `exhaustive = false`.
inline budget_matching_result ompq_budget_matching_rounding(std::span<const double> real_bits,
                                                            std::span<const double> unit_cost,
                                                            std::uint64_t max_nodes = 100'000'000) {
  const std::size_t n = real_bits.size();
  if (unit_cost.size() != n)
    throw shape_error(detail::cat("ompq_budget_matching_rounding: ", n, " bit-widths and ",
                                  unit_cost.size(), " unit costs; expected equal lengths"));
  budget_matching_result r;
  std::vector<int> lo(n), hi(n);
  double cost_scale = 1;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(real_bits[i]) || real_bits[i] < 1.0 || real_bits[i] > 8.0)
      throw bits_error(detail::cat("ompq_budget_matching_rounding: bit-width of unit ", i, " is ",
                                   real_bits[i], "; expected a number in [1, 8]"));
    if (!std::isfinite(unit_cost[i]) || unit_cost[i] < 0)
      throw value_error(detail::cat("ompq_budget_matching_rounding: cost of unit ", i, " is ",
                                    unit_cost[i], "; expected a finite value >= 0"));
    lo[i] = int(std::floor(real_bits[i]));
    hi[i] = int(std::ceil(real_bits[i]));
    r.target += real_bits[i] * unit_cost[i];
    cost_scale += 8.0 * unit_cost[i];
  }
  const double slack = 1e-12 * cost_scale;
  // Visit units with the largest ceil-floor cost step first: the usual subset-sum order, so
  // the coarse decisions come first and the bounds prune early.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return (hi[a] - lo[a]) * unit_cost[a] > (hi[b] - lo[b]) * unit_cost[b];
  });
  std::vector<double> suffix_lo(n + 1, 0.0), suffix_hi(n + 1, 0.0);
  for (std::size_t q = n; q-- > 0;) {
    const std::size_t i = order[q];
    suffix_lo[q] = suffix_lo[q + 1] + lo[i] * unit_cost[i];
    suffix_hi[q] = suffix_hi[q + 1] + hi[i] * unit_cost[i];
  }
  std::vector<int> cur(n);
  double best = -1;
  std::uint64_t nodes = 0;
  bool done = false;
  auto dfs = [&](auto&& self, std::size_t q, double total) -> void {
    if (done) return;
    if (++nodes > max_nodes) {
      r.exhaustive = false;
      done = true;
      return;
    }
    if (total + suffix_lo[q] > r.target + slack) return;  // cannot fit
    if (total + suffix_hi[q] <= best) return;             // cannot beat the best
    if (total + suffix_hi[q] <= r.target + slack) {       // all ceilings fit: best here
      for (std::size_t z = q; z < n; ++z) cur[order[z]] = hi[order[z]];
      best = total + suffix_hi[q];
      r.bits = cur;
      if (best >= r.target - slack) done = true;  // matches the target exactly
      return;
    }
    // Here some unit at or after q has hi > lo (otherwise the suffixes would be equal).
    const std::size_t i = order[q];
    cur[i] = hi[i];
    self(self, q + 1, total + hi[i] * unit_cost[i]);
    if (hi[i] != lo[i]) {
      cur[i] = lo[i];
      self(self, q + 1, total + lo[i] * unit_cost[i]);
    }
  };
  dfs(dfs, 0, 0.0);
  if (r.bits.empty()) r.bits = lo;  // only if max_nodes stopped the search before any leaf
  r.total = 0;
  for (std::size_t i = 0; i < n; ++i) r.total += r.bits[i] * unit_cost[i];
  return r;
}

/// The bit-allocation problem of a model: for every layer one option per candidate (w, a) pair,
/// valued by `value_of(layer_index, candidate)` (e.g. minus a sensitivity), costed under each
/// metric with the model's conventions (a fixed edge layer costs the same for every candidate;
/// an uncounted one costs 0). With `tie_shared_inputs`, layers reading the same tensor (the
/// model's shared_input_groups) must choose the same candidate, which keeps their activation
/// bits equal. Solve it, then turn the choice into a bit_config with to_bit_config().
template <class ValueFn>
allocation_problem make_bit_allocation_problem(const model_desc& model,
                                               std::span<const bit_pair> candidates,
                                               std::span<const cost_metric> metrics,
                                               std::span<const double> budgets, ValueFn&& value_of,
                                               const cost_conventions& conv = {},
                                               bool tie_shared_inputs = true) {
  if (candidates.empty())
    throw shape_error("make_bit_allocation_problem: no candidate bit pairs; expected >= 1");
  if (metrics.size() != budgets.size() || metrics.empty())
    throw shape_error(detail::cat("make_bit_allocation_problem: ", metrics.size(), " metrics and ",
                                  budgets.size(), " budgets; expected equal, non-zero counts"));
  for (const auto& c : candidates)
    if (c.w < 1 || c.w > 8 || c.a < 1 || c.a > 8)
      throw bits_error(detail::cat("make_bit_allocation_problem: candidate (w=", c.w, ", a=", c.a,
                                   "); expected bits 1..8"));
  detail::check_conventions(conv);
  const std::size_t n = model.size();
  allocation_problem p;
  p.budgets.assign(budgets.begin(), budgets.end());
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<allocation_option> layer;
    for (const auto& c : candidates) {
      const auto e = detail::effective(conv, i, n, c.w, c.a);
      allocation_option o;
      o.value = double(value_of(i, c));
      for (auto metric : metrics) {
        double cost = 0;
        if (e.counted)
          cost = metric == cost_metric::bitops ? layer_bitops(model.layers[i], e.w, e.a)
                                               : layer_size_bits(model.layers[i], e.w) +
                                                     detail::extra_bits(conv, model.layers[i]);
        o.cost.push_back(cost);
      }
      layer.push_back(std::move(o));
    }
    p.layers.push_back(std::move(layer));
  }
  if (tie_shared_inputs) p.tied_layers = model.shared_input_groups;
  return p;
}

/// The bit_config of a solved make_bit_allocation_problem: layer i takes candidates[choice[i]].
inline bit_config to_bit_config(std::span<const bit_pair> candidates,
                                std::span<const std::size_t> choice) {
  bit_config c;
  for (std::size_t i = 0; i < choice.size(); ++i) {
    if (choice[i] >= candidates.size())
      throw shape_error(detail::cat("to_bit_config: choice ", choice[i], " of layer ", i,
                                    "; expected < ", candidates.size()));
    c.w_bits.push_back(candidates[choice[i]].w);
    c.a_bits.push_back(candidates[choice[i]].a);
  }
  return c;
}

}  // namespace mixq::search
