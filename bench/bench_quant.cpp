// Fake-quant ops, forward + backward: the dedicated single-node quantizers of quant/ against the
// same expressions composed from autodiff primitives (why they are written as one node), and
// FracBits' two-branch cost over the plain quantizer.
#include <benchmark/benchmark.h>

#include <random>

#include "mixq/autodiff.hpp"
#include "mixq/quant.hpp"

namespace ad = mixq::autodiff;
namespace q = mixq::quant;

namespace {
ad::ftensor random_tensor(mixq::shape_t s, float lo, float hi) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(lo, hi);
  ad::ftensor t(std::move(s));
  for (auto& v : t) v = u(rng);
  return t;
}
const ad::ftensor& weights() {  // a 256x256 3x3 conv
  static const ad::ftensor w = random_tensor({256, 256, 3, 3}, -0.2f, 0.2f);
  return w;
}
const ad::ftensor& activations() {  // batch 32 of 64x28x28
  static const ad::ftensor x = random_tensor({32, 64, 28, 28}, -1.0f, 6.0f);
  return x;
}

template <class F>
void run(benchmark::State& state, const ad::ftensor& input, F f) {
  ad::var x = ad::var::parameter(input);
  ad::var alpha = ad::var::parameter(ad::ftensor({1}, 4.0f));
  for (auto _ : state) {
    x.zero_grad();
    ad::var y = ad::sum(f(x, alpha));
    ad::backward(y);
    benchmark::DoNotOptimize(x.grad().data());
  }
  state.SetItemsProcessed(state.iterations() * std::int64_t(input.size()));
}
}  // namespace

static void dorefa_node(benchmark::State& s) {
  run(s, weights(), [](const ad::var& w, const ad::var&) { return q::dorefa_weights(w, 3); });
}
static void dorefa_composed(benchmark::State& s) {
  run(s, weights(), [](const ad::var& w, const ad::var&) {
    const ad::var t = ad::tanh(w);
    const ad::var u = (t / ad::max(ad::abs(t)) + 1.0f) * 0.5f;
    return ad::round_ste(u * 7.0f) * (2.0f / 7.0f) - 1.0f;
  });
}
static void fracbits_dorefa(benchmark::State& s) {
  const ad::var lam = ad::var::parameter(ad::ftensor({1}, 3.4f));
  run(s, weights(), [&](const ad::var& w, const ad::var&) {
    return q::fracbits_quantize(w, lam, {}, q::dorefa_weight_quantizer{});
  });
}
static void pact_node(benchmark::State& s) {
  run(s, activations(), [](const ad::var& x, const ad::var& a) { return q::pact(x, a, 4); });
}
static void pact_composed(benchmark::State& s) {
  const ad::var zero = ad::constant(ad::ftensor({1}, 0.0f));
  run(s, activations(), [&](const ad::var& x, const ad::var& a) {
    const ad::var y = ad::minimum(ad::maximum(x, zero), a);
    return a * ad::round_ste(y / a * 15.0f) * (1.0f / 15.0f);
  });
}
static void fracbits_pact(benchmark::State& s) {
  const ad::var lam = ad::var::parameter(ad::ftensor({1}, 3.4f));
  run(s, activations(), [&](const ad::var& x, const ad::var& a) {
    return q::fracbits_quantize(x, lam, {}, q::pact_quantizer{a, {}});
  });
}
BENCHMARK(dorefa_node)->Unit(benchmark::kMillisecond);
BENCHMARK(dorefa_composed)->Unit(benchmark::kMillisecond);
BENCHMARK(fracbits_dorefa)->Unit(benchmark::kMillisecond);
BENCHMARK(pact_node)->Unit(benchmark::kMillisecond);
BENCHMARK(pact_composed)->Unit(benchmark::kMillisecond);
BENCHMARK(fracbits_pact)->Unit(benchmark::kMillisecond);
