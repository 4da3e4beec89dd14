// GEMM benchmarks: the bit-serial GEMM for bit pairs 1x1 .. 8x8 against the AND-popcount
// ceiling measured in this binary, and baselines in the same run: mixq's FP32 and int8 paths,
// oneDNN (dnnl_gemm_u8s8s32, dnnl_sgemm) and OpenBLAS sgemm when found at build time.
// Single-core by default; the threads2 variants use two threads of mixq's pool.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <initializer_list>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/core/aligned.hpp"
#include "mixq/kernels.hpp"

#if defined(MIXQ_BENCH_OPENBLAS)
extern "C" {
void cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
void openblas_set_num_threads(int);
char* openblas_get_corename();
}
#endif
#if defined(MIXQ_BENCH_DNNL)
#include <oneapi/dnnl/dnnl.h>
extern "C" void omp_set_num_threads(int);
#endif

namespace mk = mixq::kernels;

namespace {

/// This thread's CPU time: on a shared machine it is steadier than wall time for one thread.
double thread_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- the AND + VPOPCNTQ + VPADDQ ceiling: 16 independent chains on register operands ----
#if defined(__x86_64__)
__attribute__((target("avx512f,avx512vpopcntdq"), noinline)) std::uint64_t ceiling_loop(
    std::size_t iters) {
  __m512i x[4], y[4], acc[16];
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm512_set1_epi64(0x0123456789abcdefll * (i + 1));
    y[i] = _mm512_set1_epi64(0x7edcba9876543210ll ^ i);
  }
  for (auto& a : acc) a = _mm512_setzero_si512();
  for (std::size_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 4; ++i) asm volatile("" : "+v"(x[i]), "+v"(y[i]));
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j)
        acc[i * 4 + j] =
            _mm512_add_epi64(acc[i * 4 + j], _mm512_popcnt_epi64(_mm512_and_si512(x[i], y[j])));
  }
  alignas(64) std::uint64_t lanes[8];
  std::uint64_t s = 0;
  for (auto& a : acc) {
    _mm512_store_si512(lanes, a);
    for (auto l : lanes) s += l;
  }
  return s;
}
#endif

/// Bit-MACs per second of the ceiling loop now: the median of 5 runs as long as one iteration of
/// BM_and_popcount_ceiling. Measured right after each benchmark's timed loop, so the ratio to
/// the ceiling compares the kernel with the core as it was at that moment (a VM's clock and
/// neighbours drift over a run).
double ceiling_bitmacs_per_second() {
#if defined(__x86_64__)
  if (!mk::isa_supported(mk::isa::avx512_vpopcntdq)) return 0.0;
  const std::size_t iters = 100'000;
  std::array<double, 5> rate{};
  for (double& r : rate) {
    // Wall time: the thread CPU clock reads a few percent fast on runs this short here.
    const double t0 = wall_seconds();
    benchmark::DoNotOptimize(ceiling_loop(iters));
    const double s = wall_seconds() - t0;
    r = s > 0 ? double(iters) * 16 * 512 / s : 0.0;
  }
  std::nth_element(rate.begin(), rate.begin() + 2, rate.end());
  return rate[2];
#else
  return 0.0;
#endif
}

void BM_and_popcount_ceiling(benchmark::State& state) {
#if defined(__x86_64__)
  if (!mk::isa_supported(mk::isa::avx512_vpopcntdq)) {
    state.SkipWithError("no AVX-512 VPOPCNTDQ");
    return;
  }
  const std::size_t iters = 100'000;
  for (auto _ : state) benchmark::DoNotOptimize(ceiling_loop(iters));
  state.counters["bitMAC/s"] = benchmark::Counter(double(iters) * 16 * 512 * state.iterations(),
                                                  benchmark::Counter::kIsRate);
#else
  state.SkipWithError("not x86-64");
#endif
}

