// Inference throughput (images/s) of the demo CNN compiled to an integer model at W2A2,
// W4A4, W8A8 and a mixed configuration averaging 2 bits, next to the same network in FP32
// (autodiff forward, no_grad, eval mode) in the same run, on 1 and 2 threads, batch 64.
#include <benchmark/benchmark.h>

#include <random>

#include "mixq/deploy.hpp"
#include "mixq/nn.hpp"
#include "mixq/nn/demo_cnn.hpp"
#include "mixq/nn/fixed_policy.hpp"

namespace nn = mixq::nn;
namespace ad = mixq::autodiff;
namespace deploy = mixq::deploy;

namespace {
constexpr std::size_t batch = 64;

ad::ftensor images(std::mt19937& rng) {
  ad::ftensor x({batch, 1, 28, 28});
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto& v : x) v = u(rng);
  return x;
}

// Mixed, 2 bits on average over the six layers: 8-bit first and last layers (as deployments
// usually keep them) paid for by 1-bit layers in the middle.
mixq::quant::bit_config config(int which) {
  using mixq::quant::bit_config;
  switch (which) {
    case 2:
      return bit_config::uniform(6, 2, 2);
    case 4:
      return bit_config::uniform(6, 4, 4);
    case 8:
      return bit_config::uniform(6, 8, 8);
    default:
      return {{4, 1, 2, 1, 2, 2}, {8, 1, 2, 1, 2, 2}};
  }
}

void integer_model(benchmark::State& state) {
  const int which = int(state.range(0));
  const auto threads = std::size_t(state.range(1));
  std::mt19937 rng(1);
  auto net = nn::demo_cnn(10, 1, rng);
  nn::fixed_policy policy(config(which));
  nn::attach_policy(*net, policy);
  net->eval();
  auto model = deploy::compile(*net, policy, {1, 28, 28});
  model.set_threads(threads);
  mixq::kernels::set_num_threads(threads);
  const auto x = images(rng);
  for (auto _ : state) benchmark::DoNotOptimize(model.run(x));
  state.counters["images/s"] =
      benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(which == 0 ? "mixed avg 2 bits"
                            : "uniform W" + std::to_string(which) + "A" + std::to_string(which));
}

void fp32_model(benchmark::State& state) {
  const auto threads = unsigned(state.range(0));
  std::mt19937 rng(1);
  auto net = nn::demo_cnn(10, 1, rng);  // no policy attached: full precision
  net->eval();
  ad::set_threads(threads);
  mixq::kernels::set_num_threads(threads);
  const auto x = ad::constant(images(rng));
  for (auto _ : state) {
    ad::no_grad ng;
    benchmark::DoNotOptimize((*net)(x));
  }
  state.counters["images/s"] =
      benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("FP32");
}
}  // namespace

BENCHMARK(fp32_model)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(integer_model)
    ->ArgNames({"wa", "threads"})
    ->ArgsProduct({{2, 0, 4, 8}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
