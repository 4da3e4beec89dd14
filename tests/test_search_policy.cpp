// Budgets (absolute and like-uniform, cost_of, admits, check_feasible) against plain sums over
// layer tables, and the two policy concepts on toy models of each.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include "mixq/autodiff.hpp"
#include "mixq/search/policy.hpp"

namespace search = mixq::search;
using mixq::quant::bit_config;
using search::budget;
using search::budget_kind;

namespace {

std::vector<search::layer_cost> random_layers(std::mt19937& rng, std::size_t n) {
  std::uniform_int_distribution<int> ch(1, 64), k(1, 3), hw(1, 28);
  std::vector<search::layer_cost> out;
  for (std::size_t i = 0; i < n; ++i) {
    if (i + 1 == n) {
      out.push_back(search::make_linear("fc", ch(rng), ch(rng)));
    } else {
      const int kk = 2 * k(rng) - 1;
      out.push_back(
          search::make_conv("conv" + std::to_string(i), ch(rng), ch(rng), kk, 1, 1, hw(rng)));
    }
  }
  return out;
}

bit_config random_config(std::mt19937& rng, std::size_t n) {
  std::uniform_int_distribution<int> b(1, 8);
  bit_config c;
  for (std::size_t i = 0; i < n; ++i) {
    c.w_bits.push_back(b(rng));
    c.a_bits.push_back(b(rng));
  }
  return c;
}

// Plain references: sums written out from the definitions.
double ref_bitops(const std::vector<search::layer_cost>& l, const bit_config& c) {
  double s = 0;
  for (std::size_t i = 0; i < l.size(); ++i) s += double(l[i].macs) * c.w_bits[i] * c.a_bits[i];
  return s;
}
double ref_weight_bits(const std::vector<search::layer_cost>& l, const bit_config& c) {
  double s = 0;
  for (std::size_t i = 0; i < l.size(); ++i) s += double(l[i].params) * c.w_bits[i];
  return s;
}

}  // namespace

TEST_CASE("budget: cost_of and layer_costs equal the plain sums") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const auto layers = random_layers(rng, 1 + rng() % 8);
    const auto cfg = random_config(rng, layers.size());
    const auto b1 = budget::bitops(1), b2 = budget::weight_bits(1);
    CHECK(b1.cost_of(layers, cfg) == doctest::Approx(ref_bitops(layers, cfg)).epsilon(1e-12));
    CHECK(b2.cost_of(layers, cfg) == doctest::Approx(ref_weight_bits(layers, cfg)).epsilon(1e-12));
    const auto per = b1.layer_costs(layers, cfg);
    REQUIRE(per.size() == layers.size());
    double sum = 0;
    for (std::size_t i = 0; i < per.size(); ++i) {
      CHECK(per[i] == double(layers[i].macs) * cfg.w_bits[i] * cfg.a_bits[i]);
      sum += per[i];
    }
    CHECK(sum == doctest::Approx(b1.cost_of(layers, cfg)).epsilon(1e-12));
  }
}

TEST_CASE("budget: like_uniform admits exactly the configs no costlier than uniform") {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    const auto layers = random_layers(rng, 2 + rng() % 6);
    const int w = 1 + int(rng() % 8), a = 1 + int(rng() % 8);
    for (auto kind : {budget_kind::bitops, budget_kind::weight_bits}) {
      const auto b = budget::like_uniform(kind, layers, w, a);
      const auto uni = bit_config::uniform(layers.size(), w, a);
      const double ref =
          kind == budget_kind::bitops ? ref_bitops(layers, uni) : ref_weight_bits(layers, uni);
      CHECK(b.kind == kind);
      CHECK(b.value == doctest::Approx(ref).epsilon(1e-12));
      CHECK(b.admits(layers, uni));
      const auto cfg = random_config(rng, layers.size());
      const double c =
          kind == budget_kind::bitops ? ref_bitops(layers, cfg) : ref_weight_bits(layers, cfg);
      CHECK(b.admits(layers, cfg) == (c <= ref));
      // One more bit on any layer's weights costs more, so it is not admitted.
      auto more = uni;
      if (w < 8) {
        more.w_bits[rng() % layers.size()] += 1;
        CHECK_FALSE(b.admits(layers, more));
      }
    }
  }
}

TEST_CASE("budget: check_feasible names the smallest feasible value") {
  std::mt19937 rng(3);
  const auto layers = random_layers(rng, 5);
  const auto least = ref_bitops(layers, bit_config::uniform(5, 2, 2));
  budget::bitops(least).check_feasible(layers, 2, 2);  // exactly the minimum is feasible
  const auto tight = budget::bitops(least * 0.99);
  try {
    tight.check_feasible(layers, 2, 2);
    FAIL("expected budget_error");
  } catch (const mixq::budget_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("smallest feasible value is " + search::detail::figure(least)) !=
          std::string::npos);
  }
  CHECK_THROWS_AS(tight.check_feasible(layers, 2, 2), mixq::error);
  // With 1-bit minimum it becomes feasible (a quarter of the 2-bit BitOps).
  tight.check_feasible(layers, 1, 1);
  const auto wb = budget::weight_bits(ref_weight_bits(layers, bit_config::uniform(5, 3, 8)) - 1);
  CHECK_THROWS_AS(wb.check_feasible(layers, 3, 1), mixq::budget_error);
  wb.check_feasible(layers, 2, 8);  // activations do not count in weight bits
}

