// Every autodiff op's backward against central finite differences, forward values against
// plain loops, and the graph mechanics (accumulation, no_grad, detach, errors).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <numeric>
#include <random>

#include "mixq/autodiff.hpp"
#include "test_util.hpp"

using namespace mixq;
using namespace mixq::autodiff;

using mixq::test::random_tensor;

namespace {

/// Values (k + 0.3) * spacing for k around 0, in random order: no two (nor two magnitudes)
/// within 2h of each other and none within h of zero, so kinks (relu, max, abs, pooling)
/// are never crossed by the +-h perturbation.
ftensor spaced_tensor(shape_t s, std::mt19937& rng, float spacing = 0.05f) {
  ftensor t(std::move(s));
  std::vector<float> v(t.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = (float(i) - float(v.size() / 2) + 0.3f) * spacing;
  std::shuffle(v.begin(), v.end(), rng);
  std::copy(v.begin(), v.end(), t.begin());
  return t;
}

using op_fn = std::function<var(const std::vector<var>&)>;

/// Checks d(sum r * f(x))/dx from backward() against central differences (h = 1e-2) with the
/// perturbed losses summed in double. Bound: |numeric - analytic| <= tol * max(1, |analytic|)
/// with tol = 5e-3: truncation error ~h^2 and float rounding ~1e-7 |L| / h stay well below.
void check_gradients(const op_fn& f, std::vector<ftensor> inputs, double tol = 5e-3,
                     float h = 1e-2f, std::vector<bool> differentiable = {}) {
  std::mt19937 rng(99);
  std::vector<var> xs;
  for (std::size_t i = 0; i < inputs.size(); ++i)
    xs.push_back(var(inputs[i], differentiable.empty() || differentiable[i]));
  var y = f(xs);
  const ftensor r = random_tensor(y.shape(), rng);
  backward(y, &r);
  auto loss_at = [&](const std::vector<ftensor>& in) {
    no_grad ng;
    std::vector<var> v;
    for (const auto& t : in) v.push_back(constant(t));
    const var out = f(v);
    double L = 0;
    for (std::size_t i = 0; i < out.size(); ++i) L += double(r[i]) * double(out.value()[i]);
    return L;
  };
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    if (!xs[k].requires_grad()) continue;
    const ftensor& ga = xs[k].grad();
    for (std::size_t i = 0; i < inputs[k].size(); ++i) {
      auto plus = inputs, minus = inputs;
      plus[k][i] += h;
      minus[k][i] -= h;
      const double num = (loss_at(plus) - loss_at(minus)) / (2.0 * double(h));
      const double ana = ga[i];
      CAPTURE(k);
      CAPTURE(i);
      CAPTURE(std::string(y.op()));
      CHECK(std::fabs(num - ana) <= tol * std::max(1.0, std::fabs(ana)));
    }
  }
}

}  // namespace

TEST_CASE("broadcasting arithmetic gradients") {
  std::mt19937 rng(1);
  const std::vector<std::pair<shape_t, shape_t>> shapes = {
      {{2, 3}, {2, 3}}, {{2, 3, 4}, {3, 1}},          {{2, 1, 4}, {3, 1}},
      {{4}, {1}},       {{2, 3, 2, 2}, {1, 3, 1, 1}}, {{1}, {2, 2}}};
  for (const auto& [sa, sb] : shapes) {
    CAPTURE(shape_string(sa));
    CAPTURE(shape_string(sb));
    const ftensor a = random_tensor(sa, rng), b = random_tensor(sb, rng, 0.5f, 1.5f);
    check_gradients([](const auto& v) { return add(v[0], v[1]); }, {a, b});
    check_gradients([](const auto& v) { return sub(v[0], v[1]); }, {a, b});
    check_gradients([](const auto& v) { return mul(v[0], v[1]); }, {a, b});
    check_gradients([](const auto& v) { return div(v[0], v[1]); }, {a, b});
  }
  // maximum/minimum away from ties.
  const ftensor a = spaced_tensor({3, 4}, rng), b = spaced_tensor({4}, rng, 0.13f);
  check_gradients([](const auto& v) { return maximum(v[0], v[1]); }, {a, b});
  check_gradients([](const auto& v) { return minimum(v[0], v[1]); }, {a, b});
  check_gradients([](const auto& v) { return (v[0] * 2.0f + 1.0f) / 4.0f - v[0]; }, {a});
}

