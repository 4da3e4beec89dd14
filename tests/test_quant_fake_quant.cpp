// Fake-quant ops of quant/: forward values against plain formulas and core's quantize, the
// codes' dequantised values against the forward (bit-identical), every straight-through
// gradient against its formula or against the same expression composed from autodiff
// primitives, and the typed errors for bad bits, scales and shapes.
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

/// Runs f on fresh trainable leaves, back-propagates the seed r (random, fixed), returns the
/// output and every input's gradient.
struct grad_result {
  ftensor y;
  std::vector<ftensor> grads;
};
template <class F>
grad_result run_with_grads(F f, const std::vector<ftensor>& inputs, std::uint32_t seed = 7) {
  std::vector<var> xs;
  for (const auto& t : inputs) xs.push_back(var::parameter(t));
  const var y = f(xs);
  std::mt19937 rng(seed);
  const ftensor r = random_tensor(y.shape(), rng);
  backward(y, &r);
  grad_result out{y.value(), {}};
  for (auto& x : xs) out.grads.push_back(x.grad());
  return out;
}

void check_close(const ftensor& a, const ftensor& b, double tol, const char* what) {
  REQUIRE(a.shape() == b.shape());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(what << " at " << i << ": " << a[i] << " vs " << b[i]);
    CHECK(std::fabs(double(a[i]) - b[i]) <= tol * std::max(1.0, std::fabs(double(b[i]))));
  }
}

void check_equal(const ftensor& a, const ftensor& b, const char* what) {
  REQUIRE(a.shape() == b.shape());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(what << " at " << i);
    CHECK(a[i] == b[i]);
  }
}

/// The seed backward() used in run_with_grads for an output of shape s.
ftensor seed_for(const shape_t& s, std::uint32_t seed = 7) {
  std::mt19937 rng(seed);
  return random_tensor(s, rng);
}

}  // namespace

TEST_CASE("uniform: codes match core quantize for every type, forward = dequantised codes") {
  std::mt19937 rng(1);
  const ftensor x = random_tensor({4, 3, 5}, rng, -2.0f, 3.0f);
  for (const bool sgn : {false, true})
    for (int bits = 1; bits <= 8; ++bits)
      for (const auto scheme : {quant_scheme::symmetric, quant_scheme::asymmetric})
        for (const auto g : {granularity::per_tensor, granularity::per_channel}) {
          const bitwidth type{bits, sgn};
          CAPTURE(type.name());
          const quant_params p = choose_uniform_params(x, type, scheme, g);
          CHECK(p.channels() == (g == granularity::per_channel ? 4u : 1u));
          const code_tensor c = uniform_codes(x, p, type);
          c.validate();
          dispatch(
              [&](auto tag) {
                using Q = typename decltype(tag)::type;
                const auto ref = quantize<Q>(x.span(), p);
                for (std::size_t i = 0; i < x.size(); ++i) CHECK(c.codes[i] == int(ref[i]));
                const auto deq = dequantize<Q>(std::span<const typename Q::storage_type>(ref), p);
                const ftensor d = c.dequantize();
                for (std::size_t i = 0; i < x.size(); ++i) CHECK(d[i] == deq[i]);
              },
              type);
          const var y = uniform_quantize(constant(x), type, scheme, g);
          check_equal(y.value(), c.dequantize(), "forward vs codes");
          const quant_params back = c.to_quant_params();
          CHECK(back.scale == p.scale);
          CHECK(back.zero_point == p.zero_point);
        }
}

