// Allocation-policy speed on nn::demo_cnn (28x28 inputs): OMPQ's whole search (features of one
// batch through hooks + CKA between all layer pairs + LP + budget-matching rounding; the
// target is < 1 s), its parts, the CKA forms on one pair, and HAWQ's Hutchinson traces.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "mixq/nn/demo_cnn.hpp"
#include "mixq/search/driver.hpp"
#include "mixq/search/hawq_policy.hpp"
#include "mixq/search/ompq_policy.hpp"
#include "mixq/search/trace.hpp"

namespace {

using namespace mixq;
using namespace mixq::search;

struct setup {
  std::mt19937 rng{1};
  std::shared_ptr<nn::sequential> model = nn::demo_cnn(10, 1, rng);
  std::vector<batch> batches;
  search_context ctx;
  explicit setup(std::size_t batch_size)
      : ctx{*model,
            trace_costs(*model, {1, 1, 28, 28}).layers,
            [this] { return batches.size(); },
            [this](std::size_t i) { return batches.at(i); },
            [this] { return batches.size(); },
            [this](std::size_t i) { return batches.at(i); },
            1,
            nullptr} {
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::uniform_int_distribution<int> cls(0, 9);
    batch b{autodiff::ftensor({batch_size, 1, 28, 28}), {}};
    for (auto& v : b.images) v = g(rng);
    for (std::size_t i = 0; i < batch_size; ++i) b.labels.push_back(cls(rng));
    batches.push_back(std::move(b));
  }
};

void BM_ompq_search(benchmark::State& state) {
  setup s(std::size_t(state.range(0)));
  ompq_options o;
  o.samples = std::size_t(state.range(0));
  ompq_policy p(o);
  const auto b = budget::like_uniform(budget_kind::weight_bits, s.ctx.costs, 3, 8);
  for (auto _ : state) benchmark::DoNotOptimize(p.allocate(s.ctx, b));
  state.counters["features_s"] = p.report().seconds_features;
  state.counters["cka_s"] = p.report().seconds_cka;
  state.counters["solve_s"] = p.report().seconds_solve;
  state.counters["layers"] = double(s.ctx.costs.size());
}
BENCHMARK(BM_ompq_search)->Arg(32)->Arg(128)->Unit(benchmark::kMillisecond);

void BM_cka_pair(benchmark::State& state) {
  // Two conv-layer-like feature sets: n samples x 16*28*28 and x 32*14*14.
  const std::size_t n = std::size_t(state.range(0));
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 1.0f);
  tensor<float> x({n, 16 * 28 * 28}), y({n, 64});
  for (auto& v : x) v = g(rng);
  for (auto& v : y) v = g(rng);
  const auto form = cka_form(state.range(1));
  for (auto _ : state) benchmark::DoNotOptimize(cka(x, y, form));
  state.SetLabel(form == cka_form::gram ? "gram" : form == cka_form::feature ? "feature" : "auto");
}
BENCHMARK(BM_cka_pair)
    ->Args({32, int(cka_form::automatic)})
    ->Args({32, int(cka_form::gram)})
    ->Args({32, int(cka_form::feature)})
    ->Unit(benchmark::kMillisecond);

void BM_hawq_traces(benchmark::State& state) {
  setup s(64);
  hawq_options o;
  o.hutchinson.probes = std::size_t(state.range(0));
  o.space.candidates = {2, 4, 8};
  hawq_policy p(o);
  const auto b = budget::like_uniform(budget_kind::bitops, s.ctx.costs, 4, 4);
  for (auto _ : state) benchmark::DoNotOptimize(p.allocate(s.ctx, b));
}
BENCHMARK(BM_hawq_traces)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond);

}  // namespace
