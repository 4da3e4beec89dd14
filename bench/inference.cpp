// Inference throughput (images/s) of the demo CNN compiled to an integer model at W2A2,
// W4A4, W8A8 and a mixed configuration averaging 2 bits, next to the same network in FP32
// (autodiff forward, no_grad, eval mode) in the same run, on 1 and 2 threads, batch 64.
// Each integer benchmark also times the FP32 network and the integer model alternately after
// its loop and reports the median ratio of their times as `x_fp32` (integer images/s over
// FP32 images/s), so the comparison holds on a machine shared with other jobs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

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

template <class F>
double seconds_of(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// kernel: 0 = chosen per layer, 1 = bit-serial forced for the GEMM layers.
void run_integer(benchmark::State& state, int which, std::size_t threads, int kernel) {
  std::mt19937 rng(1);
  auto net = nn::demo_cnn(10, 1, rng);
  nn::fixed_policy policy(config(which));
  nn::attach_policy(*net, policy);
  net->eval();
  auto model = deploy::compile(*net, policy, {1, 28, 28});
  model.set_threads(threads);
  if (kernel == 1) model.set_kernel_override(mixq::kernels::gemm_kernel::bitserial);
  mixq::kernels::set_num_threads(threads);
  ad::set_threads(unsigned(threads));
  const auto x = images(rng);
  for (auto _ : state) benchmark::DoNotOptimize(model.run(x));
  state.counters["images/s"] =
      benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  // FP32 and integer alternately, same threads: the median ratio of their times.
  auto fp32 = nn::demo_cnn(10, 1, rng);
  fp32->eval();
  const auto xv = ad::constant(x);
  std::vector<double> ratios;
  for (int r = 0; r < 7; ++r) {
    const double tf = seconds_of([&] {
      ad::no_grad ng;
      benchmark::DoNotOptimize((*fp32)(xv));
    });
    const double ti = seconds_of([&] { benchmark::DoNotOptimize(model.run(x)); });
    ratios.push_back(tf / ti);
  }
  std::nth_element(ratios.begin(), ratios.begin() + 3, ratios.end());
  state.counters["x_fp32"] = ratios[3];
  state.SetLabel((which == 0 ? std::string("mixed avg 2 bits")
                             : "uniform W" + std::to_string(which) + "A" + std::to_string(which)) +
                 (kernel == 1 ? ", bit-serial forced" : ""));
}

// Per-layer times of the W2A2 (or mixed) model, 1 thread: counters q<i>_<kernel>_ms, the
// fastest of 20 runs per quantized layer (fused ops count in the layer before them).
void integer_model_layers(benchmark::State& state) {
  const int which = int(state.range(0));
  std::mt19937 rng(1);
  auto net = nn::demo_cnn(10, 1, rng);
  nn::fixed_policy policy(config(which));
  nn::attach_policy(*net, policy);
  net->eval();
  auto model = deploy::compile(*net, policy, {1, 28, 28});
  model.set_threads(1);
  mixq::kernels::set_num_threads(1);
  const auto x = images(rng);
  for (auto _ : state) benchmark::DoNotOptimize(model.run(x));
  std::vector<double> best(model.layers().size(), 1e300);
  for (int r = 0; r < 20; ++r) {
    model.run(x);
    for (std::size_t i = 0; i < best.size(); ++i)
      best[i] = std::min(best[i], model.report()[i].seconds);
  }
  std::size_t q = 0;
  for (std::size_t i = 0; i < best.size(); ++i)
    if (model.report()[i].kind == deploy::op_kind::quantized)
      state.counters["q" + std::to_string(q++) + "_" + model.report()[i].kernel + "_ms"] =
          1e3 * best[i];
  state.SetLabel(which == 0 ? "mixed avg 2 bits, per layer" : "uniform W2A2, per layer");
}

void integer_model(benchmark::State& state) {
  run_integer(state, int(state.range(0)), std::size_t(state.range(1)), 0);
}
void integer_model_bitserial(benchmark::State& state) {
  run_integer(state, int(state.range(0)), std::size_t(state.range(1)), 1);
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
BENCHMARK(integer_model_bitserial)
    ->ArgNames({"wa", "threads"})
    ->ArgsProduct({{2, 0}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(integer_model_layers)->ArgName("wa")->Arg(2)->Arg(0)->Unit(benchmark::kMillisecond);
