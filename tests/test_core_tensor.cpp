// tensor<T>: shapes, checked access, reshape, alignment.
#include <doctest/doctest.h>

#include <cstdint>

#include "mixq/core/tensor.hpp"

using namespace mixq;

TEST_CASE("tensor stores row-major values under a checked shape") {
  tensor<float> t({2, 3, 4}, 0.5f);
  CHECK(t.rank() == 3);
  CHECK(t.size() == 24);
  CHECK(t.dim(2) == 4);
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % simd_alignment == 0);
  t.at(1, 2, 3) = 7.0f;
  CHECK(t[23] == 7.0f);
  CHECK(t.offset(1, 0, 2) == 14);
  CHECK_THROWS_AS(t.at(2, 0, 0), shape_error);
  CHECK_THROWS_AS(t.at(0, 0), shape_error);
  CHECK_THROWS_AS(t.dim(3), shape_error);

  auto r = t.reshaped({6, 4});
  CHECK(r.shape() == shape_t{6, 4});
  CHECK(r[23] == 7.0f);
  CHECK_THROWS_AS(t.reshape({5, 5}), shape_error);
  CHECK(t.shape() == shape_t{2, 3, 4});  // a failed reshape changes nothing
}

TEST_CASE("tensor construction from values checks the count") {
  tensor<int> t({2, 2}, {1, 2, 3, 4});
  CHECK(t.at(1, 0) == 3);
  CHECK_THROWS_AS((tensor<int>({2, 2}, {1, 2, 3})), shape_error);
  try {
    tensor<int>({3, 3}, {1});
  } catch (const shape_error& e) {
    CHECK(std::string(e.what()).find("[3, 3]") != std::string::npos);
  }
  // Element counts that overflow size_t are an error, not a huge allocation.
  CHECK_THROWS_AS((tensor<char>({std::size_t(1) << 40, std::size_t(1) << 40})), shape_error);
  tensor<int> empty({0, 5});
  CHECK(empty.empty());
  CHECK(tensor<int>({2, 2}, {1, 2, 3, 4}) == t);
  const std::size_t expected[] = {2, 2};
  CHECK_NOTHROW(expect_shape(t, expected, "t"));
  const std::size_t wrong[] = {4};
  CHECK_THROWS_AS(expect_shape(t, wrong, "t"), shape_error);
}