/// Random plane bits in the bitplane_view layout (padding bits zero).
struct random_planes {
  mixq::bitwidth type;
  std::size_t rows, k, words;
  mixq::aligned_vector<std::uint64_t> bits;
  random_planes(mixq::bitwidth t, std::size_t r, std::size_t kk, std::mt19937_64& rng)
      : type(t), rows(r), k(kk), words((kk + 511) / 512 * 8), bits(r * t.bits * words) {
    for (std::size_t pr = 0; pr < r * t.bits; ++pr)
      for (std::size_t w = 0; w < words; ++w) {
        const std::size_t lo = w * 64;
        std::uint64_t v = rng();
        if (lo >= kk)
          v = 0;
        else if (kk - lo < 64)
          v &= (std::uint64_t(1) << (kk - lo)) - 1;
        bits[pr * words + w] = v;
      }
  }
  mk::bitplane_view view() const { return {type, rows, k, words, bits.data()}; }
};

void set_rates(benchmark::State& state, double macs_per_iter, double bits_per_mac, double seconds) {
  const double n = double(state.iterations());
  state.counters["MAC/s"] = benchmark::Counter(macs_per_iter * n, benchmark::Counter::kIsRate);
  if (bits_per_mac > 0) {
    state.counters["bitMAC/s"] =
        benchmark::Counter(macs_per_iter * bits_per_mac * n, benchmark::Counter::kIsRate);
    const double ceil = ceiling_bitmacs_per_second();
    if (ceil > 0 && seconds > 0) {
      state.counters["ceiling_ratio"] = macs_per_iter * bits_per_mac * n / seconds / ceil;
      state.counters["ceiling_bitMAC/s"] = ceil;
    }
  }
}

/// bitserial_gemm on W as given (interleaved per call) or, prepacked, on
/// packed_bitserial_weights made once outside the loop (how a layer calls it).
void BM_bitserial_gemm(benchmark::State& state, int wbits, int abits, std::size_t threads,
                       mk::isa path, bool prepacked) {
  if (!mk::isa_supported(path)) {
    state.SkipWithError("path not supported by this CPU");
    return;
  }
  const std::size_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937_64 rng(1);
  const random_planes A({abits, false}, M, K, rng), W({wbits, true}, N, K, rng);
  const auto packed =
      prepacked ? mk::packed_bitserial_weights::pack(W.view()) : mk::packed_bitserial_weights();
  std::vector<std::int32_t> C(M * N);
  mk::set_num_threads(std::max<std::size_t>(threads, 1));
  const mk::gemm_options opt{threads, path};
  state.SetLabel(mk::bitserial_gemm_kernel_name(opt));
  // One thread: CPU time (as the counters); two: wall time.
  auto clock = threads > 1 ? &wall_seconds : &thread_seconds;
  const double t0 = clock();
  for (auto _ : state) {
    if (prepacked)
      mk::bitserial_gemm(A.view(), packed, std::span<std::int32_t>(C), opt);
    else
      mk::bitserial_gemm(A.view(), W.view(), std::span<std::int32_t>(C), opt);
    benchmark::DoNotOptimize(C.data());
  }
  const double s = clock() - t0;
  mk::set_num_threads(1);
  set_rates(state, double(M) * N * K, double(wbits) * abits, s);
}