TEST_CASE("broadcast forward values match a plain loop") {
  std::mt19937 rng(2);
  const ftensor a = random_tensor({2, 3, 4}, rng), b = random_tensor({3, 1}, rng);
  const var y = mul(constant(a), constant(b));
  REQUIRE(y.shape() == shape_t{2, 3, 4});
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t j = 0; j < 3; ++j)
      for (std::size_t k = 0; k < 4; ++k)
        CHECK(y.value().at(i, j, k) == a.at(i, j, k) * b.at(j, 0));
  CHECK_THROWS_AS(add(constant(ftensor({2, 3})), constant(ftensor({4}))), shape_error);
}

TEST_CASE("pointwise gradients") {
  std::mt19937 rng(3);
  const ftensor s = spaced_tensor({3, 5}, rng), pos = random_tensor({3, 5}, rng, 0.5f, 2.0f);
  check_gradients([](const auto& v) { return relu(v[0]); }, {s});
  check_gradients([](const auto& v) { return clip(v[0], -0.2f, 0.3f); }, {s});
  check_gradients([](const auto& v) { return abs(v[0]); }, {s});
  check_gradients([](const auto& v) { return tanh(v[0]); }, {s});
  check_gradients([](const auto& v) { return sigmoid(v[0]); }, {s});
  check_gradients([](const auto& v) { return exp(v[0]); }, {s});
  check_gradients([](const auto& v) { return log(v[0]); }, {pos});
  check_gradients([](const auto& v) { return sqrt(v[0]); }, {pos});
  check_gradients([](const auto& v) { return pow(v[0], 3.0f); }, {pos});
  check_gradients([](const auto& v) { return pow(v[0], -0.5f); }, {pos});
  CHECK_THROWS_AS(clip(constant(s), 1.0f, 0.0f), value_error);
}

TEST_CASE("straight-through ops pass the gradient unchanged; floor and detach pass none") {
  std::mt19937 rng(4);
  const ftensor x0 = random_tensor({7}, rng, -3.0f, 3.0f);
  for (int which = 0; which < 3; ++which) {
    var x = var::parameter(x0);
    var y = which == 0 ? round_ste(x) : which == 1 ? floor_ste(x) : floor(x);
    for (std::size_t i = 0; i < 7; ++i)
      CHECK(y.value()[i] == (which == 0 ? std::nearbyint(x0[i]) : std::floor(x0[i])));
    backward(sum(mul(y, 3.0f)));
    for (std::size_t i = 0; i < 7; ++i) CHECK(x.grad()[i] == (which == 2 ? 0.0f : 3.0f));
  }
  var x = var::parameter(x0);
  var y = add(detach(x), x);
  CHECK_FALSE(detach(x).requires_grad());
  backward(sum(y));
  for (std::size_t i = 0; i < 7; ++i) CHECK(x.grad()[i] == 1.0f);
  // A PACT-style learnable clip built from relu: d/dalpha = [x >= alpha].
  var a = var::parameter(ftensor({1}, 0.5f));
  var xx = constant(ftensor({3}, {0.2f, 0.7f, 1.5f}));
  backward(sum(sub(relu(xx), relu(sub(xx, a)))));
  CHECK(a.grad()[0] == 2.0f);
}

TEST_CASE("matmul and linear gradients and values") {
  std::mt19937 rng(5);
  const ftensor a = random_tensor({3, 4}, rng), b = random_tensor({4, 5}, rng);
  check_gradients([](const auto& v) { return matmul(v[0], v[1]); }, {a, b});
  const var y = matmul(constant(a), constant(b));
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 5; ++j) {
      float s = 0;
      for (std::size_t k = 0; k < 4; ++k) s += a.at(i, k) * b.at(k, j);
      CHECK(y.value().at(i, j) == doctest::Approx(s).epsilon(1e-5));
    }
  const ftensor x = random_tensor({3, 4}, rng), w = random_tensor({6, 4}, rng),
                bias = random_tensor({6}, rng);
  check_gradients([](const auto& v) { return linear(v[0], v[1], v[2]); }, {x, w, bias});
  check_gradients([](const auto& v) { return linear(v[0], v[1]); }, {x, w});
  CHECK_THROWS_AS(matmul(constant(a), constant(a)), shape_error);
  CHECK_THROWS_AS(linear(constant(x), constant(w), constant(ftensor({5}))), shape_error);
}

