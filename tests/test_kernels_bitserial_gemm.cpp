// Bit-serial GEMM: every instruction-set path the CPU has against the scalar reference, for
// every pair of the 16 qtypes, ragged shapes, extreme codes, threads, and bad inputs.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/kernels.hpp"
#include "test_util.hpp"

namespace mk = mixq::kernels;
using mixq::bitwidth;

using mixq::test::all_bitwidths;
using mixq::test::supported_paths;

namespace {

enum class fill { random, all_min, all_max, min_max };

int type_min(bitwidth t) {
  return t.is_binary() ? -1 : (t.is_signed ? -(1 << (t.bits - 1)) : 0);
}
int type_max(bitwidth t) {
  return t.is_binary() ? 1 : (t.is_signed ? (1 << (t.bits - 1)) - 1 : (1 << t.bits) - 1);
}

/// A run-time-typed operand packed by hand in the documented bitplane_view layout, with its
/// values kept for the plain dot-product check.
struct operand {
  bitwidth type;
  std::size_t rows, k, words;
  std::vector<int> values;
  mixq::aligned_vector<std::uint64_t> bits;

  operand(bitwidth t, std::size_t r, std::size_t kk, fill f, bool second, std::mt19937& rng)
      : type(t),
        rows(r),
        k(kk),
        words((kk + 511) / 512 * 8),
        values(r * kk),
        bits(r * t.bits * words, 0) {
    std::uniform_int_distribution<int> code(0, (1 << t.bits) - 1);
    for (std::size_t i = 0; i < values.size(); ++i) {
      int v = 0;
      switch (f) {
        case fill::random: {
          const int c = code(rng);
          v = t.is_binary() ? (c ? 1 : -1)
                            : (t.is_signed && c >= (1 << (t.bits - 1)) ? c - (1 << t.bits) : c);
          break;
        }
        case fill::all_min:
          v = type_min(t);
          break;
        case fill::all_max:
          v = type_max(t);
          break;
        case fill::min_max:
          v = second ? type_max(t) : type_min(t);
          break;
      }
      values[i] = v;
      const unsigned c = t.is_binary() ? (v > 0 ? 1u : 0u) : unsigned(v) & ((1u << t.bits) - 1u);
      const std::size_t row = i / kk, col = i % kk;
      for (int p = 0; p < t.bits; ++p)
        bits[(row * t.bits + p) * words + col / 64] |= std::uint64_t((c >> p) & 1u) << (col % 64);
    }
  }
  mk::bitplane_view view() const { return {type, rows, k, words, bits.data()}; }
};

/// Checks every supported path (with the given threads) against the reference for one shape;
/// the reference is checked against plain dot products of the values. Returns mismatches.
int check_shape(bitwidth at, bitwidth wt, std::size_t M, std::size_t N, std::size_t K, fill f,
                std::mt19937& rng, std::size_t threads = 1) {
  const operand A(at, M, K, f, false, rng), W(wt, N, K, f, true, rng);
  std::vector<std::int32_t> ref(M * N), got(M * N);
  mk::bitserial_gemm_reference(A.view(), W.view(), std::span<std::int32_t>(ref));
  int bad = 0;
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t n = 0; n < N; ++n) {
      std::int64_t s = 0;
      for (std::size_t k = 0; k < K; ++k) s += A.values[m * K + k] * W.values[n * K + k];
      if (s != ref[m * N + n]) ++bad;
    }
  // Every path, on W as given and on W packed once (the layout a layer keeps between calls).
  const auto packed = mk::packed_bitserial_weights::pack(W.view());
  for (mk::isa path : supported_paths())
    for (bool prepacked : {false, true}) {
      std::fill(got.begin(), got.end(), 12345);
      if (prepacked)
        mk::bitserial_gemm(A.view(), packed, std::span<std::int32_t>(got), {threads, path});
      else
        mk::bitserial_gemm(A.view(), W.view(), std::span<std::int32_t>(got), {threads, path});
      for (std::size_t i = 0; i < M * N; ++i)
        if (got[i] != ref[i]) {
          if (bad < 3) {
            CAPTURE(at.name());
            CAPTURE(wt.name());
            CAPTURE(M);
            CAPTURE(N);
            CAPTURE(K);
            CAPTURE(int(f));
            CAPTURE(mk::isa_name(path));
            CAPTURE(prepacked);
            CAPTURE(i);
            CHECK(got[i] == ref[i]);
          }
          ++bad;
        }
    }
  return bad;
}

}  // namespace