TEST_CASE("uniform: straight-through gradient passes inside the range only") {
  std::mt19937 rng(2);
  const ftensor x = random_tensor({2, 50}, rng, -3.0f, 3.0f);
  // Fixed per-channel params that clip part of the values.
  const quant_params p = quant_params::per_channel({0.1f, 0.05f}, {3, -2});
  for (const bitwidth type : {bitwidth{4, true}, bitwidth{3, false}, bitwidth{1, true}}) {
    const quant_params pp = type.is_binary() ? quant_params::per_channel({0.5f, 2.0f}, {0, 0}) : p;
    if (!type.is_signed && !type.is_binary()) continue;
    auto r = run_with_grads([&](const auto& v) { return fake_quantize(v[0], pp, type); }, {x});
    const ftensor seed = seed_for(r.y.shape());
    const float lo = type.is_binary() ? -1.0f : float(-(1 << (type.bits - 1)));
    const float hi = type.is_binary() ? 1.0f : float((1 << (type.bits - 1)) - 1);
    int inside = 0, outside = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      const std::size_t c = i / 50;
      const float u = x[i] / pp.scale[c] + float(pp.zero_point[c]);
      const bool in = u >= lo && u <= hi;
      (in ? inside : outside)++;
      CHECK(r.grads[0][i] == (in ? seed[i] : 0.0f));
    }
    CHECK(inside > 0);
    CHECK(outside > 0);
  }
  // Unsigned: zero point 0 clips every negative value.
  const quant_params pu = quant_params::per_tensor(0.25f, 0);
  auto r = run_with_grads(
      [&](const auto& v) {
        return fake_quantize(v[0], pu, bitwidth{3, false});
      },
      {x});
  const ftensor seed = seed_for(r.y.shape());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float u = x[i] / 0.25f;
    CHECK(r.grads[0][i] == (u >= 0.0f && u <= 7.0f ? seed[i] : 0.0f));
  }
}

TEST_CASE("dorefa: forward on the {-1..1} grid, codes, gradient = composed reference") {
  std::mt19937 rng(3);
  for (int bits = 1; bits <= 8; ++bits) {
    CAPTURE(bits);
    const ftensor w = random_tensor({6, 2, 3, 3}, rng, -1.5f, 1.5f);
    // Reference forward: 2 round(L u) / L - 1 with u = (tanh(w) / max|tanh| + 1) / 2.
    float m = 0;
    for (float v : w) m = std::max(m, std::fabs(std::tanh(v)));
    const float L = float((1 << bits) - 1);
    auto r = run_with_grads([&](const auto& v) { return dorefa_weights(v[0], bits); }, {w});
    for (std::size_t i = 0; i < w.size(); ++i) {
      const float u = (std::tanh(w[i]) / m + 1.0f) * 0.5f;
      const float ref = 2.0f * std::nearbyint(L * u) / L - 1.0f;
      CHECK(std::fabs(r.y[i] - ref) <= 1e-6f);
    }
    const code_tensor c = dorefa_codes(w, bits);
    c.validate();
    check_equal(r.y, c.dequantize(), "forward vs codes");
    if (bits == 1) {
      CHECK(c.type == bitwidth{1, true});
      const quant_params p = c.to_quant_params();
      std::vector<std::int8_t> q(c.codes.begin(), c.codes.end());
      const auto d = dequantize<qint<1>>(std::span<const std::int8_t>(q), p);
      for (std::size_t i = 0; i < w.size(); ++i) CHECK(d[i] == r.y[i]);
    } else {
      CHECK(c.type == bitwidth{bits, false});
      CHECK(c.zero_point[0] == 0.5f * L);
      CHECK_THROWS_AS(c.to_quant_params(), value_error);
    }
    // Gradient: the same expression from primitives (tanh, abs, max, round_ste).
    auto composed = run_with_grads(
        [&](const auto& v) {
          const var t = autodiff::tanh(v[0]);
          const var u = (t / autodiff::max(autodiff::abs(t)) + 1.0f) * 0.5f;
          return round_ste(u * L) * (2.0f / L) - 1.0f;
        },
        {w});
    check_close(r.grads[0], composed.grads[0], 1e-4, "dorefa gradient");
  }
}

TEST_CASE("dorefa: kernel-wise bits quantize each channel at its own bit-width") {
  std::mt19937 rng(4);
  const ftensor w = random_tensor({4, 8}, rng);
  const std::vector<int> bits{2, 5, 1, 8};
  const var y = dorefa_weights(constant(w), std::span<const int>(bits));
  for (std::size_t c = 0; c < 4; ++c) {
    const var yc = dorefa_weights(constant(w), bits[c]);  // same layer-wide normalisation
    for (std::size_t i = c * 8; i < c * 8 + 8; ++i)
      CHECK(std::fabs(y.value()[i] - yc.value()[i]) <= 1e-6f);
  }
  const std::vector<int> wrong{2, 3};
  CHECK_THROWS_AS(dorefa_weights(constant(w), std::span<const int>(wrong)), shape_error);
}

