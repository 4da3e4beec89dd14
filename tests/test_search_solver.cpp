// Allocation solver: the integer optimum against brute force and an independent DP on random
// instances (one and two budgets, ties, tied layers), the LP relaxation against its Lagrangian
// dual, degenerate cases, OMPQ's budget-matching rounding against enumeration, and bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/model_zoo.hpp"

using namespace mixq::search;

namespace {

constexpr double neg_inf = -std::numeric_limits<double>::infinity();

bool respects_ties(const allocation_problem& p, const std::vector<std::size_t>& choice) {
  for (const auto& g : p.tied_layers)
    for (std::size_t i : g)
      if (choice[i] != choice[g.front()]) return false;
  return true;
}

// Plain enumeration of every choice vector (odometer), ties checked per candidate.
double brute_force(const allocation_problem& p) {
  const std::size_t n = p.layers.size(), nb = p.budgets.size();
  std::vector<std::size_t> c(n, 0);
  double best = neg_inf;
  while (true) {
    if (respects_ties(p, c)) {
      double v = 0;
      bool ok = true;
      for (std::size_t k = 0; k < nb; ++k) {
        double cost = 0;
        for (std::size_t i = 0; i < n; ++i) cost += p.layers[i][c[i]].cost[k];
        ok = ok && cost <= p.budgets[k];
      }
      for (std::size_t i = 0; i < n; ++i) v += p.layers[i][c[i]].value;
      if (ok) best = std::max(best, v);
    }
    std::size_t i = 0;
    while (i < n && ++c[i] == p.layers[i].size()) c[i++] = 0;
    if (i == n) break;
  }
  return best;
}

// Exact DP over integer costs (no ties), one or two budgets: best[c1][c2] = best value with
// exactly those costs.
double integer_dp(const allocation_problem& p) {
  const std::size_t nb = p.budgets.size();
  const int b1 = int(p.budgets[0]), b2 = nb > 1 ? int(p.budgets[1]) : 0;
  if (b1 < 0 || b2 < 0) return neg_inf;
  const std::size_t w = std::size_t(b2) + 1;
  std::vector<double> cur((std::size_t(b1) + 1) * w, neg_inf), next;
  cur[0] = 0;
  for (const auto& layer : p.layers) {
    next.assign(cur.size(), neg_inf);
    for (int c1 = 0; c1 <= b1; ++c1)
      for (int c2 = 0; c2 <= b2; ++c2) {
        const double v = cur[std::size_t(c1) * w + std::size_t(c2)];
        if (v == neg_inf) continue;
        for (const auto& o : layer) {
          const int n1 = c1 + int(o.cost[0]), n2 = c2 + (nb > 1 ? int(o.cost[1]) : 0);
          if (n1 > b1 || n2 > b2) continue;
          auto& slot = next[std::size_t(n1) * w + std::size_t(n2)];
          slot = std::max(slot, v + o.value);
        }
      }
    cur.swap(next);
  }
  return *std::max_element(cur.begin(), cur.end());
}

// LP optimum for budget k via its Lagrangian dual, min over lambda >= 0 of
// sum_i max_j (v_ij - lambda c_ij) + lambda B: convex piecewise linear with breakpoints at the
// pairwise slopes within a layer, so the minimum over {0} and those slopes is exact (ties are
// handled by merging tied layers into sums, which is what the LP sees).
double lagrangian_lp_value(const allocation_problem& p, std::size_t k) {
  std::vector<std::vector<double>> v, c;
  std::vector<int> group(p.layers.size(), -1);
  for (std::size_t g = 0; g < p.tied_layers.size(); ++g)
    for (std::size_t i : p.tied_layers[g]) group[i] = int(g);
  std::vector<int> item_of_group(p.tied_layers.size(), -1);
  for (std::size_t i = 0; i < p.layers.size(); ++i) {
    int item;
    if (group[i] >= 0 && item_of_group[std::size_t(group[i])] >= 0) {
      item = item_of_group[std::size_t(group[i])];
    } else {
      item = int(v.size());
      v.emplace_back(p.layers[i].size(), 0.0);
      c.emplace_back(p.layers[i].size(), 0.0);
      if (group[i] >= 0) item_of_group[std::size_t(group[i])] = item;
    }
    for (std::size_t j = 0; j < p.layers[i].size(); ++j) {
      v[std::size_t(item)][j] += p.layers[i][j].value;
      c[std::size_t(item)][j] += p.layers[i][j].cost[k];
    }
  }
  std::vector<double> lambdas{0.0};
  for (std::size_t t = 0; t < v.size(); ++t)
    for (std::size_t a = 0; a < v[t].size(); ++a)
      for (std::size_t b = 0; b < v[t].size(); ++b)
        if (c[t][b] > c[t][a]) {
          const double s = (v[t][b] - v[t][a]) / (c[t][b] - c[t][a]);
          if (s > 0) lambdas.push_back(s);
        }
  double best = std::numeric_limits<double>::infinity();
  for (double l : lambdas) {
    double g = l * p.budgets[k];
    for (std::size_t t = 0; t < v.size(); ++t) {
      double m = neg_inf;
      for (std::size_t j = 0; j < v[t].size(); ++j) m = std::max(m, v[t][j] - l * c[t][j]);
      g += m;
    }
    best = std::min(best, g);
  }
  return best;
}

double cheapest_total(const allocation_problem& p, std::size_t k) {
  double s = 0;
  for (const auto& l : p.layers) {
    double m = l[0].cost[k];
    for (const auto& o : l) m = std::min(m, o.cost[k]);
    s += m;
  }
  return s;
}

struct instance_shape {
  std::size_t layers, options, budgets;
  bool ties;
  int value_range, cost_range;
};

allocation_problem random_problem(std::mt19937& rng, const instance_shape& s) {
  allocation_problem p;
  std::uniform_int_distribution<int> val(-s.value_range, s.value_range);
  std::uniform_int_distribution<int> cost(0, s.cost_range);
  std::uniform_int_distribution<std::size_t> nopt(1, s.options);
  const std::size_t same = nopt(rng);
  for (std::size_t i = 0; i < s.layers; ++i) {
    const std::size_t k = s.ties ? same : nopt(rng);
    std::vector<allocation_option> layer;
    const bool equal_costs = rng() % 8 == 0;  // a layer whose options all cost the same
    const int shared_cost = cost(rng);
    for (std::size_t j = 0; j < k; ++j) {
      allocation_option o{double(val(rng)), {}};
      for (std::size_t b = 0; b < s.budgets; ++b)
        o.cost.push_back(equal_costs ? shared_cost : double(cost(rng)));
      layer.push_back(o);
    }
    p.layers.push_back(layer);
  }
  if (s.ties && s.layers >= 2) {
    // One or two disjoint groups of 2-3 layers.
    std::vector<std::size_t> idx(s.layers);
    for (std::size_t i = 0; i < s.layers; ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    std::size_t at = 0;
    const std::size_t groups = 1 + rng() % 2;
    for (std::size_t g = 0; g < groups && at + 2 <= s.layers; ++g) {
      const std::size_t len = std::min<std::size_t>(2 + rng() % 2, s.layers - at);
      p.tied_layers.emplace_back(idx.begin() + long(at), idx.begin() + long(at + len));
      at += len;
    }
  }
  // Budgets: mostly between the cheapest and the dearest total, sometimes exactly at the
  // cheapest corner, at the cost of a random choice, or below the cheapest (infeasible).
  for (std::size_t b = 0; b < s.budgets; ++b) {
    double lo = 0, hi = 0, corner = 0;
    for (const auto& l : p.layers) {
      double mn = l[0].cost[b], mx = l[0].cost[b];
      for (const auto& o : l) mn = std::min(mn, o.cost[b]), mx = std::max(mx, o.cost[b]);
      lo += mn;
      hi += mx;
      corner += l[rng() % l.size()].cost[b];
    }
    const int mode = int(rng() % 10);
    double budget;
    if (mode == 0)
      budget = lo;
    else if (mode == 1)
      budget = corner;
    else if (mode == 2)
      budget = lo - 1 - double(rng() % 3);
    else
      budget = std::floor(lo + (hi - lo) * std::uniform_real_distribution<double>(0, 1)(rng));
    p.budgets.push_back(budget);
  }
  return p;
}

void check_solution(const allocation_problem& p, const allocation_solution& s, double expect) {
  REQUIRE(s.choice.size() == p.layers.size());
  CHECK(s.proven_optimal);
  CHECK(s.value == expect);
  CHECK(s.upper_bound == doctest::Approx(s.value));
  CHECK(s.gap() <= 1e-9 * (1 + std::abs(s.value)));
  CHECK(respects_ties(p, s.choice));
  double v = 0;
  for (std::size_t i = 0; i < p.layers.size(); ++i) {
    REQUIRE(s.choice[i] < p.layers[i].size());
    v += p.layers[i][s.choice[i]].value;
  }
  CHECK(v == s.value);
  for (std::size_t k = 0; k < p.budgets.size(); ++k) {
    double c = 0;
    for (std::size_t i = 0; i < p.layers.size(); ++i) c += p.layers[i][s.choice[i]].cost[k];
    CHECK(c == s.cost[k]);
    CHECK(c <= p.budgets[k]);
    CHECK(s.root_lp_bound >= s.value - 1e-9);
  }
}

void check_lp(const allocation_problem& p, std::size_t k, double integer_optimum) {
  const auto lp = solve_allocation_lp(p, k);
  CHECK(lp.budget_index == k);
  CHECK(lp.value >= integer_optimum - 1e-9);
  CHECK(lp.value == doctest::Approx(lagrangian_lp_value(p, k)).epsilon(1e-9));
  CHECK(lp.cost <= p.budgets[k] + 1e-9);
  std::size_t split = 0;
  double v = 0, c = 0;
  for (std::size_t i = 0; i < p.layers.size(); ++i) {
    double sum = 0;
    std::size_t nonzero = 0;
    for (std::size_t j = 0; j < p.layers[i].size(); ++j) {
      CHECK(lp.weight[i][j] >= 0.0);
      sum += lp.weight[i][j];
      nonzero += lp.weight[i][j] > 0;
      v += lp.weight[i][j] * p.layers[i][j].value;
      c += lp.weight[i][j] * p.layers[i][j].cost[k];
    }
    CHECK(sum == doctest::Approx(1.0));
    CHECK(nonzero <= 2);
    split += nonzero == 2;
  }
  // At most one tied group (all of whose members split alike) is fractional.
  std::size_t largest_group = 1;
  for (const auto& g : p.tied_layers) largest_group = std::max(largest_group, g.size());
  CHECK(split <= largest_group);
  CHECK(v == doctest::Approx(lp.value));
  CHECK(c == doctest::Approx(lp.cost));
}

}  // namespace

TEST_CASE("integer optimum equals brute force on random instances; LP bound and dual") {
  std::mt19937 rng(2024);
  int solved = 0, infeasible = 0;
  for (int t = 0; t < 600; ++t) {
    instance_shape s;
    s.budgets = 1 + std::size_t(t % 2);
    s.ties = t % 3 == 0;
    s.options = 1 + rng() % 5;
    // Keep options^layers small enough to enumerate quickly.
    std::size_t max_layers = 1;
    double combos = double(s.options);
    while (max_layers < 12 && combos * double(s.options) <= 20000) {
      ++max_layers;
      combos *= double(s.options);
    }
    s.layers = 1 + rng() % max_layers;
    s.value_range = t % 4 == 0 ? 3 : 40;  // small ranges give many equal values
    s.cost_range = t % 5 == 0 ? 4 : 25;
    const auto p = random_problem(rng, s);
    CAPTURE(t);
    CAPTURE(s.layers);
    CAPTURE(s.options);
    CAPTURE(s.budgets);
    const double expect = brute_force(p);
    if (expect == neg_inf) {
      CHECK_THROWS_AS(solve_allocation(p), mixq::budget_error);
      ++infeasible;
      continue;
    }
    const auto sol = solve_allocation(p);
    check_solution(p, sol, expect);
    for (std::size_t k = 0; k < p.budgets.size(); ++k) check_lp(p, k, expect);
    ++solved;
  }
  CHECK(solved > 400);
  CHECK(infeasible > 20);
}

TEST_CASE("12 layers x 5 options against an integer DP, one and two budgets") {
  std::mt19937 rng(99);
  for (int t = 0; t < 60; ++t) {
    instance_shape s{12, 5, std::size_t(1 + t % 2), false, t % 3 == 0 ? 4 : 100, 12};
    auto p = random_problem(rng, s);
    for (auto& b : p.budgets) b = std::max(b, cheapest_total(p, std::size_t(&b - &p.budgets[0])));
    CAPTURE(t);
    const double expect = integer_dp(p);
    if (expect == neg_inf) {
      CHECK_THROWS_AS(solve_allocation(p), mixq::budget_error);
      continue;
    }
    const auto sol = solve_allocation(p);
    check_solution(p, sol, expect);
    check_lp(p, 0, expect);
  }
}

TEST_CASE("HAWQ-V3-style ResNet-18 ILP with downsample ties equals brute force") {
  // 4 or 8 bits for the 19 middle layers; first conv and FC fixed (left out); the downsample
  // convs tied to their block's conv1. Size budget c4 + frac * (c8 - c4).
  const auto m = resnet18();
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0.1, 10.0);
  for (double frac : {0.25, 0.5, 0.75}) {
    allocation_problem p;
    double c4 = 0, c8 = 0, b4 = 0, b8 = 0;
    for (std::size_t i = 1; i + 1 < m.size(); ++i) {
      const double sens = u(rng);
      const auto& l = m.layers[i];
      p.layers.push_back({{-sens * std::pow(4.0, -4), {layer_size_bits(l, 4)}},
                          {-sens * std::pow(4.0, -8), {layer_size_bits(l, 8)}}});
      c4 += layer_size_bits(l, 4);
      c8 += layer_size_bits(l, 8);
      b4 += layer_bitops(l, 4, 4);
      b8 += layer_bitops(l, 8, 8);
    }
    for (const auto& g : m.shared_input_groups) p.tied_layers.push_back({g[0] - 1, g[1] - 1});
    p.budgets = {c4 + frac * (c8 - c4)};
    const double expect = brute_force(p);
    const auto sol = solve_allocation(p);
    CHECK(sol.proven_optimal);
    CHECK(sol.value == doctest::Approx(expect).epsilon(1e-12));
    CHECK(sol.cost[0] <= p.budgets[0]);
    CHECK(respects_ties(p, sol.choice));
    // Two budgets: size and BitOps (activation bits follow the weight bits, as in HAWQ-V3).
    for (std::size_t i = 1; i + 1 < m.size(); ++i) {
      p.layers[i - 1][0].cost.push_back(layer_bitops(m.layers[i], 4, 4));
      p.layers[i - 1][1].cost.push_back(layer_bitops(m.layers[i], 8, 8));
    }
    p.budgets.push_back(b4 + (1 - frac) * (b8 - b4));
    const auto sol2 = solve_allocation(p);
    CHECK(sol2.value == doctest::Approx(brute_force(p)).epsilon(1e-12));
    CHECK(sol2.cost[0] <= p.budgets[0]);
    CHECK(sol2.cost[1] <= p.budgets[1]);
  }
}

