// packed_tensor and bitplane_matrix: exact sizes and exact round-trips for every qtype.
#include <doctest/doctest.h>

#include <bit>
#include <random>

#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/packed_tensor.hpp"
#include "test_util.hpp"

using namespace mixq;

static_assert(packed_bytes(0, 3) == 0 && packed_bytes(1, 3) == 1 && packed_bytes(8, 3) == 3);
static_assert(packed_bytes(3, 3) == 2 && packed_bytes(5, 8) == 5 && packed_bytes(9, 1) == 2);

TEST_CASE_TEMPLATE("packed_tensor is exactly ceil(n*B/8) bytes and round-trips", Q,
                   MIXQ_ALL_QTYPES) {
  CAPTURE(bitwidth_of<Q>().name());
  std::mt19937 rng(3);
  for (std::size_t n : {1u, 2u, 7u, 8u, 9u, 63u, 64u, 65u, 511u, 512u, 513u, 1000u}) {
    CAPTURE(n);
    const auto v = test::random_values<Q>(n, rng);
    const packed_tensor<Q> p({n}, v);
    CHECK(p.bytes().size() == (n * Q::bits + 7) / 8);
    CHECK(p.serialized_bytes() == packed_tensor<Q>::header_bytes + (n * Q::bits + 7) / 8);
    const auto back = p.unpack();
    for (std::size_t i = 0; i < n; ++i) REQUIRE(back[i] == v[i]);
    const auto bytes = p.serialize();
    CHECK(bytes.size() == p.serialized_bytes());
    CHECK(packed_tensor<Q>::deserialize(bytes) == p);
  }
  // Extremes: all min, all max.
  for (int fill : {Q::min, Q::max}) {
    std::vector<typename Q::storage_type> v(77, static_cast<typename Q::storage_type>(fill));
    const packed_tensor<Q> p({7, 11}, v);
    CHECK(p.shape() == shape_t{7, 11});
    CHECK(p.unpack().span()[76] == fill);
  }
}

TEST_CASE("packed_tensor rejects bad values, shapes and corrupt bytes") {
  CHECK_THROWS_AS((packed_tensor<quint<3>>({2}, std::vector<std::uint8_t>{1, 8})), value_error);
  CHECK_THROWS_AS((packed_tensor<qint<3>>({2}, std::vector<std::int8_t>{-5, 0})), value_error);
  CHECK_THROWS_AS((packed_tensor<qbinary>({1}, std::vector<std::int8_t>{0})), value_error);
  CHECK_THROWS_AS((packed_tensor<quint<3>>({3}, std::vector<std::uint8_t>{1, 2})), shape_error);
  CHECK_THROWS_AS((packed_tensor<quint<3>>({1, 1, 1, 1, 1, 1, 1}, std::vector<std::uint8_t>{1})),
                  shape_error);

  std::mt19937 rng(5);
  const packed_tensor<qint<5>> p({3, 7}, test::random_values<qint<5>>(21, rng));
  const auto good = p.serialize();
  // Every truncation is a format_error.
  for (std::size_t len = 0; len < good.size(); ++len)
    CHECK_THROWS_AS(packed_tensor<qint<5>>::deserialize(std::span(good).first(len)), format_error);
  auto bad = good;
  bad[0] = 'X';
  CHECK_THROWS_AS(packed_tensor<qint<5>>::deserialize(bad), format_error);
  CHECK_THROWS_AS(packed_tensor<quint<5>>::deserialize(good), format_error);  // wrong type
  bad = good;
  bad[6] = 9;  // rank
  CHECK_THROWS_AS(packed_tensor<qint<5>>::deserialize(bad), format_error);
  bad = good;
  bad[8 + 7] = 0x40;  // a huge first dimension: rejected before allocating
  CHECK_THROWS_AS(packed_tensor<qint<5>>::deserialize(bad), format_error);
  bad = good;
  bad.push_back(0);  // trailing garbage
  CHECK_THROWS_AS(packed_tensor<qint<5>>::deserialize(bad), format_error);
}

TEST_CASE_TEMPLATE("bitplane_matrix round-trips, pads with zero bits and sums rows", Q,
                   MIXQ_ALL_QTYPES) {
  CAPTURE(bitwidth_of<Q>().name());
  std::mt19937 rng(11);
  for (std::size_t rows : {1u, 7u}) {
    for (std::size_t k : {1u, 63u, 64u, 65u, 511u, 512u, 513u}) {
      CAPTURE(rows);
      CAPTURE(k);
      const auto v = test::random_values<Q>(rows * k, rng);
      const auto m = bitplane_matrix<Q>::pack(v, rows, k);
      CHECK(m.words_per_plane() % 8 == 0);
      CHECK(m.words_per_plane() * 64 >= k);
      CHECK(m.words_per_plane() * 64 < k + 512);
      const auto back = m.unpack();
      for (std::size_t i = 0; i < v.size(); ++i) REQUIRE(back[i] == v[i]);
      const auto sums = m.row_sums();
      for (std::size_t r = 0; r < rows; ++r) {
        std::int32_t s = 0;
        for (std::size_t c = 0; c < k; ++c) s += v[r * k + c];
        CHECK(sums[r] == s);
        for (int p = 0; p < Q::bits; ++p) {
          const auto plane = m.plane(r, p);
          CHECK(reinterpret_cast<std::uintptr_t>(plane.data()) % 64 == 0);
          // Bits past K are zero.
          for (std::size_t c = k; c < plane.size() * 64; ++c)
            REQUIRE(((plane[c / 64] >> (c % 64)) & 1u) == 0);
          // Plane p holds bit p of each code.
          for (std::size_t c = 0; c < k; ++c)
            REQUIRE(((plane[c / 64] >> (c % 64)) & 1u) == ((Q::encode(v[r * k + c]) >> p) & 1u));
        }
      }
    }
  }
  // Extreme codes.
  for (int fill : {Q::min, Q::max}) {
    std::vector<typename Q::storage_type> v(3 * 70, static_cast<typename Q::storage_type>(fill));
    const auto m = bitplane_matrix<Q>::pack(v, 3, 70);
    CHECK(m.row_sums() == std::vector<std::int32_t>(3, fill * 70));
  }
}

TEST_CASE("bitplane_matrix rejects values outside the type and mismatched shapes") {
  CHECK_THROWS_AS(bitplane_matrix<quint<2>>::pack(std::vector<std::uint8_t>{4}, 1, 1), value_error);
  CHECK_THROWS_AS(bitplane_matrix<quint<2>>::pack(std::vector<std::uint8_t>{1, 2, 3}, 2, 2),
                  shape_error);
  bitplane_matrix<qint<4>> m(2, 5);
  CHECK_THROWS_AS(m.set_row(2, std::vector<std::int8_t>(5)), shape_error);
  CHECK_THROWS_AS(m.set_row(0, std::vector<std::int8_t>(4)), shape_error);
  CHECK_THROWS_AS(bitplane_matrix<qint<4>>::pack(tensor<std::int8_t>({2, 2, 2})), shape_error);
}