TEST_CASE("pact: forward, codes, residual and paper alpha gradients") {
  std::mt19937 rng(5);
  const ftensor x = random_tensor({3, 40}, rng, -2.0f, 4.0f);
  for (const bool two : {false, true})
    for (int bits : {1, 2, 3, 4, 8}) {
      CAPTURE(two);
      CAPTURE(bits);
      const float alpha = 2.5f, L = float((1 << bits) - 1);
      const ftensor a({1}, alpha);
      for (const auto mode : {pact_alpha_gradient::residual, pact_alpha_gradient::paper}) {
        const pact_options opt{two, mode};
        auto r = run_with_grads([&](const auto& v) { return pact(v[0], v[1], bits, opt); }, {x, a});
        const ftensor seed = seed_for(r.y.shape());
        const code_tensor c = pact_codes(x, alpha, bits, two);
        c.validate();
        check_equal(r.y, c.dequantize(), "forward vs codes");
        double ga = 0;
        for (std::size_t i = 0; i < x.size(); ++i) {
          const float lo = two ? -alpha : 0.0f;
          const float y = std::clamp(x[i], lo, alpha);
          const float ref = two ? alpha * (2.0f * std::nearbyint(L * (y / alpha + 1) / 2) / L - 1)
                                : alpha * std::nearbyint(L * y / alpha) / L;
          CHECK(std::fabs(r.y[i] - ref) <= 1e-5f);
          const bool in = x[i] >= lo && x[i] <= alpha;
          CHECK(r.grads[0][i] == (in ? seed[i] : 0.0f));
          if (mode == pact_alpha_gradient::paper)
            ga += x[i] >= alpha ? seed[i] : (two && x[i] <= -alpha ? -seed[i] : 0.0);
          else
            ga += x[i] > alpha ? seed[i]
                  : x[i] < lo  ? (two ? -seed[i] : 0.0)
                               : seed[i] * (double(r.y[i]) - x[i]) / alpha;
        }
        CHECK(r.grads[1][0] == doctest::Approx(ga).epsilon(1e-5));
        if (mode == pact_alpha_gradient::residual) {
          // The residual variant is what autograd gives for the composed expression.
          auto composed = run_with_grads(
              [&](const auto& v) {
                const var lo_v = two ? neg(v[1]) : constant(ftensor({1}, 0.0f));
                const var y = minimum(maximum(v[0], lo_v), v[1]);
                if (two)
                  return v[1] * (round_ste((y / v[1] + 1.0f) * (0.5f * L)) * (2.0f / L) - 1.0f);
                return v[1] * round_ste(y / v[1] * L) * (1.0f / L);
              },
              {x, a});
          check_close(r.grads[0], composed.grads[0], 1e-6, "pact dx");
          CHECK(r.grads[1][0] == doctest::Approx(composed.grads[1][0]).epsilon(1e-4));
        }
      }
      if (!two) {
        const quant_params p = pact_codes(x, alpha, bits).to_quant_params();
        CHECK(p.zero_point[0] == 0);
      } else {
        CHECK_THROWS_AS(pact_codes(x, alpha, bits, true).to_quant_params(), value_error);
      }
    }
}