TEST_CASE("degenerate instances") {
  SUBCASE("one layer") {
    allocation_problem p{{{{1.0, {5}}, {3.0, {7}}, {2.0, {6}}}}, {6.5}, {}};
    const auto s = solve_allocation(p);
    CHECK(s.choice[0] == 2);
    CHECK(s.value == 2.0);
    const auto lp = solve_allocation_lp(p);
    // Hull: (5,1) -> (7,3); 1.5 of 2 cost units bought: value 1 + 0.75 * 2.
    CHECK(lp.value == doctest::Approx(2.5));
    CHECK(lp.weight[0][0] == doctest::Approx(0.25));
    CHECK(lp.weight[0][1] == doctest::Approx(0.75));
    CHECK(lp.weight[0][2] == 0.0);
  }
  SUBCASE("all options cost the same: the most valuable wins everywhere") {
    allocation_problem p;
    for (int i = 0; i < 6; ++i)
      p.layers.push_back({{double(i), {3}}, {double(10 - i), {3}}, {-1.0, {3}}});
    p.budgets = {18};
    const auto s = solve_allocation(p);
    double expect = 0;
    for (int i = 0; i < 6; ++i) expect += std::max(i, 10 - i);
    CHECK(s.value == expect);
    CHECK(solve_allocation_lp(p).value == doctest::Approx(expect));
    p.budgets = {17.5};
    CHECK_THROWS_AS(solve_allocation(p), mixq::budget_error);
  }
  SUBCASE("budget exactly at the corners") {
    allocation_problem p;
    for (int i = 0; i < 5; ++i) p.layers.push_back({{0.0, {2}}, {1.0, {4}}, {1.5, {8}}});
    p.budgets = {10};  // all cheapest
    auto s = solve_allocation(p);
    CHECK(s.value == 0.0);
    CHECK(s.cost[0] == 10.0);
    CHECK(solve_allocation_lp(p).value == 0.0);
    p.budgets = {40};  // all dearest
    s = solve_allocation(p);
    CHECK(s.value == 7.5);
    CHECK(solve_allocation_lp(p).value == doctest::Approx(7.5));
    p.budgets = {20};  // all middle
    CHECK(solve_allocation(p).value == 5.0);
    CHECK(solve_allocation_lp(p).value == doctest::Approx(5.0));
  }
  SUBCASE("identical options and zero costs") {
    allocation_problem p{{{{1.0, {0}}, {1.0, {0}}}, {{2.0, {0}}}}, {0}, {{0}}};
    const auto s = solve_allocation(p);
    CHECK(s.value == 3.0);
    CHECK(s.proven_optimal);
  }
}