TEST_CASE("shape ops and reductions") {
  std::mt19937 rng(6);
  const ftensor x = spaced_tensor({2, 3, 4}, rng), z = random_tensor({2, 2, 4}, rng);
  check_gradients([](const auto& v) { return reshape(v[0], {4, 6}); }, {x});
  check_gradients([](const auto& v) { return flatten(v[0]); }, {x});
  check_gradients([](const auto& v) { return concat({v[0], v[1]}, 1); }, {x, z});
  check_gradients([](const auto& v) { return concat({v[0], v[0]}, 0); }, {x});
  check_gradients([](const auto& v) { return concat({v[1], v[0]}, -2); }, {x, z});
  check_gradients([](const auto& v) { return sum(v[0]); }, {x});
  check_gradients([](const auto& v) { return mean(v[0]); }, {x});
  for (int ax : {0, 1, 2, -1}) {
    CAPTURE(ax);
    check_gradients([ax](const auto& v) { return sum(v[0], ax); }, {x});
    check_gradients([ax](const auto& v) { return mean(v[0], ax, true); }, {x});
    check_gradients([ax](const auto& v) { return max(v[0], ax); }, {x});
    check_gradients([ax](const auto& v) { return softmax(v[0], ax); }, {x});
    check_gradients([ax](const auto& v) { return log_softmax(v[0], ax); }, {x});
  }
  check_gradients([](const auto& v) { return max(abs(v[0])); }, {x});
  {
    const ftensor y = random_tensor({2, 3, 4}, rng), w = random_tensor({3}, rng);
    check_gradients(
        [](const auto& v) {
          return weighted_sum({v[0], v[1], v[2]}, v[3]);
        },
        {x, y, x, w});
    check_gradients(
        [](const auto& v) {
          return weighted_sum({v[0], v[0]}, v[1]);
        },
        {x, random_tensor({2}, rng)});  // a term twice: contributions add
    check_gradients(                    // a term that is also an input of another op in the graph
        [](const auto& v) {
          return add(weighted_sum({v[0], v[1]}, v[2]), mul(v[0], v[1]));
        },
        {x, y, random_tensor({2}, rng)});
    const var ws = weighted_sum({constant(x), constant(y), constant(x)}, constant(w));
    for (std::size_t i = 0; i < x.size(); ++i)
      CHECK(ws.value()[i] == doctest::Approx(w[0] * x[i] + w[1] * y[i] + w[2] * x[i]));
    CHECK_THROWS_AS(weighted_sum({}, constant(w)), shape_error);
    CHECK_THROWS_AS(weighted_sum({constant(x), constant(y)}, constant(w)), shape_error);
    CHECK_THROWS_AS(weighted_sum({constant(x), constant(z)}, constant(ftensor({2}))), shape_error);
  }
  // Values against plain loops.
  const var s1 = sum(constant(x), 1), m2 = max(constant(x), 2);
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t k = 0; k < 4; ++k)
      CHECK(s1.value().at(i, k) == doctest::Approx(x.at(i, 0, k) + x.at(i, 1, k) + x.at(i, 2, k)));
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t j = 0; j < 3; ++j)
      CHECK(m2.value().at(i, j) ==
            std::max({x.at(i, j, 0), x.at(i, j, 1), x.at(i, j, 2), x.at(i, j, 3)}));
  const var sm = softmax(constant(x), -1);
  for (std::size_t r = 0; r < 6; ++r) {
    float t = 0;
    for (std::size_t k = 0; k < 4; ++k) t += sm.value()[r * 4 + k];
    CHECK(t == doctest::Approx(1.0f));
  }
  CHECK_THROWS_AS(sum(constant(x), 3), shape_error);
  CHECK_THROWS_AS(concat({constant(x), constant(ftensor({2, 3, 5}))}, 1), shape_error);
  CHECK_THROWS_AS(reshape(constant(x), {5, 5}), shape_error);
}

