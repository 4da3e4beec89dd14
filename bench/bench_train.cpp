// Training-step throughput (samples/s) of the Fashion-MNIST example CNN at batch 64:
// forward, cross-entropy, backward and an SGD step on random inputs. Also the forward pass
// alone and the conv layers' share. (No libtorch comparison: libtorch-dev is not installed.)
#include <benchmark/benchmark.h>

#include <random>

#include "mixq/nn.hpp"

namespace nn = mixq::nn;
namespace ad = mixq::autodiff;

namespace {
std::shared_ptr<nn::sequential> make_cnn(std::mt19937& rng) {
  auto net = std::make_shared<nn::sequential>();
  net->add(std::make_shared<nn::conv2d>(1, 32, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<nn::batch_norm2d>(32));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::max_pool2d>(2));
  net->add(std::make_shared<nn::conv2d>(32, 64, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<nn::batch_norm2d>(64));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::max_pool2d>(2));
  net->add(std::make_shared<nn::flatten>());
  net->add(std::make_shared<nn::linear>(64 * 7 * 7, 10, true, rng));
  return net;
}

struct fixture {
  std::mt19937 rng{1};
  std::shared_ptr<nn::sequential> net = make_cnn(rng);
  ad::ftensor x;
  std::vector<int> y;
  explicit fixture(std::size_t batch) : x({batch, 1, 28, 28}), y(batch) {
    std::normal_distribution<float> d;
    for (auto& v : x) v = d(rng);
    for (auto& l : y) l = int(rng() % 10);
  }
};
}  // namespace

static void BM_train_step(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  fixture f(batch);
  nn::sgd opt(f.net->parameters(), 0.01f, 0.9f, 5e-4f, true);
  for (auto _ : state) {
    const ad::var loss = ad::cross_entropy((*f.net)(ad::constant(f.x)), f.y);
    opt.zero_grad();
    ad::backward(loss);
    opt.step();
    benchmark::DoNotOptimize(loss.item());
  }
  state.counters["samples/s"] =
      benchmark::Counter(double(state.iterations() * batch), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_train_step)->Arg(64)->ArgName("batch")->Unit(benchmark::kMillisecond)->UseRealTime();

static void BM_forward_eval(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  fixture f(batch);
  f.net->eval();
  ad::no_grad ng;
  for (auto _ : state) benchmark::DoNotOptimize((*f.net)(ad::constant(f.x)).value().data());
  state.counters["samples/s"] =
      benchmark::Counter(double(state.iterations() * batch), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_forward_eval)->Arg(64)->ArgName("batch")->Unit(benchmark::kMillisecond)->UseRealTime();

static void BM_conv2_forward_backward(benchmark::State& state) {
  std::mt19937 rng(2);
  nn::conv2d conv(32, 64, 3, 1, 1, 1, false, rng);
  ad::ftensor x({64, 32, 14, 14});
  std::normal_distribution<float> d;
  for (auto& v : x) v = d(rng);
  const ad::var xv = ad::var::parameter(x);
  for (auto _ : state) {
    ad::backward(ad::sum(conv(xv)));
    benchmark::DoNotOptimize(xv.grad().data());
  }
  // 64 * 64 * 196 * 288 MACs per pass, three passes (forward, dW, dx), 2 flops each.
  state.counters["GFLOP/s"] =
      benchmark::Counter(double(state.iterations()) * 3 * 2 * 64.0 * 64 * 196 * 288 / 1e9,
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_conv2_forward_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