TEST_CASE("infeasible budgets name the smallest feasible value") {
  allocation_problem p;
  p.layers = {{{1.0, {10, 1}}, {2.0, {20, 1}}}, {{1.0, {7, 1}}, {5.0, {30, 1}}}, {{0.0, {20, 1}}}};
  p.budgets = {36, 3};
  try {
    solve_allocation(p);
    FAIL("expected budget_error");
  } catch (const mixq::budget_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("smallest feasible budget is 37") != std::string::npos);
    CHECK(msg.find("budget 0 is 36") != std::string::npos);
  }
  CHECK_THROWS_AS(solve_allocation_lp(p, 0), mixq::budget_error);
  p.budgets = {37, 3};
  CHECK(solve_allocation(p).value == 2.0);
  p.budgets = {37, 2};
  try {
    solve_allocation_lp(p, 1);
    FAIL("expected budget_error");
  } catch (const mixq::budget_error& e) {
    CHECK(std::string(e.what()).find("smallest feasible budget is 3") != std::string::npos);
  }
  // Large costs print in full, not in scientific notation.
  p.layers = {{{0.0, {11157504.0}}}};
  p.budgets = {1e6};
  try {
    solve_allocation(p);
    FAIL("expected budget_error");
  } catch (const mixq::budget_error& e) {
    CHECK(std::string(e.what()).find("11157504") != std::string::npos);
  }
  // Each budget alone is feasible, both together are not.
  p.layers = {{{0.0, {1, 5}}, {0.0, {5, 1}}}};
  p.budgets = {2, 2};
  CHECK_THROWS_AS(solve_allocation(p), mixq::budget_error);
}