TEST_CASE("lsq: forward, codes, gradients with the 1/sqrt(N Q_P) scale, per channel") {
  std::mt19937 rng(6);
  const ftensor x = random_tensor({3, 30}, rng, -2.0f, 2.0f);
  for (const bool sgn : {true, false})
    for (int bits : {2, 3, 4, 8}) {
      CAPTURE(sgn);
      CAPTURE(bits);
      const int qn = sgn ? 1 << (bits - 1) : 0, qp = sgn ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
      for (const ftensor& step : {ftensor({1}, 0.3f), ftensor({3}, {0.2f, 0.5f, 0.05f})}) {
        auto r =
            run_with_grads([&](const auto& v) { return lsq(v[0], v[1], bits, sgn); }, {x, step});
        const ftensor seed = seed_for(r.y.shape());
        const code_tensor c = lsq_codes(x, step, bits, sgn);
        c.validate();
        check_equal(r.y, c.dequantize(), "forward vs codes");
        const quant_params p = c.to_quant_params();
        dispatch(
            [&](auto tag) {
              using Q = typename decltype(tag)::type;
              std::vector<typename Q::storage_type> q(c.codes.begin(), c.codes.end());
              const auto d = dequantize<Q>(std::span<const typename Q::storage_type>(q), p);
              for (std::size_t i = 0; i < x.size(); ++i) CHECK(d[i] == r.y[i]);
            },
            c.type);
        const std::size_t block = x.size() / step.size();
        std::vector<double> gs(step.size(), 0.0);
        for (std::size_t i = 0; i < x.size(); ++i) {
          const std::size_t ch = i / block;
          const float u = x[i] / step[ch];
          const float ref = step[ch] * std::nearbyint(std::clamp(u, -float(qn), float(qp)));
          CHECK(r.y[i] == ref);
          const bool in = u >= -float(qn) && u <= float(qp);
          CHECK(r.grads[0][i] == (in ? seed[i] : 0.0f));
          gs[ch] += seed[i] * (u < -float(qn) ? -qn : u > float(qp) ? qp : std::nearbyint(u) - u);
        }
        for (std::size_t ch = 0; ch < step.size(); ++ch)
          CHECK(r.grads[1][ch] ==
                doctest::Approx(gs[ch] / std::sqrt(double(block) * qp)).epsilon(1e-5));
        // An explicit gradient scale replaces the default.
        auto r2 = run_with_grads([&](const auto& v) { return lsq(v[0], v[1], bits, sgn, 1.0f); },
                                 {x, step});
        for (std::size_t ch = 0; ch < step.size(); ++ch)
          CHECK(r2.grads[1][ch] == doctest::Approx(gs[ch]).epsilon(1e-5));
      }
    }
  const float s0 = lsq_initial_step(x, 4, true);
  double m = 0;
  for (float v : x) m += std::fabs(v);
  CHECK(s0 == doctest::Approx(2.0 * m / double(x.size()) / std::sqrt(7.0)));
}

TEST_CASE("binary_sign: codes +-1, mean-|x| scale, gradient formula") {
  std::mt19937 rng(8);
  ftensor x = random_tensor({4, 25}, rng, -1.6f, 1.6f);
  x[3] = 0.0f;  // sign(0) = +1
  for (const auto scaling : {binary_scaling::none, binary_scaling::mean_abs})
    for (const auto g : {granularity::per_tensor, granularity::per_channel}) {
      auto r = run_with_grads([&](const auto& v) { return binary_sign(v[0], scaling, g); }, {x});
      const ftensor seed = seed_for(r.y.shape());
      const code_tensor c = binary_codes(x, scaling, g);
      c.validate();
      check_equal(r.y, c.dequantize(), "forward vs codes");
      const quant_params p = c.to_quant_params();
      std::vector<std::int8_t> q(c.codes.begin(), c.codes.end());
      const auto d = dequantize<qint<1>>(std::span<const std::int8_t>(q), p);
      for (std::size_t i = 0; i < x.size(); ++i) CHECK(d[i] == r.y[i]);
      const bool per_ch = scaling == binary_scaling::mean_abs && g == granularity::per_channel;
      const std::size_t block = per_ch ? 25 : x.size();
      for (std::size_t ch = 0; ch < x.size() / block; ++ch) {
        double a = 1, dot = 0;
        if (scaling == binary_scaling::mean_abs) {
          a = 0;
          for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) a += std::fabs(x[i]);
          a /= double(block);
        }
        for (std::size_t i = ch * block; i < (ch + 1) * block; ++i)
          dot += seed[i] * (x[i] >= 0 ? 1.0 : -1.0);
        for (std::size_t i = ch * block; i < (ch + 1) * block; ++i) {
          const double sgn = x[i] >= 0 ? 1.0 : -1.0;
          CHECK(r.y[i] == doctest::Approx(a * sgn).epsilon(1e-6));
          double ref = std::fabs(x[i]) <= 1.0f ? a * seed[i] : 0.0;
          if (scaling == binary_scaling::mean_abs)
            ref += (x[i] > 0 ? 1.0 : x[i] < 0 ? -1.0 : 0.0) * dot / double(block);
          CHECK(r.grads[0][i] == doctest::Approx(ref).epsilon(1e-5));
        }
      }
    }
}

