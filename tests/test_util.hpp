// Shared test helpers: the list of every qtype, seeded random values of a qtype, random float
// tensors, every bitwidth, the instruction-set paths this CPU runs.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/isa.hpp"

#define MIXQ_ALL_QTYPES                                                                           \
  mixq::quint<1>, mixq::quint<2>, mixq::quint<3>, mixq::quint<4>, mixq::quint<5>, mixq::quint<6>, \
      mixq::quint<7>, mixq::quint<8>, mixq::qint<1>, mixq::qint<2>, mixq::qint<3>, mixq::qint<4>, \
      mixq::qint<5>, mixq::qint<6>, mixq::qint<7>, mixq::qint<8>

namespace mixq::test {

/// n uniformly random values of Q (binary: -1 or +1).
template <quantized_type Q>
std::vector<typename Q::storage_type> random_values(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> code(0, Q::levels - 1);
  std::vector<typename Q::storage_type> v(n);
  for (auto& x : v) x = static_cast<typename Q::storage_type>(Q::decode(std::uint8_t(code(rng))));
  return v;
}

/// A float tensor of the given shape, uniform in [lo, hi).
inline tensor<float> random_tensor(shape_t s, std::mt19937& rng, float lo = -1.0f,
                                   float hi = 1.0f) {
  tensor<float> t(std::move(s));
  std::uniform_real_distribution<float> u(lo, hi);
  for (auto& v : t) v = u(rng);
  return t;
}

/// Every bitwidth: unsigned then signed, 1..8 bits.
inline std::vector<bitwidth> all_bitwidths() {
  std::vector<bitwidth> v;
  for (bool s : {false, true})
    for (int b = 1; b <= 8; ++b) v.push_back({b, s});
  return v;
}

/// The instruction-set paths this CPU can run (the portable one always).
inline std::vector<kernels::isa> supported_paths() {
  std::vector<kernels::isa> v;
  for (kernels::isa i : kernels::all_isas)
    if (kernels::isa_supported(i)) v.push_back(i);
  return v;
}

}  // namespace mixq::test