TEST_CASE("malformed problems") {
  allocation_problem ok{{{{1.0, {1}}, {2.0, {2}}}, {{1.0, {1}}, {3.0, {2}}}}, {3}, {}};
  CHECK_NOTHROW(solve_allocation(ok));
  auto p = ok;
  p.layers.clear();
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  p = ok;
  p.budgets.clear();
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  p = ok;
  p.layers[1].clear();
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  p = ok;
  p.layers[0][1].cost.push_back(1);
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  p = ok;
  p.layers[0][0].value = std::nan("");
  CHECK_THROWS_AS(solve_allocation(p), mixq::value_error);
  p = ok;
  p.budgets[0] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(solve_allocation_lp(p), mixq::value_error);
  p = ok;
  p.tied_layers = {{0, 2}};
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  p = ok;
  p.layers[1].push_back({0.0, {0}});
  p.tied_layers = {{0, 1}};
  CHECK_THROWS_AS(solve_allocation(p), mixq::shape_error);
  CHECK_THROWS_AS(solve_allocation_lp(ok, 1), mixq::shape_error);
}

TEST_CASE("node limit: stops with the LP bound as certificate") {
  std::mt19937 rng(8);
  allocation_problem p;
  allocation_solution full;
  do {  // an instance whose proof needs more than a handful of nodes
    instance_shape s{12, 5, 1, false, 100, 25};
    p = random_problem(rng, s);
    p.budgets = {cheapest_total(p, 0) + 60};
    full = solve_allocation(p);
  } while (full.nodes < 20);
  allocation_solver_options o;
  o.max_nodes = 5;
  const auto limited = solve_allocation(p, o);
  CHECK(full.proven_optimal);
  CHECK_FALSE(limited.proven_optimal);
  CHECK(limited.upper_bound == limited.root_lp_bound);
  CHECK(limited.value <= full.value);
  CHECK(limited.upper_bound >= full.value - 1e-9);
}

