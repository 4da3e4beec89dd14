// pack_bitplanes against bitplane_matrix::pack (the plain reference) on every qtype, every
// packing path this CPU runs, one and two threads, ragged shapes and extreme values; bad values
// and shapes raise errors naming the culprit.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/kernels.hpp"
#include "test_util.hpp"

namespace mk = mixq::kernels;

namespace {

template <class Q>
bool same_bits(const mixq::bitplane_matrix<Q>& a, const mixq::bitplane_matrix<Q>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols() || a.words_per_plane() != b.words_per_plane())
    return false;
  const std::size_t n = a.rows() * a.row_stride();
  return n == 0 || std::memcmp(a.data(), b.data(), n * sizeof(std::uint64_t)) == 0;
}

const std::vector<std::pair<std::size_t, std::size_t>> shapes = {
    {1, 1},   {3, 7},    {2, 63},   {5, 64}, {4, 65}, {3, 511}, {2, 512},
    {3, 513}, {7, 1000}, {1, 4097}, {0, 5},  {3, 0},  {65, 130}};

}  // namespace

TEST_CASE_TEMPLATE("pack_bitplanes equals bitplane_matrix::pack on every path", Q,
                   MIXQ_ALL_QTYPES) {
  using S = typename Q::storage_type;
  std::mt19937 rng(11);
  mk::set_num_threads(2);
  for (mk::isa path : mixq::test::supported_paths())
    for (std::size_t threads : {1u, 2u})
      for (auto [rows, k] : shapes) {
        const std::string path_name = mk::isa_name(path);
        CAPTURE(path_name);
        CAPTURE(threads);
        CAPTURE(rows);
        CAPTURE(k);
        const mk::gemm_options opt{threads, path};
        const auto values = mixq::test::random_values<Q>(rows * k, rng);
        const auto ref = mixq::bitplane_matrix<Q>::pack(values, rows, k);
        CHECK(same_bits(mk::pack_bitplanes<Q>(std::span<const S>(values), rows, k, opt), ref));
        // Extreme codes: all min, all max, alternating.
        for (int pattern = 0; pattern < 3; ++pattern) {
          std::vector<S> x(rows * k);
          for (std::size_t i = 0; i < x.size(); ++i)
            x[i] = static_cast<S>(pattern == 0   ? Q::min
                                  : pattern == 1 ? Q::max
                                                 : (i % 2 ? Q::max : Q::min));
          CHECK(same_bits(mk::pack_bitplanes<Q>(std::span<const S>(x), rows, k, opt),
                          mixq::bitplane_matrix<Q>::pack(x, rows, k)));
        }
      }
  mk::set_num_threads(1);
}

TEST_CASE_TEMPLATE("pack_bitplanes names the first bad value and refuses wrong shapes", Q,
                   MIXQ_ALL_QTYPES) {
  using S = typename Q::storage_type;
  // Values outside Q that its storage type can hold (none for 8-bit types).
  std::vector<int> bad;
  if constexpr (Q::is_binary) {
    bad = {0, 2, -2, 127, -128};
  } else {
    if (Q::max < (Q::is_signed ? 127 : 255)) bad.push_back(Q::max + 1);
    if (Q::is_signed && Q::min > -128) bad.push_back(Q::min - 1);
    if (!Q::is_signed && Q::bits < 8) bad.push_back(255);
  }
  std::mt19937 rng(12);
  for (mk::isa path : mixq::test::supported_paths())
    for (int v : bad)
      for (auto [r, c] :
           {std::pair<std::size_t, std::size_t>{0, 0}, {1, 63}, {1, 64}, {2, 99}, {2, 64}}) {
        const std::string path_name = mk::isa_name(path);
        CAPTURE(path_name);
        CAPTURE(v);
        const std::size_t rows = 3, k = 100;
        auto values = mixq::test::random_values<Q>(rows * k, rng);
        values[r * k + c] = static_cast<S>(v);
        if (c + 1 < k) values[r * k + c + 1] = static_cast<S>(v);  // only the first is named
        const std::string want = "value " + std::to_string(v) + " at (" + std::to_string(r) + ", " +
                                 std::to_string(c) + ")";
        CHECK_THROWS_WITH_AS(mk::pack_bitplanes<Q>(std::span<const S>(values), rows, k, {1, path}),
                             doctest::Contains(want.c_str()), mixq::value_error);
      }
  std::vector<S> values(12, static_cast<S>(Q::max));
  CHECK_THROWS_AS(mk::pack_bitplanes<Q>(std::span<const S>(values), 5, 3), mixq::shape_error);
  CHECK_THROWS_AS(mk::pack_bitplanes<Q>(std::span<const S>(values), 2, 7), mixq::shape_error);
}

TEST_CASE("pack_bitplanes reuses an output of the right shape and reshapes another") {
  using Q = mixq::quint<3>;
  std::mt19937 rng(13);
  const auto a = mixq::test::random_values<Q>(4 * 70, rng);
  const auto b = mixq::test::random_values<Q>(2 * 9, rng);
  mixq::bitplane_matrix<Q> out(4, 70);
  const std::uint64_t* storage = out.data();
  mk::pack_bitplanes<Q>(std::span<const std::uint8_t>(a), 4, 70, out);
  CHECK(out.data() == storage);
  CHECK(same_bits(out, mixq::bitplane_matrix<Q>::pack(a, 4, 70)));
  mk::pack_bitplanes<Q>(std::span<const std::uint8_t>(b), 2, 9, out);
  CHECK(out.rows() == 2);
  CHECK(out.cols() == 9);
  CHECK(same_bits(out, mixq::bitplane_matrix<Q>::pack(b, 2, 9)));
}

TEST_CASE("pack_bitplanes then bitserial_gemm equals the integer reference") {
  using AT = mixq::quint<2>;
  using WT = mixq::qint<3>;
  std::mt19937 rng(14);
  const std::size_t M = 9, N = 17, K = 333;
  const auto a = mixq::test::random_values<AT>(M * K, rng);
  const auto w = mixq::test::random_values<WT>(N * K, rng);
  std::vector<std::int32_t> C(M * N);
  mk::bitserial_gemm(mk::pack_bitplanes<AT>(std::span<const std::uint8_t>(a), M, K),
                     mk::pack_bitplanes<WT>(std::span<const std::int8_t>(w), N, K),
                     std::span<std::int32_t>(C));
  int bad = 0;
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t n = 0; n < N; ++n) {
      std::int32_t s = 0;
      for (std::size_t k = 0; k < K; ++k) s += int(a[m * K + k]) * int(w[n * K + k]);
      bad += C[m * N + n] != s;
    }
  CHECK(bad == 0);
}