TEST_CASE("code_tensor: validate and to_quant_params reject malformed maps") {
  code_tensor c;
  c.type = bitwidth{3, false};
  c.shape = {2, 2};
  c.codes = {0, 7, 3, 1};
  c.scale = {0.5f};
  c.zero_point = {2.0f};
  c.validate();
  CHECK(c.to_quant_params().zero_point[0] == 2);
  CHECK(c.offset(0) == -1.0f);
  c.codes[1] = 8;  // not a uint3
  CHECK_THROWS_AS(c.validate(), value_error);
  c.codes[1] = 7;
  c.scale = {0.0f};
  CHECK_THROWS_AS(c.validate(), value_error);
  CHECK_THROWS_AS(c.to_quant_params(), value_error);
  c.scale = {1.0f, 1.0f, 1.0f};
  c.zero_point = {0.0f, 0.0f, 0.0f};
  CHECK_THROWS_AS(c.validate(), shape_error);
  c.scale = {1.0f};
  c.zero_point = {0.0f};
  c.codes.pop_back();
  CHECK_THROWS_AS(c.validate(), shape_error);
  c.codes.push_back(0);
  c.type = bitwidth{9, false};
  CHECK_THROWS_AS(c.validate(), bits_error);
}

TEST_CASE("quantizers: typed errors for bad bits, scales, alphas, shapes and NaN") {
  std::mt19937 rng(9);
  const var x = constant(random_tensor({2, 6}, rng));
  const var alpha = var::parameter(ftensor({1}, 1.0f));
  for (int bad : {0, -1, 9}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(dorefa_weights(x, bad), bits_error);
    CHECK_THROWS_AS(pact(x, alpha, bad), bits_error);
    CHECK_THROWS_AS(lsq(x, alpha, bad, true), bits_error);
    CHECK_THROWS_AS(uniform_quantize(x, bitwidth{bad, true}, quant_scheme::symmetric), bits_error);
  }
  CHECK_THROWS_AS(lsq(x, alpha, 1, true), bits_error);  // signed 1-bit LSQ: use binary_sign
  for (float bad : {0.0f, -0.5f, NAN, INFINITY}) {
    CAPTURE(bad);
    const var a = var::parameter(ftensor({1}, bad));
    CHECK_THROWS_AS(pact(x, a, 4), value_error);
    CHECK_THROWS_AS(lsq(x, a, 4, true), value_error);
    CHECK_THROWS_AS(pact_codes(x.value(), bad, 4), value_error);
  }
  const var step3 = var::parameter(ftensor({3}, 0.1f));
  CHECK_THROWS_AS(lsq(x, step3, 4, true), shape_error);
  CHECK_THROWS_AS(pact(x, step3, 4), shape_error);
  CHECK_THROWS_AS(
      fake_quantize(x, quant_params::per_channel({1, 1, 1}, {0, 0, 0}), bitwidth{4, true}),
      shape_error);
  CHECK_THROWS_AS(fake_quantize(x, quant_params::per_tensor(1.0f, 9), bitwidth{3, true}),
                  value_error);
  CHECK_THROWS_AS(uniform_quantize(constant(ftensor({}, 0.0f)), bitwidth{4, true},
                                   quant_scheme::symmetric, granularity::per_channel),
                  shape_error);
  ftensor nan_x = x.value();
  nan_x[2] = NAN;
  CHECK_THROWS_AS(dorefa_weights(constant(nan_x), 4), value_error);
  CHECK_THROWS_AS(pact(constant(nan_x), alpha, 4), value_error);
  CHECK_THROWS_AS(binary_sign(constant(nan_x)), value_error);
  CHECK_THROWS_AS(lsq(constant(nan_x), alpha, 4, true), value_error);
  try {
    pact(x, var::parameter(ftensor({1}, -2.0f)), 4);
  } catch (const value_error& e) {
    CHECK(std::string(e.what()).find("alpha -2") != std::string::npos);
  }
}