TEST_CASE("losses") {
  std::mt19937 rng(7);
  const ftensor logits = random_tensor({5, 4}, rng, -2.0f, 2.0f);
  const std::vector<int> labels{0, 3, 1, 1, 2};
  check_gradients([&](const auto& v) { return cross_entropy(v[0], labels); }, {logits});
  // Value: mean of -log softmax at the label.
  const var ce = cross_entropy(constant(logits), labels);
  const var ls = log_softmax(constant(logits));
  double ref = 0;
  for (std::size_t n = 0; n < 5; ++n) ref -= ls.value().at(n, std::size_t(labels[n]));
  CHECK(ce.item() == doctest::Approx(ref / 5).epsilon(1e-5));
  const ftensor t = random_tensor({5, 4}, rng);
  check_gradients([&](const auto& v) { return mse_loss(v[0], v[1]); }, {logits, t});
  CHECK_THROWS_AS(cross_entropy(constant(logits), std::vector<int>{0, 1}), shape_error);
  CHECK_THROWS_AS(cross_entropy(constant(logits), std::vector<int>{0, 1, 2, 3, 4}), value_error);
  // Gumbel-softmax with fixed noise (the generator reseeded on every call).
  check_gradients(
      [](const auto& v) {
        std::mt19937 g(5);
        return gumbel_softmax(v[0], 0.7f, g);
      },
      {logits});
  std::mt19937 g(5);
  const var hard = gumbel_softmax(var::parameter(logits), 0.5f, g, true);
  for (std::size_t n = 0; n < 5; ++n) {
    float s = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const float v = hard.value().at(n, k);
      CHECK((std::fabs(v) < 1e-6f || std::fabs(v - 1.0f) < 1e-6f));
      s += v;
    }
    CHECK(s == doctest::Approx(1.0f));
  }
}

namespace {
/// Direct 7-loop convolution used as the reference.
ftensor conv_reference(const ftensor& x, const ftensor& w, const ftensor* b, std::size_t s,
                       std::size_t p, std::size_t groups) {
  const std::size_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), O = w.dim(0),
                    kh = w.dim(2), kw = w.dim(3), Cg = C / groups, Og = O / groups;
  const std::size_t Ho = (H + 2 * p - kh) / s + 1, Wo = (W + 2 * p - kw) / s + 1;
  ftensor y({N, O, Ho, Wo});
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t o = 0; o < O; ++o)
      for (std::size_t oy = 0; oy < Ho; ++oy)
        for (std::size_t ox = 0; ox < Wo; ++ox) {
          double acc = b ? (*b)[o] : 0.0;
          for (std::size_t c = 0; c < Cg; ++c)
            for (std::size_t i = 0; i < kh; ++i)
              for (std::size_t j = 0; j < kw; ++j) {
                const long iy = long(oy * s + i) - long(p), ix = long(ox * s + j) - long(p);
                if (iy < 0 || ix < 0 || iy >= long(H) || ix >= long(W)) continue;
                acc += double(x.at(n, (o / Og) * Cg + c, std::size_t(iy), std::size_t(ix))) *
                       w.at(o, c, i, j);
              }
          y.at(n, o, oy, ox) = float(acc);
        }
  return y;
}
}  // namespace