TEST_CASE_TEMPLATE("typed entry on bitplane_matrix agrees with the reference", AT,
                   MIXQ_ALL_QTYPES) {
  std::mt19937 rng(7);
  const std::size_t M = 7, N = 5, K = 130;
  const auto av = mixq::test::random_values<AT>(M * K, rng);
  const auto A = mixq::bitplane_matrix<AT>::pack(av, M, K);
  auto check_with = [&](auto wtag) {
    using WT = typename decltype(wtag)::type;
    const auto wv = mixq::test::random_values<WT>(N * K, rng);
    const auto W = mixq::bitplane_matrix<WT>::pack(wv, N, K);
    std::vector<std::int32_t> ref(M * N), got(M * N);
    mk::bitserial_gemm_reference(A, W, std::span<std::int32_t>(ref));
    for (std::size_t m = 0; m < M; ++m)
      for (std::size_t n = 0; n < N; ++n) {
        int s = 0;
        for (std::size_t k = 0; k < K; ++k) s += int(av[m * K + k]) * int(wv[n * K + k]);
        CHECK(ref[m * N + n] == s);
      }
    for (mk::isa path : supported_paths()) {
      CAPTURE(mk::isa_name(path));
      mk::bitserial_gemm(A, W, std::span<std::int32_t>(got), {1, path});
      CHECK(got == ref);
    }
  };
  check_with(mixq::qtype_tag<mixq::qbinary>{});
  check_with(mixq::qtype_tag<mixq::qint<3>>{});
  check_with(mixq::qtype_tag<mixq::quint<8>>{});
}

TEST_CASE("every path, every qtype pair, ragged K and extreme codes") {
  std::mt19937 rng(1);
  int bad = 0;
  for (bitwidth at : all_bitwidths())
    for (bitwidth wt : all_bitwidths()) {
      bad += check_shape(at, wt, 7, 5, 65, fill::random, rng);
      bad += check_shape(at, wt, 1, 9, 63, fill::random, rng);
      bad += check_shape(at, wt, 5, 3, 1, fill::random, rng);
      bad += check_shape(at, wt, 3, 7, 64, fill::all_min, rng);
      bad += check_shape(at, wt, 2, 5, 513, fill::all_max, rng);
      bad += check_shape(at, wt, 6, 5, 511, fill::min_max, rng);
    }
  CHECK(bad == 0);
}

TEST_CASE("thousands of random small shapes") {
  std::mt19937 rng(2);
  const auto types = all_bitwidths();
  std::uniform_int_distribution<int> ti(0, 15), mn(1, 14), kd(1, 200);
  int bad = 0;
  for (int it = 0; it < 2000; ++it)
    bad +=
        check_shape(types[ti(rng)], types[ti(rng)], mn(rng), mn(rng), kd(rng), fill::random, rng);
  CHECK(bad == 0);
}

TEST_CASE("larger shapes, K = 4097, two threads") {
  std::mt19937 rng(3);
  mk::set_num_threads(2);
  int bad = 0;
  for (auto [at, wt] : {std::pair{bitwidth{1, false}, bitwidth{1, false}},
                        {bitwidth{1, true}, bitwidth{1, true}},
                        {bitwidth{2, true}, bitwidth{3, false}},
                        {bitwidth{8, true}, bitwidth{1, true}},
                        {bitwidth{8, false}, bitwidth{8, true}}}) {
    bad += check_shape(at, wt, 13, 11, 4097, fill::random, rng, 2);
    bad += check_shape(at, wt, 3, 29, 4097, fill::all_max, rng, 0);
    bad += check_shape(at, wt, 40, 33, 1000, fill::random, rng, 2);
  }
  mk::set_num_threads(1);
  CHECK(bad == 0);
}

