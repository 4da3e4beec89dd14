// quant_params, quantize / dequantize and the choice of scale and zero point.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "mixq/core/quant_params.hpp"
#include "test_util.hpp"

using namespace mixq;

TEST_CASE_TEMPLATE("quantize saturates, and dequantize(quantize(x)) is within half a step", Q,
                   MIXQ_ALL_QTYPES) {
  CAPTURE(bitwidth_of<Q>().name());
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-3.0f, 5.0f);
  std::vector<float> x(2000);
  for (auto& v : x) v = u(rng);
  for (quant_scheme scheme : {quant_scheme::symmetric, quant_scheme::asymmetric}) {
    CAPTURE(int(scheme));
    // Choose the range from the data clipped to [-2, 4], so values outside saturate.
    const quant_params p = choose_params<Q>(-2.0f, 4.0f, scheme);
    const auto q = quantize<Q>(x, p);
    const auto back = dequantize<Q>(q, p);
    const float s = p.scale[0];
    const float lo = s * float(Q::min - p.zero_point[0]);
    const float hi = s * float(Q::max - p.zero_point[0]);
    for (std::size_t i = 0; i < x.size(); ++i) {
      REQUIRE(Q::contains(q[i]));
      if constexpr (Q::is_binary) {
        CHECK(back[i] == (x[i] >= 0 ? s : -s));
      } else if (x[i] >= lo && x[i] <= hi) {
        CHECK(std::fabs(back[i] - x[i]) <= 0.5f * s * (1 + 1e-5f));
      } else {
        CHECK(q[i] == (x[i] < lo ? Q::min : Q::max));  // saturation
      }
    }
  }
}

TEST_CASE("quantize rounds half to even") {
  const auto p = quant_params::per_tensor(0.5f, 0);
  const std::vector<float> x{0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 0.2499f, 0.2501f};
  const auto q = quantize<qint<8>>(x, p);
  // x / 0.5 = 0.5, 1.5, 2.5, -0.5, -1.5 -> 0, 2, 2, -0, -2
  CHECK(q == std::vector<std::int8_t>{0, 2, 2, 0, -2, 0, 1});
  const auto pz = quant_params::per_tensor(1.0f, 3);
  const auto qz = quantize<quint<4>>(std::vector<float>{0.5f, 1.5f, -2.5f, 100.f, -100.f}, pz);
  CHECK(qz == std::vector<std::uint8_t>{3, 5, 1, 15, 0});
}

TEST_CASE("choose_params: zero is exact and the range maps onto the type") {
  // Symmetric signed: scale = max|x| / max.
  auto p = choose_params<qint<4>>(-1.4f, 0.7f, quant_scheme::symmetric);
  CHECK(p.scale[0] == doctest::Approx(1.4 / 7));
  CHECK(p.zero_point[0] == 0);
  // Symmetric unsigned (post-ReLU activations).
  p = choose_params<quint<3>>(0.0f, 3.5f, quant_scheme::symmetric);
  CHECK(p.scale[0] == doctest::Approx(0.5));
  // Asymmetric: [lo, hi] onto [0, 15], zero point so that 0 is a code.
  p = choose_params<quint<4>>(-1.0f, 2.0f, quant_scheme::asymmetric);
  CHECK(p.scale[0] == doctest::Approx(0.2));
  CHECK(p.zero_point[0] == 5);
  CHECK(dequantize<quint<4>>(quantize<quint<4>>(std::vector<float>{0.0f}, p), p)[0] == 0.0f);
  // Asymmetric signed.
  p = choose_params<qint<8>>(-1.0f, 3.0f, quant_scheme::asymmetric);
  CHECK(p.scale[0] == doctest::Approx(4.0 / 255));
  CHECK(p.zero_point[0] == std::lround(-128 + 1.0 / (4.0 / 255)));
  // A degenerate range still gives a usable scale.
  p = choose_params<qint<8>>(0.0f, 0.0f, quant_scheme::symmetric);
  CHECK(p.scale[0] == 1.0f);
  CHECK_THROWS_AS(choose_params<qint<8>>(1.0f, -1.0f, quant_scheme::symmetric), value_error);
  CHECK_THROWS_AS(
      choose_params<qint<8>>(0.0f, std::numeric_limits<float>::infinity(), quant_scheme::symmetric),
      value_error);
}

TEST_CASE("per-channel params quantize each channel with its own scale") {
  const std::vector<float> w{0.1f, -0.2f, 0.3f, 10.f, -20.f, 30.f};
  const auto p = choose_params_per_channel<qint<8>>(w, 2, quant_scheme::symmetric);
  REQUIRE(p.channels() == 2);
  CHECK(p.is_per_channel());
  CHECK(p.scale[0] == doctest::Approx(0.3 / 127));
  CHECK(p.scale[1] == doctest::Approx(30.0 / 127));
  const auto q = quantize<qint<8>>(w, p);
  CHECK(q[2] == 127);
  CHECK(q[5] == 127);
  CHECK(q[0] == 42);  // 0.1 / (0.3/127) = 42.33
  const auto back = dequantize<qint<8>>(q, p);
  for (std::size_t i = 0; i < w.size(); ++i)
    CHECK(std::fabs(back[i] - w[i]) <= 0.5f * p.scale[i / 3] * 1.0001f);
  CHECK_THROWS_AS(choose_params_per_channel<qint<8>>(w, 4, quant_scheme::symmetric), shape_error);
  CHECK_THROWS_AS(quantize<qint<8>>(std::vector<float>(5), p), shape_error);
}

TEST_CASE("bad quant params raise value_error naming the problem") {
  const std::vector<float> x{1.0f};
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::quiet_NaN(),
                    std::numeric_limits<float>::infinity()}) {
    CAPTURE(bad);
    try {
      quantize<qint<4>>(x, quant_params::per_tensor(bad, 0));
      FAIL("expected value_error");
    } catch (const value_error& e) {
      CHECK(std::string(e.what()).find("scale") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(quantize<quint<4>>(x, quant_params::per_tensor(1.0f, 16)), value_error);
  CHECK_THROWS_AS(quantize<qint<4>>(x, quant_params::per_tensor(1.0f, -9)), value_error);
  CHECK_THROWS_AS(quantize<qbinary>(x, quant_params::per_tensor(1.0f, 1)), value_error);
  CHECK_THROWS_AS(quant_params::per_channel({1.0f, 2.0f}, {0}), value_error);
  CHECK_THROWS_AS(quantize<qint<4>>(std::vector<float>{std::numeric_limits<float>::quiet_NaN()},
                                    quant_params::per_tensor(1.0f)),
                  value_error);
  std::vector<std::int8_t> out(3);
  CHECK_THROWS_AS(quantize<qint<4>>(x, quant_params::per_tensor(1.0f), std::span(out)),
                  shape_error);
}
