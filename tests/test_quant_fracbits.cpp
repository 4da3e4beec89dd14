// FracBits: at integral lambda the plain quantizer, the lambda gradient against central finite
// differences away from integers (per layer and kernel-wise, DoReFa and PACT bases), the input
// and alpha gradients as the f-weighted mix of the branch gradients, clamping with per-layer
// minimums, and bad ranges / shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mixq/autodiff.hpp"
#include "mixq/quant.hpp"
#include "test_util.hpp"

using namespace mixq;
using namespace mixq::autodiff;
using namespace mixq::quant;

using mixq::test::random_tensor;

namespace {

/// sum r * y in double.
double weighted(const var& y, const ftensor& r) {
  double s = 0;
  for (std::size_t i = 0; i < r.size(); ++i) s += double(r[i]) * y.value()[i];
  return s;
}

}  // namespace

TEST_CASE("fracbits: integral lambda equals the plain quantizer") {
  std::mt19937 rng(1);
  const ftensor w = random_tensor({4, 3, 3, 3}, rng, -2, 2);
  const ftensor x = random_tensor({2, 4, 5, 5}, rng, -1, 5);
  const var alpha = var::parameter(ftensor({1}, 3.0f));
  for (int b = 1; b <= 8; ++b) {
    CAPTURE(b);
    const var lam = var::parameter(ftensor({1}, float(b)));
    const var yw = fracbits_quantize(constant(w), lam, {}, dorefa_weight_quantizer{});
    const var rw = dorefa_weights(constant(w), b);
    for (std::size_t i = 0; i < w.size(); ++i) CHECK(yw.value()[i] == rw.value()[i]);
    for (const bool two : {false, true}) {
      const pact_quantizer pq{alpha, {two, pact_alpha_gradient::residual}};
      const var ya = fracbits_quantize(constant(x), lam, {}, pq);
      const var ra = pact(constant(x), alpha, b, pq.options);
      for (std::size_t i = 0; i < x.size(); ++i) CHECK(ya.value()[i] == ra.value()[i]);
    }
    // Kernel-wise lambdas at integers: each channel at its own bits.
    const std::vector<int> bits{b, std::max(1, b - 1), std::min(8, b + 2), 1};
    const var lk = var::parameter(
        ftensor({4}, {float(bits[0]), float(bits[1]), float(bits[2]), float(bits[3])}));
    const var yk = fracbits_quantize(constant(w), lk, {}, dorefa_weight_quantizer{});
    const var rk = dorefa_weights(constant(w), std::span<const int>(bits));
    for (std::size_t i = 0; i < w.size(); ++i) CHECK(yk.value()[i] == rk.value()[i]);
  }
}

TEST_CASE("fracbits: lambda gradient equals the finite difference away from integers") {
  std::mt19937 rng(2);
  const ftensor w = random_tensor({5, 12}, rng, -2, 2);
  const ftensor x = random_tensor({3, 40}, rng, -3, 5);
  const ftensor alpha0({1}, 3.0f);
  const float h = 1e-2f;
  for (float l0 : {1.3f, 2.5f, 3.71f, 5.2f, 7.6f}) {
    CAPTURE(l0);
    // Weights, per layer and kernel-wise.
    for (std::size_t channels : {std::size_t(1), std::size_t(5)}) {
      ftensor lam0({channels});
      for (std::size_t c = 0; c < channels; ++c)
        lam0[c] = l0 - 0.03f * float(c);  // stays 0.05 away from integers
      const var lam = var::parameter(lam0);
      const var y = fracbits_quantize(constant(w), lam, {}, dorefa_weight_quantizer{});
      const ftensor r = random_tensor(y.shape(), rng);
      backward(y, &r);
      for (std::size_t c = 0; c < channels; ++c) {
        auto at = [&](float d) {
          ftensor l = lam0;
          l[c] += d;
          return weighted(
              fracbits_quantize(constant(w), constant(l), {}, dorefa_weight_quantizer{}), r);
        };
        const double fd = (at(h) - at(-h)) / (2.0 * h);
        CHECK(lam.grad()[c] == doctest::Approx(fd).epsilon(2e-3));
      }
    }
    // Activations with PACT, and the alpha gradient = (1 - f) g_floor + f g_ceil.
    for (const bool two : {false, true}) {
      const var lam = var::parameter(ftensor({1}, l0));
      const var alpha = var::parameter(alpha0);
      const pact_quantizer pq{alpha, {two, pact_alpha_gradient::residual}};
      const var xv = var::parameter(x);
      const var y = fracbits_quantize(xv, lam, {}, pq);
      const ftensor r = random_tensor(y.shape(), rng);
      backward(y, &r);
      auto at = [&](float d) {
        return weighted(fracbits_quantize(constant(x), constant(ftensor({1}, l0 + d)), {}, pq), r);
      };
      CHECK(lam.grad()[0] == doctest::Approx((at(h) - at(-h)) / (2.0 * h)).epsilon(2e-3));
      const float f = l0 - std::floor(l0);
      const int lo = int(std::floor(l0));
      auto branch = [&](int b) {
        const var a = var::parameter(alpha0);
        const var xb = var::parameter(x);
        backward(pact(xb, a, b, pq.options), &r);
        return std::pair{a.grad()[0], xb.grad()};
      };
      const auto [ga_lo, gx_lo] = branch(lo);
      const auto [ga_hi, gx_hi] = branch(lo + 1);
      CHECK(alpha.grad()[0] == doctest::Approx((1 - f) * ga_lo + f * ga_hi).epsilon(1e-4));
      for (std::size_t i = 0; i < x.size(); ++i)
        CHECK(xv.grad()[i] == doctest::Approx((1 - f) * gx_lo[i] + f * gx_hi[i]).epsilon(1e-5));
    }
  }
}