TEST_CASE("three threads: every qtype pair, rows split and W blocks split, uneven shares") {
  // Three threads split whole A rows (M >= N) or whole 8-row W blocks (M < N) into uneven
  // shares: 50 rows, and 9 W blocks for N = 70.
  std::mt19937 rng(8);
  mk::set_num_threads(3);
  int bad = 0;
  for (bitwidth at : all_bitwidths())
    for (bitwidth wt : all_bitwidths()) {
      bad += check_shape(at, wt, 50, 20, 300, fill::random, rng, 3);  // M >= N: rows split
      bad += check_shape(at, wt, 2, 70, 130, fill::random, rng, 3);   // M < N: W blocks split
    }
  mk::set_num_threads(1);
  CHECK(bad == 0);
}

TEST_CASE("a GEMM called from inside a pool task runs its parts serially") {
  // Nested parallel_for calls run all parts on the calling thread: a GEMM asking for two
  // threads from inside a task must neither wait for busy workers nor compute differently.
  mk::set_num_threads(2);
  int bad = 0;
  std::mutex m;
  mk::default_thread_pool().parallel_for(2, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      std::mt19937 local(static_cast<unsigned>(i));
      const int r = check_shape({1, true}, {2, false}, 30, 9 + 40 * i, 200, fill::random, local, 2);
      std::lock_guard g(m);
      bad += r;
    }
  });
  mk::set_num_threads(1);
  CHECK(bad == 0);
}

TEST_CASE("empty shapes") {
  std::mt19937 rng(4);
  CHECK(check_shape({3, true}, {2, false}, 0, 5, 10, fill::random, rng) == 0);
  CHECK(check_shape({3, true}, {2, false}, 4, 0, 10, fill::random, rng) == 0);
  const mixq::bitplane_matrix<mixq::qbinary> A(2, 0), W(3, 0);
  std::vector<std::int32_t> c(6, 9);
  mk::bitserial_gemm(A, W, std::span<std::int32_t>(c));
  for (int v : c) CHECK(v == 0);
}

TEST_CASE("bad inputs") {
  const mixq::bitplane_matrix<mixq::qint<2>> A(3, 10), A2(3, 11);
  const mixq::bitplane_matrix<mixq::quint<4>> W(4, 10);
  std::vector<std::int32_t> c(12), small(11);
  CHECK_THROWS_AS(mk::bitserial_gemm(A2, W, std::span<std::int32_t>(c)), mixq::shape_error);
  CHECK_THROWS_AS(mk::bitserial_gemm(A, W, std::span<std::int32_t>(small)), mixq::shape_error);
  CHECK_THROWS_AS(mk::bitserial_gemm_reference(A2, W, std::span<std::int32_t>(c)),
                  mixq::shape_error);
  CHECK_THROWS_AS(mk::bitserial_gemm_reference(A, W, std::span<std::int32_t>(small)),
                  mixq::shape_error);
  // A view whose bit-width the dispatch does not cover.
  mk::bitplane_view bad_bits(A);
  bad_bits.type.bits = 9;
  CHECK_THROWS_AS(mk::bitserial_gemm(bad_bits, W, std::span<std::int32_t>(c)), mixq::bits_error);
  bad_bits.type.bits = 0;
  CHECK_THROWS_AS(mk::bitserial_gemm(W, bad_bits, std::span<std::int32_t>(c)), mixq::bits_error);
  mk::bitplane_view bad_pad(A);
  bad_pad.words_per_plane = 3;
  CHECK_THROWS_AS(mk::bitserial_gemm(bad_pad, W, std::span<std::int32_t>(c)), mixq::shape_error);
  CHECK_THROWS_WITH_AS(mk::bitserial_gemm(A2, W, std::span<std::int32_t>(c)),
                       doctest::Contains("expected the same K"), mixq::shape_error);
}

