// Packing throughput: quantize, dense packing and bit-plane packing of a rows x K matrix
// (bitplane_matrix::pack, the plain reference, and kernels::pack_bitplanes, one thread).
#include <benchmark/benchmark.h>

#include <random>

#include "mixq/core.hpp"
#include "mixq/kernels/pack_bitplanes.hpp"

namespace {

template <class Q>
std::vector<typename Q::storage_type> values(std::size_t n) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> d(0, Q::levels - 1);
  std::vector<typename Q::storage_type> v(n);
  for (auto& x : v) x = static_cast<typename Q::storage_type>(Q::decode(std::uint8_t(d(rng))));
  return v;
}

template <class Q>
void BM_pack_bitplanes(benchmark::State& state) {
  const auto rows = std::size_t(state.range(0)), k = std::size_t(state.range(1));
  const auto v = values<Q>(rows * k);
  for (auto _ : state) benchmark::DoNotOptimize(mixq::bitplane_matrix<Q>::pack(v, rows, k));
  state.counters["values/s"] =
      benchmark::Counter(double(rows * k) * double(state.iterations()), benchmark::Counter::kIsRate);
}

template <class Q>
void BM_pack_bitplanes_fast(benchmark::State& state) {
  const auto rows = std::size_t(state.range(0)), k = std::size_t(state.range(1));
  const auto v = values<Q>(rows * k);
  const auto path = static_cast<mixq::kernels::isa>(state.range(2));
  if (!mixq::kernels::isa_supported(path)) {
    state.SkipWithError("path not supported by this CPU");
    return;
  }
  state.SetLabel(mixq::kernels::isa_name(path));
  mixq::bitplane_matrix<Q> out;
  for (auto _ : state) {
    mixq::kernels::pack_bitplanes<Q>(std::span<const typename Q::storage_type>(v), rows, k, out,
                                     {1, path});
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["values/s"] = benchmark::Counter(double(rows * k) * double(state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

template <class Q>
void BM_pack_dense(benchmark::State& state) {
  const auto n = std::size_t(state.range(0)) * std::size_t(state.range(1));
  const auto v = values<Q>(n);
  for (auto _ : state) benchmark::DoNotOptimize(mixq::packed_tensor<Q>({n}, v));
  state.counters["values/s"] =
      benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_quantize(benchmark::State& state) {
  const auto n = std::size_t(state.range(0)) * std::size_t(state.range(1));
  std::vector<float> x(n, 0.3f);
  std::vector<std::int8_t> q(n);
  const auto p = mixq::quant_params::per_tensor(0.01f);
  for (auto _ : state) mixq::quantize<mixq::qint<4>>(x, p, std::span(q));
  state.counters["values/s"] =
      benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_pack_bitplanes<mixq::quint<2>>)->Args({256, 1024})->ArgNames({"rows", "K"});
BENCHMARK(BM_pack_bitplanes<mixq::qint<4>>)->Args({256, 1024})->ArgNames({"rows", "K"});
// path: 0 portable (SWAR), 1 AVX2, 2 AVX-512 BW (mixq::kernels::isa).
BENCHMARK(BM_pack_bitplanes_fast<mixq::quint<2>>)
    ->ArgsProduct({{256}, {1024}, {0, 1, 2}})
    ->ArgNames({"rows", "K", "path"});
BENCHMARK(BM_pack_bitplanes_fast<mixq::qint<4>>)
    ->ArgsProduct({{256}, {1024}, {0, 1, 2}})
    ->ArgNames({"rows", "K", "path"});
BENCHMARK(BM_pack_dense<mixq::qint<3>>)->Args({256, 1024})->ArgNames({"rows", "K"});
BENCHMARK(BM_quantize)->Args({256, 1024})->ArgNames({"rows", "K"});