TEST_CASE("fracbits: input gradient through DoReFa is the plain straight-through gradient") {
  std::mt19937 rng(3);
  const ftensor w = random_tensor({3, 10}, rng, -2, 2);
  const var wv = var::parameter(w), ref = var::parameter(w);
  const var y =
      fracbits_quantize(wv, var::parameter(ftensor({1}, 2.4f)), {}, dorefa_weight_quantizer{});
  const ftensor r = random_tensor(y.shape(), rng);
  backward(y, &r);
  backward(dorefa_weights(ref, 3), &r);  // DoReFa's backward does not depend on the bits
  for (std::size_t i = 0; i < w.size(); ++i)
    CHECK(wv.grad()[i] == doctest::Approx(ref.grad()[i]).epsilon(1e-5));
}

TEST_CASE("fracbits: clamping to the range and per-layer minimums") {
  std::mt19937 rng(4);
  const ftensor w = random_tensor({2, 16}, rng, -2, 2);
  const bit_range range{2.0f, 6.0f};
  for (float outside : {0.5f, 1.9f, 6.5f, 11.0f}) {
    CAPTURE(outside);
    const var lam = var::parameter(ftensor({1}, outside));
    const var y = fracbits_quantize(constant(w), lam, range, dorefa_weight_quantizer{});
    const int b = outside < 2.0f ? 2 : 6;
    const var ref = dorefa_weights(constant(w), b);
    for (std::size_t i = 0; i < w.size(); ++i) CHECK(y.value()[i] == ref.value()[i]);
    const ftensor r = random_tensor(y.shape(), rng);
    backward(y, &r);
    CHECK(lam.grad()[0] == 0.0f);  // frozen outside the range
  }
  // The first layer's minimum of 8: a 3.5 init is charged and quantized at 8 bits.
  const bit_range first = bit_range{}.with_minimum(8.0f);
  CHECK(first.min_bits == 8.0f);
  const var y = fracbits_quantize(constant(w), constant(ftensor({1}, 3.5f)), first,
                                  dorefa_weight_quantizer{});
  const var ref = dorefa_weights(constant(w), 8);
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(y.value()[i] == ref.value()[i]);
  CHECK(clamp_bits(constant(ftensor({1}, 3.5f)), first).value()[0] == 8.0f);
}

TEST_CASE("fractional_bits: parameter, clamped value, rounding, assignment") {
  fractional_bits fb(3.5f, 4, {1.0f, 8.0f});
  CHECK(fb.lambda().requires_grad());
  CHECK(fb.channels() == 4);
  const std::vector<float> v{0.2f, 2.49f, 2.51f, 9.0f};
  fb.assign(v);
  CHECK(fb.clamped().value()[0] == 1.0f);
  CHECK(fb.clamped().value()[3] == 8.0f);
  CHECK(fb.rounded() == std::vector<int>{1, 2, 3, 8});
  CHECK(fb.rounded(-0.5f) == std::vector<int>{1, 2, 2, 8});
  std::mt19937 rng(5);
  const ftensor w = random_tensor({4, 9}, rng);
  const var y = fb(constant(w), dorefa_weight_quantizer{});
  CHECK(y.shape() == w.shape());
  CHECK_THROWS_AS(fb.assign(std::vector<float>{1.0f}), shape_error);
}

TEST_CASE("fracbits: typed errors") {
  CHECK_THROWS_AS((bit_range{0.0f, 8.0f}.validate()), bits_error);
  CHECK_THROWS_AS((bit_range{1.0f, 9.0f}.validate()), bits_error);
  CHECK_THROWS_AS((bit_range{5.0f, 4.0f}.validate()), bits_error);
  CHECK_THROWS_AS(bit_range{}.with_minimum(9.0f), bits_error);
  CHECK_THROWS_AS(bit_range{}.with_minimum(0.0f), bits_error);
  CHECK_THROWS_AS(fractional_bits(9.0f), bits_error);
  CHECK_THROWS_AS(fractional_bits(3.5f, 1, {4.0f, 8.0f}), bits_error);
  CHECK_THROWS_AS(fractional_bits(3.5f, 0), shape_error);
  const var w = constant(ftensor({3, 4}, 0.5f));
  CHECK_THROWS_AS(fracbits_quantize(w, constant(ftensor({2}, 3.0f)), {}, dorefa_weight_quantizer{}),
                  shape_error);
  CHECK_THROWS_AS(fracbits_quantize(w, constant(ftensor({1}, NAN)), {}, dorefa_weight_quantizer{}),
                  value_error);
  CHECK_THROWS_AS(
      fracbits_quantize(w, constant(ftensor({1}, 3.0f)), {0.5f, 8.0f}, dorefa_weight_quantizer{}),
      bits_error);
  // PACT takes one bit-width per layer.
  const pact_quantizer pq{var::parameter(ftensor({1}, 2.0f)), {}};
  CHECK_THROWS_AS(fracbits_quantize(w, constant(ftensor({3}, 3.0f)), {}, pq), shape_error);
}