TEST_CASE("conv2d: values against direct loops and gradients") {
  std::mt19937 rng(8);
  struct cfg {
    std::size_t N, C, H, W, O, k, s, p, g;
    bool bias;
  };
  const cfg cfgs[] = {{2, 3, 5, 6, 4, 3, 1, 1, 1, true}, {1, 2, 7, 5, 3, 3, 2, 0, 1, false},
                      {2, 4, 5, 5, 6, 3, 2, 1, 2, true}, {1, 3, 6, 6, 3, 3, 1, 1, 3, false},
                      {2, 3, 4, 4, 5, 1, 1, 0, 1, true}, {1, 2, 5, 4, 2, 2, 1, 2, 1, true},
                      {1, 4, 6, 5, 8, 3, 2, 1, 4, true}};
  for (const auto& c : cfgs) {
    CAPTURE(c.C);
    CAPTURE(c.O);
    CAPTURE(c.k);
    CAPTURE(c.s);
    CAPTURE(c.p);
    CAPTURE(c.g);
    const ftensor x = random_tensor({c.N, c.C, c.H, c.W}, rng),
                  w = random_tensor({c.O, c.C / c.g, c.k, c.k}, rng), b = random_tensor({c.O}, rng);
    const var y = conv2d(constant(x), constant(w), c.bias ? constant(b) : var(), c.s, c.p, c.g);
    const ftensor ref = conv_reference(x, w, c.bias ? &b : nullptr, c.s, c.p, c.g);
    REQUIRE(y.shape() == ref.shape());
    for (std::size_t i = 0; i < ref.size(); ++i)
      CHECK(y.value()[i] == doctest::Approx(ref[i]).epsilon(1e-4).scale(1));
    if (c.bias)
      check_gradients([c](const auto& v) { return conv2d(v[0], v[1], v[2], c.s, c.p, c.g); },
                      {x, w, b});
    else
      check_gradients([c](const auto& v) { return conv2d(v[0], v[1], var(), c.s, c.p, c.g); },
                      {x, w});
  }
  CHECK_THROWS_AS(conv2d(constant(ftensor({1, 3, 5, 5})), constant(ftensor({4, 2, 3, 3}))),
                  shape_error);
  CHECK_THROWS_AS(
      conv2d(constant(ftensor({1, 4, 5, 5})), constant(ftensor({4, 2, 3, 3})), var(), 1, 0, 3),
      shape_error);
  CHECK_THROWS_AS(conv2d(constant(ftensor({1, 4, 2, 2})), constant(ftensor({4, 4, 3, 3}))),
                  shape_error);
  CHECK_THROWS_AS(conv2d(constant(ftensor({4, 2, 2})), constant(ftensor({4, 4, 1, 1}))),
                  shape_error);
}

TEST_CASE("pooling: values and gradients") {
  std::mt19937 rng(9);
  const ftensor x = spaced_tensor({2, 3, 6, 5}, rng, 0.05f);
  check_gradients([](const auto& v) { return max_pool2d(v[0], 2); }, {x});
  check_gradients([](const auto& v) { return max_pool2d(v[0], 3, 2, 1); }, {x});
  check_gradients([](const auto& v) { return avg_pool2d(v[0], 2); }, {x});
  check_gradients([](const auto& v) { return avg_pool2d(v[0], 3, 2, 1); }, {x});
  check_gradients([](const auto& v) { return global_avg_pool2d(v[0]); }, {x});
  const var mp = max_pool2d(constant(x), 2);
  REQUIRE(mp.shape() == shape_t{2, 3, 3, 2});
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t c = 0; c < 3; ++c)
      for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t j = 0; j < 2; ++j)
          CHECK(mp.value().at(n, c, i, j) ==
                std::max({x.at(n, c, 2 * i, 2 * j), x.at(n, c, 2 * i + 1, 2 * j),
                          x.at(n, c, 2 * i, 2 * j + 1), x.at(n, c, 2 * i + 1, 2 * j + 1)}));
  const var gp = global_avg_pool2d(constant(x));
  float s = 0;
  for (std::size_t i = 0; i < 30; ++i) s += x[i];
  CHECK(gp.value().at(0, 0) == doctest::Approx(s / 30));
  CHECK_THROWS_AS(max_pool2d(constant(ftensor({1, 1, 2, 2})), 3), shape_error);
  CHECK_THROWS_AS(avg_pool2d(constant(ftensor({2, 2})), 2), shape_error);
}

