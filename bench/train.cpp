// Training-step throughput (samples/s) of the Fashion-MNIST example CNN (nn::fashion_cnn) at
// batch 64: forward, cross-entropy, backward and an SGD step (Nesterov momentum 0.9, weight
// decay 5e-4) on one fixed random batch, on 1 and 2 threads. When libtorch is found at
// configure time (MIXQ_BENCH_TORCH), the same network, batch and optimizer in libtorch, and
// BM_train_step_vs_torch, which alternates one mixq step and one libtorch step per iteration
// so both see the same machine load, and reports the ratio of their step times.
// Also: the forward pass alone and the 32->64 conv layer's forward + backward.
//
//   bench_train --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <ctime>
#include <random>
#include <vector>

#include "mixq/kernels/thread_pool.hpp"
#include "mixq/nn.hpp"

#if defined(MIXQ_BENCH_TORCH)
#include "train_torch.hpp"
#endif

namespace nn = mixq::nn;
namespace ad = mixq::autodiff;

namespace {
/// One random batch (normal pixels, uniform labels) and the example CNN with its optimizer.
struct mixq_trainer {
  std::mt19937 rng{1};
  std::shared_ptr<nn::sequential> net = nn::fashion_cnn(rng);
  nn::sgd opt{net->parameters(), 0.01f, 0.9f, 5e-4f, true};
  ad::ftensor x;
  std::vector<int> y;

  explicit mixq_trainer(std::size_t batch) : x({batch, 1, 28, 28}), y(batch) {
    std::normal_distribution<float> d;
    for (auto& v : x) v = d(rng);
    for (auto& l : y) l = int(rng() % 10);
  }
  float step() {
    const ad::var loss = ad::cross_entropy((*net)(ad::constant(x)), y);
    opt.zero_grad();
    ad::backward(loss);
    opt.step();
    return loss.item();
  }
};

/// Uses `n` threads in mixq: the autodiff ops split the batch over n threads and each runs
/// its GEMMs on its own thread (the kernels' pool stays at 1 so they do not contend for it).
void set_mixq_threads(unsigned n) {
  ad::set_threads(n);
  mixq::kernels::default_thread_pool().resize(1);
}

void samples_per_second(benchmark::State& state, std::size_t batch) {
  state.counters["samples/s"] =
      benchmark::Counter(double(state.iterations() * batch), benchmark::Counter::kIsRate);
}

void batch_and_threads(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "threads"})->Args({64, 1})->Args({64, 2});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
}  // namespace

static void BM_train_step(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  set_mixq_threads(unsigned(state.range(1)));
  mixq_trainer t(batch);
  for (auto _ : state) benchmark::DoNotOptimize(t.step());
  samples_per_second(state, batch);
}
BENCHMARK(BM_train_step)->Apply(batch_and_threads);

#if defined(MIXQ_BENCH_TORCH)
static void BM_train_step_torch(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  mixq_bench::torch_cnn_trainer::set_threads(unsigned(state.range(1)));
  const mixq_trainer data(batch);  // the same batch as the mixq case
  mixq_bench::torch_cnn_trainer t(batch, data.x.data(), data.y.data(), 1);
  for (auto _ : state) benchmark::DoNotOptimize(t.step());
  samples_per_second(state, batch);
}
BENCHMARK(BM_train_step_torch)->Apply(batch_and_threads);

/// Process CPU time in seconds (all threads).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

/// One mixq step and one libtorch step per iteration, each timed on its own; counters: each
/// one's samples/s and ms per step (wall clock), ratio = mixq step time / libtorch step
/// time, and cpu_ratio, the same for process CPU time. On a machine shared with other jobs
/// cpu_ratio on 1 thread is the steadier figure (time spent preempted does not count); on
/// 2 threads it also counts libtorch's OpenMP workers spinning while they wait.
static void BM_train_step_vs_torch(benchmark::State& state) {
  using clock = std::chrono::steady_clock;
  const std::size_t batch = std::size_t(state.range(0));
  const unsigned threads = unsigned(state.range(1));
  set_mixq_threads(threads);
  mixq_bench::torch_cnn_trainer::set_threads(threads);
  mixq_trainer m(batch);
  mixq_bench::torch_cnn_trainer t(batch, m.x.data(), m.y.data(), 1);
  double mixq_s = 0, torch_s = 0, mixq_cpu = 0, torch_cpu = 0;
  for (auto _ : state) {
    const double c0 = process_cpu_seconds();
    const auto t0 = clock::now();
    benchmark::DoNotOptimize(m.step());
    const auto t1 = clock::now();
    const double c1 = process_cpu_seconds();
    benchmark::DoNotOptimize(t.step());
    const auto t2 = clock::now();
    const double c2 = process_cpu_seconds();
    mixq_s += std::chrono::duration<double>(t1 - t0).count();
    torch_s += std::chrono::duration<double>(t2 - t1).count();
    mixq_cpu += c1 - c0;
    torch_cpu += c2 - c1;
  }
  const double n = double(state.iterations());
  state.counters["mixq samples/s"] = n * double(batch) / mixq_s;
  state.counters["torch samples/s"] = n * double(batch) / torch_s;
  state.counters["mixq ms"] = 1e3 * mixq_s / n;
  state.counters["torch ms"] = 1e3 * torch_s / n;
  state.counters["ratio"] = mixq_s / torch_s;
  state.counters["cpu_ratio"] = mixq_cpu / torch_cpu;
}
BENCHMARK(BM_train_step_vs_torch)->Apply(batch_and_threads);
#endif

static void BM_forward_eval(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  set_mixq_threads(unsigned(state.range(1)));
  mixq_trainer t(batch);
  t.net->eval();
  ad::no_grad ng;
  for (auto _ : state) benchmark::DoNotOptimize((*t.net)(ad::constant(t.x)).value().data());
  samples_per_second(state, batch);
}
BENCHMARK(BM_forward_eval)->Apply(batch_and_threads);

static void BM_conv2_forward_backward(benchmark::State& state) {
  const std::size_t batch = std::size_t(state.range(0));
  set_mixq_threads(unsigned(state.range(1)));
  std::mt19937 rng(2);
  nn::conv2d conv(32, 64, 3, 1, 1, 1, false, rng);
  ad::ftensor x({batch, 32, 14, 14});
  std::normal_distribution<float> d;
  for (auto& v : x) v = d(rng);
  const ad::var xv = ad::var::parameter(x);
  for (auto _ : state) {
    ad::backward(ad::sum(conv(xv)));
    benchmark::DoNotOptimize(xv.grad().data());
  }
  // batch * 64 * 196 * 288 MACs per pass, three passes (forward, dW, dx), 2 flops each.
  state.counters["GFLOP/s"] =
      benchmark::Counter(double(state.iterations()) * 3 * 2 * double(batch) * 64 * 196 * 288 / 1e9,
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_conv2_forward_backward)->Apply(batch_and_threads);

#if defined(MIXQ_BENCH_TORCH)
// Records which libtorch the figures compare against.
static const bool torch_context_added = [] {
  benchmark::AddCustomContext("baseline", mixq_bench::torch_cnn_trainer::describe());
  return true;
}();
#endif