/// Activation packing (M x K codes of quint<AB> to bit planes) alone, with kernels::pack_bitplanes
/// or (reference) bitplane_matrix::pack, or packing plus the bit-serial GEMM against weights
/// packed once (the end-to-end cost of a layer call; the planes' storage is reused).
template <int AB>
void BM_pack_gemm(benchmark::State& state, int wbits, bool with_gemm, bool reference) {
  using AQ = mixq::quint<AB>;
  const std::size_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937_64 rng(4);
  std::vector<std::uint8_t> codes(M * K);
  for (auto& c : codes) c = static_cast<std::uint8_t>(rng() & ((1u << AB) - 1));
  const random_planes W({wbits, true}, N, K, rng);
  const auto packed = mk::packed_bitserial_weights::pack(W.view());
  std::vector<std::int32_t> C(M * N);
  const mk::gemm_options opt{1, mk::best_isa()};
  mixq::bitplane_matrix<AQ> A;
  const double t0 = thread_seconds();
  for (auto _ : state) {
    if (reference)
      A = mixq::bitplane_matrix<AQ>::pack(codes, M, K);
    else
      mk::pack_bitplanes<AQ>(std::span<const std::uint8_t>(codes), M, K, A, opt);
    if (with_gemm)
      mk::bitserial_gemm(mk::bitplane_view(A), packed, std::span<std::int32_t>(C), opt);
    benchmark::DoNotOptimize(A.data());
    benchmark::DoNotOptimize(C.data());
  }
  const double s = thread_seconds() - t0;
  if (with_gemm)
    set_rates(state, double(M) * N * K, double(wbits) * AB, s);
  else
    state.counters["values/s"] =
        benchmark::Counter(double(M) * K * state.iterations(), benchmark::Counter::kIsRate);
}

std::vector<float> random_floats(std::size_t n) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// gemm_f32 on the active path, or on `path` (portable: the xsimd tile on this binary's batches).
void BM_gemm_f32(benchmark::State& state, std::size_t threads, std::optional<mk::isa> path) {
  const std::size_t M = state.range(0), N = state.range(1), K = state.range(2);
  const auto A = random_floats(M * K), B = random_floats(N * K);
  std::vector<float> C(M * N);
  mk::set_num_threads(threads);
  for (auto _ : state) {
    mk::gemm_f32(mk::transpose::no, mk::transpose::yes, M, N, K, 1.0f, A.data(), K, B.data(), K,
                 0.0f, C.data(), N, {threads, path});
    benchmark::DoNotOptimize(C.data());
  }
  mk::set_num_threads(1);
  set_rates(state, double(M) * N * K, 0, 0);
}

/// mixq's int8 path on bytes (u8 x s8, the same operands as dnnl_gemm_u8s8s32): W packed per
/// call (prepacked = false, the plain-rows entry) or once outside the loop (prepacked = true).
void BM_gemm_u8s8s32(benchmark::State& state, bool prepacked, mk::isa path) {
  if (!mk::isa_supported(path)) {
    state.SkipWithError("path not supported by this CPU");
    return;
  }
  const std::size_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937 rng(3);
  std::vector<std::uint8_t> A(M * K);
  std::vector<std::int8_t> B(N * K);
  for (auto& x : A) x = std::uint8_t(rng() & 15);
  for (auto& x : B) x = std::int8_t(int(rng() % 15) - 7);
  std::vector<std::int32_t> C(M * N);
  const mk::gemm_options opt{1, path};
  state.SetLabel(mk::int8_gemm_kernel_name(opt));
  const auto packed = mk::packed_int8_weights::pack(N, K, B.data(), K);
  for (auto _ : state) {
    if (prepacked)
      mk::gemm_u8s8s32(M, A.data(), K, packed, C.data(), N, opt);
    else
      mk::gemm_u8s8s32(M, N, K, A.data(), K, B.data(), K, C.data(), N, opt);
    benchmark::DoNotOptimize(C.data());
  }
  set_rates(state, double(M) * N * K, 0, 0);
}

/// The int8 path and the front door on bit-plane operands (unpacking included).
void BM_planes(benchmark::State& state, int wbits, int abits, bool front_door) {
  const std::size_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937_64 rng(1);
  const random_planes A({abits, false}, M, K, rng), W({wbits, true}, N, K, rng);
  std::vector<std::int32_t> C(M * N);
  if (front_door)
    state.SetLabel(mk::choose_kernel({abits, false}, {wbits, true}) == mk::gemm_kernel::int8
                       ? "int8"
                       : "bitserial");
  for (auto _ : state) {
    if (front_door)
      mk::lowbit_gemm(A.view(), W.view(), std::span<std::int32_t>(C));
    else
      mk::int8_gemm(A.view(), W.view(), std::span<std::int32_t>(C));
    benchmark::DoNotOptimize(C.data());
  }
  set_rates(state, double(M) * N * K, 0, 0);
}