TEST_CASE("packed weights: own their planes, survive copies, keep row sums, check shapes") {
  std::mt19937 rng(11);
  const std::size_t M = 9, N = 19, K = 300;
  for (auto [at, wt] : {std::pair{bitwidth{1, true}, bitwidth{1, true}},
                        {bitwidth{2, false}, bitwidth{1, false}},
                        {bitwidth{4, true}, bitwidth{3, true}}}) {
    const operand A(at, M, K, fill::random, false, rng);
    std::vector<std::int32_t> ref(M * N), got(M * N);
    mk::packed_bitserial_weights copy;
    {
      // The source operand and the first packed object are gone before the call.
      const operand W(wt, N, K, fill::random, true, rng);
      mk::bitserial_gemm_reference(A.view(), W.view(), std::span<std::int32_t>(ref));
      const auto packed = mk::packed_bitserial_weights::pack(W.view());
      CHECK(packed.rows() == N);
      CHECK(packed.cols() == K);
      CHECK(packed.type() == wt);
      for (std::size_t n = 0; n < N; ++n) {
        std::int64_t s = 0;  // sum of (value - offset): binary values count their 1 bits twice
        for (std::size_t k = 0; k < K; ++k) s += W.values[n * K + k] + (wt.is_binary() ? 1 : 0);
        CHECK(packed.row_sum(n) == s);
      }
      copy = packed;
    }
    for (mk::isa path : supported_paths()) {
      CAPTURE(mk::isa_name(path));
      std::fill(got.begin(), got.end(), -7);
      mk::bitserial_gemm(A.view(), copy, std::span<std::int32_t>(got), {2, path});
      CHECK(got == ref);
    }
    // The view of packed weights is a plain operand too.
    std::fill(got.begin(), got.end(), -7);
    mk::bitserial_gemm(A.view(), copy.view(), std::span<std::int32_t>(got));
    CHECK(got == ref);
  }
  const mixq::bitplane_matrix<mixq::qint<2>> A(3, 10), A2(3, 11);
  const auto W = mk::packed_bitserial_weights::pack(mixq::bitplane_matrix<mixq::quint<4>>(4, 10));
  std::vector<std::int32_t> c(12), small(11);
  CHECK_THROWS_WITH_AS(mk::bitserial_gemm(A2, W, std::span<std::int32_t>(c)),
                       doctest::Contains("expected the same K"), mixq::shape_error);
  CHECK_THROWS_AS(mk::bitserial_gemm(A, W, std::span<std::int32_t>(small)), mixq::shape_error);
  mk::bitplane_view bad_bits(A);
  bad_bits.type.bits = 9;
  CHECK_THROWS_AS(mk::packed_bitserial_weights::pack(bad_bits), mixq::bits_error);
  // Empty weights: an empty product.
  const mk::packed_bitserial_weights none;
  std::vector<std::int32_t> empty;
  mk::bitserial_gemm(mk::bitplane_view(mixq::bitplane_matrix<mixq::qint<2>>(3, 0)), none,
                     std::span<std::int32_t>(empty));
}

TEST_CASE("instruction-set selection") {
  CHECK(mk::isa_supported(mk::isa::portable));
  CHECK(mk::isa_supported(mk::best_isa()));
  for (mk::isa i : mk::all_isas) {
    if (mk::isa_supported(i)) {
      mk::force_isa(i);
      CHECK(mk::active_isa() == i);
    } else {
      CHECK_THROWS_AS(mk::force_isa(i), mixq::value_error);
      CHECK_THROWS_AS(mk::bitserial_gemm_kernel_name({0, i}), mixq::value_error);
    }
  }
  mk::force_isa(std::nullopt);
  CHECK(mk::active_isa() == mk::best_isa());
}