TEST_CASE("budget: bad inputs raise typed errors") {
  std::mt19937 rng(5);
  const auto layers = random_layers(rng, 4);
  CHECK_THROWS_AS(budget::bitops(0), mixq::budget_error);
  CHECK_THROWS_AS(budget::bitops(-5), mixq::budget_error);
  CHECK_THROWS_AS(budget::weight_bits(std::nan("")), mixq::budget_error);
  CHECK_THROWS_AS(budget::weight_bits(INFINITY), mixq::budget_error);
  CHECK_THROWS_AS(budget::like_uniform(budget_kind::bitops, layers, 0, 2), mixq::bits_error);
  CHECK_THROWS_AS(budget::like_uniform(budget_kind::bitops, layers, 2, 9), mixq::bits_error);
  CHECK_THROWS_AS(budget::like_uniform(budget_kind::bitops, {}, 2, 2), mixq::shape_error);
  const auto b = budget::bitops(1e9);
  CHECK_THROWS_AS((void)b.cost_of(layers, bit_config::uniform(3, 2, 2)), mixq::shape_error);
  CHECK_THROWS_AS((void)b.admits(layers, bit_config::uniform(4, 9, 2)), mixq::bits_error);
  CHECK_THROWS_AS(b.check_feasible(layers, 0, 1), mixq::bits_error);
  CHECK(b.describe().find("bitops <= 1000000000") != std::string::npos);
}

// ---- the concepts on toy policies ------------------------------------------------------------

namespace {

struct toy_differentiable : mixq::nn::precision_policy {
  mixq::autodiff::var cost = mixq::autodiff::var::parameter(mixq::autodiff::ftensor({1}, 1.0f));
  mixq::autodiff::var quantize_weights(std::size_t, const mixq::autodiff::var& w) override {
    return w;
  }
  mixq::autodiff::var quantize_activations(std::size_t, const mixq::autodiff::var& x) override {
    return x;
  }
  mixq::autodiff::var search_loss(const mixq::autodiff::var& task, const budget&) {
    return mixq::autodiff::add(task, cost);
  }
  mixq::autodiff::var expected_cost() { return cost; }
  void on_search_epoch(const search::search_context&, std::size_t, std::size_t) {}
  bit_config derive(const search::search_context& c, const budget&) {
    return bit_config::uniform(c.costs.size(), 4, 4);
  }
};

struct toy_allocation {
  bit_config allocate(search::search_context& c, const budget&) {
    return bit_config::uniform(c.costs.size(), 8, 8);
  }
  std::optional<bit_config> on_epoch_end(search::search_context&, const budget&, std::size_t) {
    return std::nullopt;
  }
};

// A differentiable-looking type that is not a precision_policy.
struct not_a_precision_policy {
  mixq::autodiff::var search_loss(const mixq::autodiff::var& t, const budget&) { return t; }
  mixq::autodiff::var expected_cost() { return {}; }
  void on_search_epoch(const search::search_context&, std::size_t, std::size_t) {}
  bit_config derive(const search::search_context&, const budget&) { return {}; }
};

// Returns the wrong type from on_epoch_end.
struct bad_allocation {
  bit_config allocate(search::search_context&, const budget&) { return {}; }
  bit_config on_epoch_end(search::search_context&, const budget&, std::size_t) { return {}; }
};

}  // namespace

static_assert(search::differentiable_policy<toy_differentiable>);
static_assert(!search::allocation_policy<toy_differentiable>);
static_assert(search::allocation_policy<toy_allocation>);
static_assert(!search::differentiable_policy<toy_allocation>);
static_assert(!search::differentiable_policy<not_a_precision_policy>);
static_assert(!search::allocation_policy<bad_allocation>);

TEST_CASE("policy concepts: toy models are callable through a search_context") {
  mixq::nn::sequential model;
  search::search_context ctx{model, {}, {}, {}, {}, {}, 1, nullptr};
  std::mt19937 rng(1);
  ctx.costs = random_layers(rng, 3);
  const auto b = budget::like_uniform(budget_kind::bitops, ctx.costs, 8, 8);
  toy_allocation alloc;
  CHECK(b.admits(ctx.costs, alloc.allocate(ctx, b)));
  CHECK_FALSE(alloc.on_epoch_end(ctx, b, 0).has_value());
  toy_differentiable diff;
  CHECK(b.admits(ctx.costs, diff.derive(ctx, b)));
  const auto loss =
      diff.search_loss(mixq::autodiff::constant(mixq::autodiff::ftensor({1}, 2.0f)), b);
  CHECK(loss.item() == 3.0f);
}