#if defined(MIXQ_BENCH_OPENBLAS)
void BM_openblas_sgemm(benchmark::State& state) {
  const int M = state.range(0), N = state.range(1), K = state.range(2);
  const auto A = random_floats(std::size_t(M) * K), B = random_floats(std::size_t(N) * K);
  std::vector<float> C(std::size_t(M) * N);
  openblas_set_num_threads(1);
  state.SetLabel(std::string("core ") + openblas_get_corename());
  for (auto _ : state) {
    // Row-major (101), A no-trans (111), B trans (112): the same NT form as the others.
    cblas_sgemm(101, 111, 112, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
    benchmark::DoNotOptimize(C.data());
  }
  set_rates(state, double(M) * N * K, 0, 0);
}
#endif

#if defined(MIXQ_BENCH_DNNL)
void BM_dnnl_sgemm(benchmark::State& state) {
  const int M = state.range(0), N = state.range(1), K = state.range(2);
  const auto A = random_floats(std::size_t(M) * K), B = random_floats(std::size_t(N) * K);
  std::vector<float> C(std::size_t(M) * N);
  omp_set_num_threads(1);
  for (auto _ : state) {
    if (dnnl_sgemm('N', 'T', M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N) !=
        dnnl_success) {
      state.SkipWithError("dnnl_sgemm failed");
      return;
    }
    benchmark::DoNotOptimize(C.data());
  }
  set_rates(state, double(M) * N * K, 0, 0);
}

void BM_dnnl_gemm_u8s8s32(benchmark::State& state) {
  const int M = state.range(0), N = state.range(1), K = state.range(2);
  std::mt19937 rng(3);
  std::vector<std::uint8_t> A(std::size_t(M) * K);
  std::vector<std::int8_t> B(std::size_t(N) * K);
  for (auto& x : A) x = std::uint8_t(rng() & 15);
  for (auto& x : B) x = std::int8_t(int(rng() % 15) - 7);
  std::vector<std::int32_t> C(std::size_t(M) * N);
  const std::int32_t co = 0;
  omp_set_num_threads(1);
  for (auto _ : state) {
    if (dnnl_gemm_u8s8s32('N', 'T', 'F', M, N, K, 1.0f, A.data(), K, 0, B.data(), K, 0, 0.0f,
                          C.data(), N, &co) != dnnl_success) {
      state.SkipWithError("dnnl_gemm_u8s8s32 failed");
      return;
    }
    benchmark::DoNotOptimize(C.data());
  }
  set_rates(state, double(M) * N * K, 0, 0);
}
#endif

void apply_sizes(benchmark::internal::Benchmark* b, bool large, bool threaded = false) {
  b->ArgNames({"M", "N", "K"})->Unit(benchmark::kMillisecond);
  if (threaded) b->UseRealTime();
  b->Args({256, 256, 256})->Args({1024, 1024, 1024});
  if (large) b->Args({4096, 4096, 4096});
}

const bool registered = [] {
  const bool big = std::getenv("MIXQ_BENCH_4096") != nullptr;
  benchmark::RegisterBenchmark("and_popcount_ceiling", BM_and_popcount_ceiling);
  const std::pair<int, int> pairs[] = {{1, 1}, {1, 2}, {2, 2}, {2, 4}, {4, 4}, {8, 8}};
  for (auto [w, a] : pairs) {
    const std::string name = "bitserial_gemm/w" + std::to_string(w) + "a" + std::to_string(a);
    for (bool prepacked : {false, true}) {
      const std::string base = name + (prepacked ? "/prepacked" : "");
      apply_sizes(benchmark::RegisterBenchmark(base.c_str(), BM_bitserial_gemm, w, a, 1,
                                               mk::best_isa(), prepacked),
                  big && w * a <= 4);
      apply_sizes(benchmark::RegisterBenchmark((base + "/threads2").c_str(), BM_bitserial_gemm, w,
                                               a, 2, mk::best_isa(), prepacked),
                  big && w * a <= 4, true);
    }
  }
  // Packing of the activations alone, then packing + GEMM (weights packed once, outside).
  for (auto [w, a] : std::initializer_list<std::pair<int, int>>{{1, 1}, {1, 2}, {2, 2}, {4, 4}}) {
    const std::string tag = "/w" + std::to_string(w) + "a" + std::to_string(a);
    auto reg = [&](const std::string& name, bool with_gemm, bool reference) {
      auto fn = a == 1 ? &BM_pack_gemm<1> : a == 2 ? &BM_pack_gemm<2> : &BM_pack_gemm<4>;
      apply_sizes(benchmark::RegisterBenchmark(name.c_str(), fn, w, with_gemm, reference), false);
    };
    if (w == a) {
      reg("pack_activations/a" + std::to_string(a), false, false);
      reg("pack_activations/a" + std::to_string(a) + "/reference", false, true);
    }
    reg("bitserial_gemm_with_packing" + tag, true, false);
  }
  for (auto [w, a] : pairs) {
    const std::string tag = "/w" + std::to_string(w) + "a" + std::to_string(a);
    apply_sizes(
        benchmark::RegisterBenchmark(("int8_gemm_planes" + tag).c_str(), BM_planes, w, a, false),
        false);
    apply_sizes(benchmark::RegisterBenchmark(("lowbit_gemm" + tag).c_str(), BM_planes, w, a, true),
                false);
  }
  apply_sizes(benchmark::RegisterBenchmark("gemm_u8s8s32", BM_gemm_u8s8s32, false, mk::best_isa()),
              big);
  apply_sizes(
      benchmark::RegisterBenchmark("gemm_u8s8s32/prepacked", BM_gemm_u8s8s32, true, mk::best_isa()),
      big);
  apply_sizes(benchmark::RegisterBenchmark("gemm_u8s8s32/prepacked/avx2", BM_gemm_u8s8s32, true,
                                           mk::isa::avx2),
              false);
  for (mk::isa path : {mk::isa::avx2, mk::isa::portable})
    for (int bits : {1, 2}) {
      // (Not "w" + std::to_string(bits): g++ 12 -O2 raises a false -Wrestrict on it.)
      const std::string pair = bits == 1 ? "w1a1" : "w2a2";
      apply_sizes(benchmark::RegisterBenchmark(
                      ("bitserial_gemm/" + pair + "/" + mk::isa_name(path)).c_str(),
                      BM_bitserial_gemm, bits, bits, 1, path, false),
                  false);
    }
  apply_sizes(benchmark::RegisterBenchmark("gemm_f32", BM_gemm_f32, 1, std::nullopt), big);
  apply_sizes(benchmark::RegisterBenchmark("gemm_f32/threads2", BM_gemm_f32, 2, std::nullopt),
              false, true);
  apply_sizes(benchmark::RegisterBenchmark("gemm_f32/portable", BM_gemm_f32, 1, mk::isa::portable),
              false);
#if defined(MIXQ_BENCH_OPENBLAS)
  apply_sizes(benchmark::RegisterBenchmark("openblas_sgemm", BM_openblas_sgemm), big);
#endif
#if defined(MIXQ_BENCH_DNNL)
  apply_sizes(benchmark::RegisterBenchmark("dnnl_sgemm", BM_dnnl_sgemm), big);
  apply_sizes(benchmark::RegisterBenchmark("dnnl_gemm_u8s8s32", BM_dnnl_gemm_u8s8s32), big);
#endif
  return true;
}();

}  // namespace