TEST_CASE("batch_norm: training gradients, running statistics, eval mode") {
  std::mt19937 rng(10);
  for (const shape_t& s : {shape_t{3, 2, 3, 2}, shape_t{5, 3}}) {
    CAPTURE(shape_string(s));
    const std::size_t C = s[1];
    const ftensor x = random_tensor(s, rng, -2.0f, 2.0f), g = random_tensor({C}, rng, 0.5f, 1.5f),
                  b = random_tensor({C}, rng);
    ftensor rm({C}, 0.0f), rv({C}, 1.0f);
    check_gradients([&](const auto& v) { return batch_norm(v[0], v[1], v[2], rm, rv, true); },
                    {x, g, b}, 1e-2);
    check_gradients([&](const auto& v) { return batch_norm(v[0], v[1], v[2], rm, rv, false); },
                    {x, g, b});
    // One training step from fresh statistics: running = 0.9 * init + 0.1 * batch stats.
    ftensor m0({C}, 0.0f), v0({C}, 1.0f);
    const var y = batch_norm(constant(x), constant(g), constant(b), m0, v0, true);
    const std::size_t HW = x.size() / (s[0] * C);
    for (std::size_t c = 0; c < C; ++c) {
      double mu = 0, var_ = 0;
      for (std::size_t n = 0; n < s[0]; ++n)
        for (std::size_t i = 0; i < HW; ++i) mu += x[(n * C + c) * HW + i];
      mu /= double(s[0] * HW);
      for (std::size_t n = 0; n < s[0]; ++n)
        for (std::size_t i = 0; i < HW; ++i)
          var_ += (x[(n * C + c) * HW + i] - mu) * (x[(n * C + c) * HW + i] - mu);
      const double m = double(s[0] * HW);
      CHECK(m0[c] == doctest::Approx(0.1 * mu).epsilon(1e-4));
      CHECK(v0[c] == doctest::Approx(0.9 + 0.1 * var_ / (m - 1)).epsilon(1e-4));
      const std::size_t at = c * HW;  // first element of sample 0, channel c
      CHECK(y.value()[at] ==
            doctest::Approx(g[c] * (x[at] - mu) / std::sqrt(var_ / m + 1e-5) + b[c]).epsilon(1e-4));
    }
  }
  ftensor rm({2}, 0.0f), rv({2}, 1.0f);
  CHECK_THROWS_AS(batch_norm(constant(ftensor({4, 3})), constant(ftensor({2})),
                             constant(ftensor({2})), rm, rv, true),
                  shape_error);
  ftensor rm1({3}, 0.0f), rv1({3}, 1.0f);
  CHECK_THROWS_AS(batch_norm(constant(ftensor({1, 3})), constant(ftensor({3})),
                             constant(ftensor({3})), rm1, rv1, true),
                  shape_error);
}

TEST_CASE("graph mechanics: shared nodes, accumulation, no_grad, errors") {
  var x = var::parameter(ftensor({2}, {1.5f, -2.0f}));
  // y = x*x + x*x reuses x along four paths: dy/dx = 4x; backward runs each node once.
  var sq = mul(x, x);
  backward(sum(add(sq, sq)));
  CHECK(x.grad()[0] == 6.0f);
  CHECK(x.grad()[1] == -8.0f);
  backward(sum(x));  // leaf gradients accumulate
  CHECK(x.grad()[0] == 7.0f);
  x.zero_grad();
  CHECK(x.grad()[0] == 0.0f);
  {
    no_grad ng;
    var y = mul(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK_FALSE(grad_enabled());
  }
  CHECK(grad_enabled());
  CHECK(x.is_leaf());
  CHECK_FALSE(mul(x, x).is_leaf());
  CHECK_THROWS_AS(backward(mul(x, x)), shape_error);  // two elements and no seed
  CHECK_THROWS_AS(var().value(), value_error);
  CHECK_THROWS_AS(x.item(), shape_error);
}

TEST_CASE("conv2d gives the same values and gradients on 1 and several threads") {
  std::mt19937 rng(11);
  const ftensor x = random_tensor({5, 4, 6, 6}, rng), w = random_tensor({6, 2, 3, 3}, rng),
                b = random_tensor({6}, rng);
  const unsigned saved = threads();
  std::vector<ftensor> results;
  for (unsigned t : {1u, 3u}) {
    set_threads(t);
    CHECK(threads() == t);
    var xv = var::parameter(x), wv = var::parameter(w), bv = var::parameter(b);
    const var y = conv2d(xv, wv, bv, 2, 1, 2);
    backward(sum(mul(y, y)));
    results.insert(results.end(), {y.value(), xv.grad(), wv.grad(), bv.grad()});
  }
  set_threads(saved);
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t k = 0; k < results[i].size(); ++k)
      CHECK(results[i][k] == doctest::Approx(results[i + 4][k]).epsilon(1e-5));
  set_threads(0);
  CHECK(threads() == 1);
  set_threads(saved);
}