TEST_CASE("OMPQ budget-matching rounding equals enumeration") {
  std::mt19937 rng(17);
  std::uniform_real_distribution<double> bits(2.0, 8.0), cost(0.0, 3.0);
  for (int t = 0; t < 300; ++t) {
    const std::size_t n = 1 + rng() % 12;
    std::vector<double> x(n), c(n);
    for (std::size_t i = 0; i < n; ++i) {
      x[i] = (rng() % 4 == 0) ? std::round(bits(rng)) : bits(rng);  // some integral already
      c[i] = (t % 7 == 0) ? std::round(cost(rng)) : cost(rng);
    }
    CAPTURE(t);
    const auto r = ompq_budget_matching_rounding(x, c);
    double target = 0;
    for (std::size_t i = 0; i < n; ++i) target += x[i] * c[i];
    double best = -1;
    for (std::size_t mask = 0; mask < (std::size_t(1) << n); ++mask) {
      double total = 0;
      for (std::size_t i = 0; i < n; ++i)
        total += ((mask >> i) & 1 ? std::ceil(x[i]) : std::floor(x[i])) * c[i];
      if (total <= target + 1e-9) best = std::max(best, total);
    }
    CHECK(r.exhaustive);
    CHECK(r.target == doctest::Approx(target));
    CHECK(r.total == doctest::Approx(best).epsilon(1e-12));
    CHECK(r.total <= target + 1e-9);
    REQUIRE(r.bits.size() == n);
    for (std::size_t i = 0; i < n; ++i)
      CHECK((r.bits[i] == int(std::floor(x[i])) || r.bits[i] == int(std::ceil(x[i]))));
  }
  // From the LP: OMPQ's objective c_i * x_i with bits 4..8 per unit and one size budget.
  allocation_problem p;
  const std::vector<double> theta{0.9, 0.2, 0.5, 0.7, 0.1}, params{3, 5, 2, 8, 4};
  std::vector<std::vector<double>> option_bits;
  for (std::size_t i = 0; i < theta.size(); ++i) {
    std::vector<allocation_option> l;
    option_bits.emplace_back();
    for (int b = 4; b <= 8; ++b) {
      l.push_back({theta[i] * b, {params[i] * b}});
      option_bits.back().push_back(b);
    }
    p.layers.push_back(l);
  }
  p.budgets = {6.3 * 22};
  const auto lp = solve_allocation_lp(p);
  const auto real_bits = lp.expected(option_bits);
  const auto r = ompq_budget_matching_rounding(real_bits, params);
  CHECK(r.target == doctest::Approx(lp.cost));
  CHECK(r.total <= p.budgets[0]);
  for (std::size_t i = 0; i < real_bits.size(); ++i) {
    double b = 0;
    for (std::size_t j = 0; j < 5; ++j) b += lp.weight[i][j] * option_bits[i][j];
    CHECK(real_bits[i] == doctest::Approx(b));
  }
  option_bits[2].pop_back();
  CHECK_THROWS_AS(lp.expected(option_bits), mixq::shape_error);
  option_bits.pop_back();
  CHECK_THROWS_AS(lp.expected(option_bits), mixq::shape_error);

  // A node limit ends the search early and says so; the bits stay floor/ceil choices in budget.
  const std::vector<double> xs{4.3, 5.7, 6.2, 7.9, 4.4, 5.5}, cs{1.1, 0.7, 2.3, 0.4, 1.9, 0.8};
  const auto cut = ompq_budget_matching_rounding(xs, cs, 2);
  CHECK_FALSE(cut.exhaustive);
  CHECK(cut.total <= cut.target + 1e-9);
  for (std::size_t i = 0; i < xs.size(); ++i)
    CHECK((cut.bits[i] == int(std::floor(xs[i])) || cut.bits[i] == int(std::ceil(xs[i]))));
  CHECK(ompq_budget_matching_rounding(xs, cs).exhaustive);

  CHECK_THROWS_AS(ompq_budget_matching_rounding(std::vector<double>{3.5}, std::vector<double>{}),
                  mixq::shape_error);
  CHECK_THROWS_AS(ompq_budget_matching_rounding(std::vector<double>{9.5}, std::vector<double>{1}),
                  mixq::bits_error);
  CHECK_THROWS_AS(ompq_budget_matching_rounding(std::vector<double>{0.5}, std::vector<double>{1}),
                  mixq::bits_error);
  CHECK_THROWS_AS(ompq_budget_matching_rounding(std::vector<double>{3.5}, std::vector<double>{-1}),
                  mixq::value_error);
}