TEST_CASE("thread pool covers every index once and passes exceptions up") {
  mk::thread_pool pool(3);
  CHECK(pool.size() == 3);
  for (std::size_t n : {0u, 1u, 2u, 5u, 100u, 1001u}) {
    std::vector<int> hits(n, 0);
    pool.parallel_for(n, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) CHECK(h == 1);
  }
  CHECK_THROWS_AS(
      pool.parallel_for(10, [](std::size_t, std::size_t) { throw mixq::value_error("x"); }),
      mixq::value_error);
  pool.resize(1);
  CHECK(pool.size() == 1);
  CHECK_THROWS_AS(pool.resize(0), mixq::value_error);
  CHECK_THROWS_AS(mk::set_num_threads(0), mixq::value_error);
}

TEST_CASE("thread pool survives resizing between tasks") {
  mk::thread_pool pool(2);
  for (int round = 0; round < 20; ++round) {
    pool.resize(round % 2 ? 1 : 2 + round % 3);
    std::vector<int> hits(50, 0);
    pool.parallel_for(50, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) CHECK(h == 1);
  }
}

TEST_CASE("thread pool: back-to-back tasks with and without the spin wait") {
  // Workers poll for the next task for spin_wait() before sleeping: tasks that follow at once
  // (spinning workers), after a pause longer than the spin (sleeping workers) and with the
  // spin off must each cover every index once, and a pool must stop while its workers spin.
  for (auto spin : {std::chrono::microseconds(0), std::chrono::microseconds(200),
                    std::chrono::microseconds(20000)}) {
    mk::thread_pool pool(2);
    pool.set_spin_wait(spin);
    CHECK(pool.spin_wait() == spin);
    std::vector<int> hits(64, 0);
    for (int round = 0; round < 200; ++round) {
      if (round % 50 == 49) std::this_thread::sleep_for(std::chrono::microseconds(500));
      pool.parallel_for(hits.size(), [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) ++hits[i];
      });
    }
    for (int h : hits) CHECK(h == 200);
    CHECK_THROWS_AS(pool.parallel_for(4,
                                      [](std::size_t b, std::size_t) {
                                        if (b != 0) throw mixq::shape_error("worker");
                                      }),
                    mixq::shape_error);
  }  // destroyed right after a task: the spinning worker must see stop and exit
  mk::thread_pool pool(2);
  pool.set_spin_wait(std::chrono::microseconds(-5));  // negative means no spin
  CHECK(pool.spin_wait() == std::chrono::nanoseconds(0));
}

TEST_CASE("whole-output tiles and their tails: every qtype pair, N past several 32-output tiles") {
  // N = 70 and 37 give full 4-vector tiles plus 1..3-vector and ragged-lane tails; M * bits is
  // not a multiple of the 6-row tile; M < N splits the threads over W blocks.
  std::mt19937 rng(5);
  int bad = 0;
  for (bitwidth at : all_bitwidths())
    for (bitwidth wt : all_bitwidths()) {
      bad += check_shape(at, wt, 13, 70, 130, fill::random, rng);
      bad += check_shape(at, wt, 5, 37, 64, fill::min_max, rng, 2);
    }
  for (auto [at, wt] : {std::pair{bitwidth{1, false}, bitwidth{1, true}},
                        {bitwidth{2, false}, bitwidth{1, true}},
                        {bitwidth{2, false}, bitwidth{2, true}},
                        {bitwidth{3, true}, bitwidth{1, false}},
                        {bitwidth{1, true}, bitwidth{4, true}}}) {
    bad += check_shape(at, wt, 2, 33, 140000, fill::random, rng);  // two K blocks of 2048 words
    // ... with full tiles (6 plane rows, 32 outputs) that add to C in the second K block.
    bad += check_shape(at, wt, 7, 40, 140000, fill::random, rng);
    bad += check_shape(at, wt, 25, 96, 1000, fill::all_max, rng);
  }
  CHECK(bad == 0);
}
