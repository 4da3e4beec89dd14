// Shared test helpers: the list of every qtype, seeded random values of a qtype.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "mixq/core/qtype.hpp"

#define MIXQ_ALL_QTYPES                                                                     \
  mixq::quint<1>, mixq::quint<2>, mixq::quint<3>, mixq::quint<4>, mixq::quint<5>,           \
      mixq::quint<6>, mixq::quint<7>, mixq::quint<8>, mixq::qint<1>, mixq::qint<2>,         \
      mixq::qint<3>, mixq::qint<4>, mixq::qint<5>, mixq::qint<6>, mixq::qint<7>, mixq::qint<8>

namespace mixq::test {

/// n uniformly random values of Q (binary: -1 or +1).
template <quantized_type Q>
std::vector<typename Q::storage_type> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> code(0, Q::levels - 1);
  std::vector<typename Q::storage_type> v(n);
  for (auto& x : v) x = static_cast<typename Q::storage_type>(Q::decode(std::uint8_t(code(rng))));
  return v;
}

}  // namespace mixq::test
