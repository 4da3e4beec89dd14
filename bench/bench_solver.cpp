// Bit-allocation solver speed: the exact ILP (branch and bound) and the LP relaxation on
// 60 layers x 7 options (bits 2..8), with one budget (size) or two (size and BitOps), and
// OMPQ's budget-matching rounding. Values are -sensitivity * 4^-bits (a quantisation-noise
// proxy) or, for a harder case, random numbers with no structure.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>

#include "mixq/search/allocation_solver.hpp"

namespace {

using namespace mixq::search;

allocation_problem make_problem(std::size_t layers, int options, std::size_t budgets,
                                bool structured, double fraction, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> log_params(std::log(1e3), std::log(3e6));
  std::uniform_real_distribution<double> sens(0.01, 10.0), noise(-1.0, 1.0);
  std::uniform_real_distribution<double> log_macs(std::log(1e6), std::log(1e8));
  allocation_problem p;
  std::vector<double> lo(budgets, 0.0), hi(budgets, 0.0);
  for (std::size_t i = 0; i < layers; ++i) {
    const double params = std::round(std::exp(log_params(rng)));
    const double macs = std::round(std::exp(log_macs(rng)));
    const double s = sens(rng);
    std::vector<allocation_option> layer;
    for (int j = 0; j < options; ++j) {
      const int b = 2 + j;
      allocation_option o;
      o.value = structured ? -s * params * std::pow(4.0, -b) : noise(rng) * params;
      o.cost.push_back(params * b);
      if (budgets > 1) o.cost.push_back(macs * b * b);
      layer.push_back(o);
    }
    for (std::size_t k = 0; k < budgets; ++k) {
      lo[k] += layer.front().cost[k];
      hi[k] += layer.back().cost[k];
    }
    p.layers.push_back(layer);
  }
  for (std::size_t k = 0; k < budgets; ++k) p.budgets.push_back(lo[k] + fraction * (hi[k] - lo[k]));
  return p;
}

void BM_solve_allocation_ilp(benchmark::State& state) {
  const auto p = make_problem(std::size_t(state.range(0)), int(state.range(1)),
                              std::size_t(state.range(2)), state.range(3) != 0, 0.37, 42);
  allocation_solution s;
  for (auto _ : state) {
    s = solve_allocation(p);
    benchmark::DoNotOptimize(s.value);
  }
  if (!s.proven_optimal) state.SkipWithError("not proven optimal");
  state.counters["nodes"] = double(s.nodes);
  state.counters["gap"] = s.gap();
}
BENCHMARK(BM_solve_allocation_ilp)
    ->ArgNames({"layers", "options", "budgets", "structured"})
    ->Args({60, 7, 1, 1})
    ->Args({60, 7, 2, 1})
    ->Args({60, 7, 1, 0})
    ->Args({60, 7, 2, 0})
    ->Args({19, 2, 1, 1})
    ->Unit(benchmark::kMillisecond);

void BM_solve_allocation_lp(benchmark::State& state) {
  const auto p = make_problem(std::size_t(state.range(0)), int(state.range(1)), 1, true, 0.37, 42);
  for (auto _ : state) benchmark::DoNotOptimize(solve_allocation_lp(p).value);
}
BENCHMARK(BM_solve_allocation_lp)
    ->ArgNames({"layers", "options"})
    ->Args({60, 7})
    ->Unit(benchmark::kMicrosecond);

void BM_ompq_budget_matching_rounding(benchmark::State& state) {
  const auto n = std::size_t(state.range(0));
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> bits(4.0, 8.0), cost(0.01, 2.5);
  std::vector<double> x(n), c(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = bits(rng), c[i] = cost(rng);
  budget_matching_result r;
  for (auto _ : state) {
    r = ompq_budget_matching_rounding(x, c);
    benchmark::DoNotOptimize(r.total);
  }
  if (!r.exhaustive) state.SkipWithError("node limit reached");
  state.counters["slack"] = r.target - r.total;
}
BENCHMARK(BM_ompq_budget_matching_rounding)
    ->ArgNames({"units"})
    ->Arg(16)
    ->Arg(19)
    ->Arg(53)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