TEST_CASE("bit-allocation problems built from a model agree with the cost model") {
  const auto m = resnet18();
  const std::vector<bit_pair> cand{{2, 4}, {4, 4}, {6, 8}, {8, 8}};
  const std::vector<cost_metric> metrics{cost_metric::size_bits, cost_metric::bitops};
  std::mt19937 rng(23);
  std::uniform_real_distribution<double> u(0.1, 5.0);
  std::vector<double> sens(m.size());
  for (auto& x : sens) x = u(rng);
  auto value_of = [&](std::size_t i, bit_pair c) {
    return -sens[i] * (std::pow(4.0, -c.w) + std::pow(4.0, -c.a));
  };
  for (const auto& conv :
       {cost_conventions::hawq_v3(), cost_conventions::fracbits(), cost_conventions::edmips()}) {
    const auto lo = evaluate(m, bit_config::uniform(m.size(), 2, 4), conv);
    const auto hi = evaluate(m, bit_config::uniform(m.size(), 8, 8), conv);
    const std::vector<double> budgets{0.5 * (lo.size_bits + hi.size_bits),
                                      0.4 * (lo.bitops + hi.bitops)};
    const auto p = make_bit_allocation_problem(m, cand, metrics, budgets, value_of, conv);
    REQUIRE(p.layers.size() == m.size());
    CHECK(p.tied_layers == m.shared_input_groups);
    const auto sol = solve_allocation(p);
    CHECK(sol.proven_optimal);
    const auto cfg = to_bit_config(cand, sol.choice);
    const auto r = evaluate(m, cfg, conv);
    CHECK(r.size_bits == doctest::Approx(sol.cost[0]).epsilon(1e-12));
    CHECK(r.bitops == doctest::Approx(sol.cost[1]).epsilon(1e-12));
    CHECK(r.size_bits <= budgets[0]);
    CHECK(r.bitops <= budgets[1]);
    for (const auto& g : m.shared_input_groups) CHECK(cfg.a_bits[g[0]] == cfg.a_bits[g[1]]);
    // Smallest feasible size: every layer at its cheapest candidate = the uniform (2,4) model.
    const std::vector<double> too_small{lo.size_bits - 1, hi.bitops};
    CHECK_THROWS_AS(
        solve_allocation(make_bit_allocation_problem(m, cand, metrics, too_small, value_of, conv)),
        mixq::budget_error);
  }
  const std::vector<bit_pair> bad{{0, 4}};
  CHECK_THROWS_AS(make_bit_allocation_problem(m, bad, metrics, std::vector<double>{1, 1}, value_of),
                  mixq::bits_error);
  CHECK_THROWS_AS(make_bit_allocation_problem(m, cand, metrics, std::vector<double>{1}, value_of),
                  mixq::shape_error);
  CHECK_THROWS_AS(to_bit_config(cand, std::vector<std::size_t>{0, 4}), mixq::shape_error);
}