TEST_CASE("batch norm, relu and max-pool give identical results on 1 and several threads") {
  // Large enough (>= parallel_min_elements) that the ops split their work.
  std::mt19937 rng(12);
  const ftensor x = random_tensor({4, 8, 48, 48}, rng), gamma = random_tensor({8}, rng),
                beta = random_tensor({8}, rng), r = random_tensor({4, 8, 24, 24}, rng);
  REQUIRE(x.size() >= autodiff::detail::parallel_min_elements);
  const unsigned saved = threads();
  std::vector<ftensor> results;
  for (unsigned t : {1u, 3u}) {
    set_threads(t);
    var xv = var::parameter(x), gv = var::parameter(gamma), bv = var::parameter(beta);
    ftensor mean({8}, 0.0f), variance({8}, 1.0f);
    const var y = max_pool2d(relu(batch_norm(xv, gv, bv, mean, variance, true)), 2);
    backward(y, &r);
    results.insert(results.end(), {y.value(), xv.grad(), gv.grad(), bv.grad(), mean, variance});
  }
  set_threads(saved);
  const std::size_t per_run = results.size() / 2;
  for (std::size_t i = 0; i < per_run; ++i) CHECK(results[i] == results[i + per_run]);
}

TEST_CASE("tensor cache: ops overwrite recycled storage; limit and release") {
  // Large enough (>= 16 Ki elements) that outputs and gradients come from the cache.
  std::mt19937 rng(13);
  const ftensor x = random_tensor({4, 16, 32, 32}, rng), w = random_tensor({16, 16, 3, 3}, rng),
                gamma = random_tensor({16}, rng), beta = random_tensor({16}, rng),
                scale = random_tensor({1, 16, 1, 1}, rng),
                lw = random_tensor({3, 16 * 16 * 16}, rng),
                m = random_tensor({16 * 16 * 16, 16}, rng);
  // Every op that takes storage from the cache, forward and backward.
  auto run = [&] {
    var xv = var::parameter(x), wv = var::parameter(w), gv = var::parameter(gamma),
        bv = var::parameter(beta), sv = var::parameter(scale), lv = var::parameter(lw),
        mv = var::parameter(m);
    ftensor mean({16}, 0.0f), variance({16}, 1.0f);
    const var c = conv2d(xv, wv, var(), 1, 1);  // [4, 16, 32, 32]
    const var h = mul(relu(batch_norm(c, gv, bv, mean, variance, true)), sv);
    const var p = add(max_pool2d(h, 2), avg_pool2d(h, 2));  // [4, 16, 16, 16]
    const var f = reshape(tanh(p), {4, 16 * 16 * 16});
    const var wide = concat({f, f}, 0);  // [8, 4096]
    const var logits = linear(wide, lv);
    const var extra = sum(softmax(matmul(wide, mv), -1)) + sum(log_softmax(wide, 1)) +
                      sum(sum(wide, 0)) + sum(max(wide, 1)) + sum(global_avg_pool2d(h));
    const std::vector<int> labels{0, 1, 2, 1, 2, 0, 0, 1};
    const var loss = cross_entropy(logits, labels) + extra * 1e-3f;
    backward(loss);
    std::vector<ftensor> out{loss.value(), xv.grad(), wv.grad(), gv.grad(), bv.grad(),
                             sv.grad(),    lv.grad(), mv.grad(), mean,      variance};
    std::vector<std::size_t> sizes;  // every node's element count, for poisoning
    std::vector<node*> todo{loss.get()};
    while (!todo.empty()) {
      node* n = todo.back();
      todo.pop_back();
      sizes.push_back(n->value.size());
      for (auto& q : n->parents) todo.push_back(q.get());
    }
    return std::pair{out, sizes};
  };
  set_tensor_cache_limit(0);
  const auto [reference, sizes] = run();
  CHECK(tensor_cache_bytes() == 0);
  set_tensor_cache_limit(default_tensor_cache_limit);
  // Fill the cache with NaN storage of every size the graph uses, twice over.
  for (int k = 0; k < 2; ++k) {
    std::vector<var> poison;
    for (std::size_t n : sizes) poison.push_back(constant(ftensor({n}, std::nanf(""))));
  }
  CHECK(tensor_cache_bytes() > 0);
  const auto again = run().first;
  REQUIRE(again.size() == reference.size());
  for (std::size_t i = 0; i < reference.size(); ++i) {
    CAPTURE(i);
    CHECK(again[i] == reference[i]);
  }
  CHECK(tensor_cache_bytes() > 0);
  CHECK(tensor_cache_bytes() <= default_tensor_cache_limit);
  set_tensor_cache_limit(1 << 20);
  CHECK(tensor_cache_bytes() <= (1u << 20));
  release_tensor_cache();
  CHECK(tensor_cache_bytes() == 0);
  set_tensor_cache_limit(default_tensor_cache_limit);
}
