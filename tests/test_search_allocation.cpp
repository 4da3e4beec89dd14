// Allocation policies: linear CKA against a plain H K H reference and its invariances
// (identical features, orthogonal transforms, isotropic scaling, symmetry, range, both forms);
// bad inputs of each part.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mixq/nn/module.hpp"
#include "mixq/nn/optim.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/nn/quantized_residual.hpp"
#include "mixq/search/bmpq_policy.hpp"
#include "mixq/search/cka.hpp"
#include "mixq/search/hawq_policy.hpp"
#include "mixq/search/ompq_policy.hpp"
#include "mixq/search/trace.hpp"

using namespace mixq;
using namespace mixq::search;

namespace {

tensor<float> random_features(std::size_t n, std::size_t d, std::mt19937& rng, float offset = 0) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  tensor<float> t({n, d});
  for (auto& v : t) v = g(rng) + offset;
  return t;
}

// Plain reference: K = X X^T, Kc = H K H with H = I - 11^T/n, HSIC ratio.
double reference_cka(const tensor<float>& x, const tensor<float>& y) {
  const std::size_t n = x.dim(0), dx = x.size() / n, dy = y.size() / n;
  auto centred_gram = [n](const tensor<float>& f, std::size_t d) {
    std::vector<double> k(n * n, 0.0), h(n * n), hk(n * n, 0.0), out(n * n, 0.0);
    for (std::size_t a = 0; a < n; ++a)
      for (std::size_t b = 0; b < n; ++b) {
        for (std::size_t c = 0; c < d; ++c) k[a * n + b] += double(f[a * d + c]) * f[b * d + c];
        h[a * n + b] = (a == b ? 1.0 : 0.0) - 1.0 / double(n);
      }
    for (std::size_t a = 0; a < n; ++a)
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t c = 0; c < n; ++c) hk[a * n + b] += h[a * n + c] * k[c * n + b];
    for (std::size_t a = 0; a < n; ++a)
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t c = 0; c < n; ++c) out[a * n + b] += hk[a * n + c] * h[c * n + b];
    return out;
  };
  const auto kx = centred_gram(x, dx), ky = centred_gram(y, dy);
  double xy = 0, xx = 0, yy = 0;
  for (std::size_t i = 0; i < n * n; ++i) {
    xy += kx[i] * ky[i];
    xx += kx[i] * kx[i];
    yy += ky[i] * ky[i];
  }
  return xy / std::sqrt(xx * yy);
}

// A random orthogonal d x d matrix: Gram-Schmidt on Gaussian columns (double).
std::vector<double> random_orthogonal(std::size_t d, std::mt19937& rng) {
  std::normal_distribution<double> g(0.0, 1.0);
  std::vector<double> q(d * d);  // column j at q[i*d + j]
  for (auto& v : q) v = g(rng);
  for (std::size_t j = 0; j < d; ++j) {
    for (int pass = 0; pass < 2; ++pass)  // twice for numerical orthogonality
      for (std::size_t k = 0; k < j; ++k) {
        double dot = 0;
        for (std::size_t i = 0; i < d; ++i) dot += q[i * d + j] * q[i * d + k];
        for (std::size_t i = 0; i < d; ++i) q[i * d + j] -= dot * q[i * d + k];
      }
    double norm = 0;
    for (std::size_t i = 0; i < d; ++i) norm += q[i * d + j] * q[i * d + j];
    norm = std::sqrt(norm);
    for (std::size_t i = 0; i < d; ++i) q[i * d + j] /= norm;
  }
  return q;
}

tensor<float> times(const tensor<float>& x, const std::vector<double>& q, double scale = 1.0) {
  const std::size_t n = x.dim(0), d = x.dim(1);
  tensor<float> out({n, d});
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t j = 0; j < d; ++j) {
      double s = 0;
      for (std::size_t i = 0; i < d; ++i) s += double(x[r * d + i]) * q[i * d + j];
      out[r * d + j] = float(scale * s);
    }
  return out;
}

}  // namespace

TEST_CASE("cka: matches the H K H reference in both forms, symmetric, in [0, 1]") {
  std::mt19937 rng(11);
  const std::size_t shapes[][3] = {{8, 3, 5}, {16, 40, 7}, {5, 2, 60}, {12, 12, 12}, {30, 4, 4}};
  for (const auto& s : shapes) {
    const auto x = random_features(s[0], s[1], rng, 0.5f);
    auto y = random_features(s[0], s[2], rng, -2.0f);
    // Make y partly depend on x so the similarity is not near 0.
    for (std::size_t r = 0; r < s[0]; ++r) y[r * s[2]] += 2.0f * x[r * s[1]];
    const double ref = reference_cka(x, y);
    const double g = cka(x, y, cka_form::gram), f = cka(x, y, cka_form::feature);
    CHECK(g == doctest::Approx(ref).epsilon(1e-9));
    CHECK(f == doctest::Approx(ref).epsilon(1e-9));
    CHECK(cka(x, y) == doctest::Approx(ref).epsilon(1e-9));
    CHECK(cka(y, x) == doctest::Approx(g).epsilon(1e-12));
    CHECK(g >= 0.0);
    CHECK(g <= 1.0);
  }
}

TEST_CASE("cka: 1 for identical features, invariant to orthogonal transforms and scaling") {
  std::mt19937 rng(12);
  for (std::size_t d : {3u, 9u, 24u}) {
    const auto x = random_features(10, d, rng, 1.0f);
    const auto y = random_features(10, 6, rng);
    CHECK(cka(x, x) == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(cka(x, x, cka_form::gram) == doctest::Approx(1.0).epsilon(1e-12));
    CHECK(cka(x, x, cka_form::feature) == doctest::Approx(1.0).epsilon(1e-12));
    const double base = cka(x, y);
    const auto q = random_orthogonal(d, rng);
    const auto xq = times(x, q);
    CHECK(cka(x, xq) == doctest::Approx(1.0).epsilon(1e-5));
    CHECK(cka(xq, y) == doctest::Approx(base).epsilon(1e-5));
    CHECK(cka(y, xq, cka_form::feature) == doctest::Approx(base).epsilon(1e-5));
    // Isotropic scaling of either input.
    std::vector<double> id(d * d, 0.0);
    for (std::size_t i = 0; i < d; ++i) id[i * d + i] = 1.0;
    CHECK(cka(times(x, id, 37.5), y) == doctest::Approx(base).epsilon(1e-5));
    CHECK(cka(x, tensor<float>({10, 4}, 2.5f), cka_form::gram) == 0.0);  // no variance
    CHECK(cka(x, tensor<float>({10, 4}, 2.5f), cka_form::feature) == 0.0);
    const auto ys = times(y, random_orthogonal(6, rng), 1e-3);
    CHECK(cka(x, ys) == doctest::Approx(base).epsilon(1e-5));
  }
}

TEST_CASE("cka_matrix: pairwise CKA with unit diagonal, forms agree") {
  std::mt19937 rng(13);
  std::vector<tensor<float>> raw;
  raw.push_back(random_features(20, 3, rng));
  raw.push_back(random_features(20, 50, rng));
  raw.push_back(random_features(20, 7, rng));
  raw.push_back(raw[0]);
  tensor<float> conv({20, 2, 3, 3});  // rank 4: flattened per sample
  for (std::size_t i = 0; i < conv.size(); ++i) conv[i] = float(std::sin(0.37 * double(i)));
  raw.push_back(conv);
  std::vector<cka_features> sets;
  for (const auto& r : raw) sets.emplace_back(r);
  const auto m = cka_matrix(sets);
  const auto mg = cka_matrix(sets, cka_form::gram);
  const auto mf = cka_matrix(sets, cka_form::feature);
  for (std::size_t i = 0; i < raw.size(); ++i) {
    CHECK(m[i][i] == 1.0);
    for (std::size_t j = 0; j < raw.size(); ++j) {
      CHECK(m[i][j] == m[j][i]);
      CHECK(m[i][j] == doctest::Approx(reference_cka(raw[i], raw[j])).epsilon(1e-9));
      CHECK(mg[i][j] == doctest::Approx(m[i][j]).epsilon(1e-9));
      CHECK(mf[i][j] == doctest::Approx(m[i][j]).epsilon(1e-9));
    }
  }
  CHECK(m[0][3] == doctest::Approx(1.0).epsilon(1e-12));
}

TEST_CASE("cka: bad input") {
  std::mt19937 rng(14);
  const auto x = random_features(8, 3, rng);
  CHECK_THROWS_AS(cka(x, random_features(9, 3, rng)), shape_error);
  CHECK_THROWS_AS(cka_features{tensor<float>({8})}, shape_error);     // rank 1
  CHECK_THROWS_AS(cka_features{tensor<float>({1, 4})}, shape_error);  // one sample
  CHECK_THROWS_AS(cka_features{tensor<float>({0, 4})}, shape_error);  // empty
  CHECK_THROWS_AS(cka_features{tensor<float>({4, 0})}, shape_error);  // no features
  auto bad = x;
  bad[5] = std::nanf("");
  CHECK_THROWS_AS(cka_features{bad}, value_error);
  CHECK_THROWS_AS(cka_matrix(std::span<const cka_features>{}), shape_error);
  std::vector<cka_features> sets;
  sets.emplace_back(x);
  sets.emplace_back(random_features(5, 3, rng));
  CHECK_THROWS_AS(cka_matrix(sets), shape_error);
  try {
    cka(x, random_features(9, 3, rng));
  } catch (const shape_error& e) {
    CHECK(std::string(e.what()).find("same") != std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------------
// Policies on a small CNN and synthetic data.

namespace {

using autodiff::ftensor;
using autodiff::var;

std::shared_ptr<nn::sequential> small_cnn(std::mt19937& rng) {
  auto m = std::make_shared<nn::sequential>();
  m->add(std::make_shared<nn::quantized_conv2d>(1, 4, 3, 1, 1, 1, false, rng));
  m->add(std::make_shared<nn::relu>());
  m->add(std::make_shared<nn::quantized_conv2d>(4, 8, 3, 2, 1, 1, false, rng));
  m->add(std::make_shared<nn::relu>());
  m->add(std::make_shared<nn::flatten>());
  m->add(std::make_shared<nn::quantized_linear>(8 * 4 * 4, 24, true, rng));
  m->add(std::make_shared<nn::relu>());
  m->add(std::make_shared<nn::quantized_linear>(24, 3, true, rng));
  return m;
}

// Layer costs from the shapes of one forward (what trace_costs computes).
std::vector<layer_cost> costs_of(nn::module& model, const ftensor& images) {
  {
    autodiff::no_grad ng;
    (void)model(autodiff::constant(images));
  }
  std::vector<layer_cost> out;
  for (auto* l : nn::quantized_layers(model)) {
    layer_cost c;
    c.name = "layer" + std::to_string(out.size());
    c.in_channels = std::int64_t(l->in_channels());
    c.out_channels = std::int64_t(l->out_channels());
    c.kernel = std::int64_t(l->kernel_size());
    c.params = std::int64_t(l->weight_params());
    const auto& os = l->output_shape();
    if (l->kind() == nn::quantized_kind::linear) {
      c.kind = layer_kind::linear;
      c.macs = c.params;
    } else {
      c.out_h = std::int64_t(os[2]);
      c.out_w = std::int64_t(os[3]);
      c.macs = c.params * c.out_h * c.out_w;
    }
    out.push_back(c);
  }
  return out;
}

// Three classes of 8x8 images: class = which third of the image holds a bright bar.
struct synthetic_data {
  std::vector<batch> batches;
  synthetic_data(std::size_t count, std::size_t size, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 0.3f);
    std::uniform_int_distribution<int> cls(0, 2);
    for (std::size_t b = 0; b < count; ++b) {
      batch bt{ftensor({size, 1, 8, 8}), {}};
      for (std::size_t n = 0; n < size; ++n) {
        const int c = cls(rng);
        bt.labels.push_back(c);
        for (std::size_t y = 0; y < 8; ++y)
          for (std::size_t x = 0; x < 8; ++x)
            bt.images[((n * 8) + y) * 8 + x] =
                noise(rng) + (int(x) / 3 == c && y > 1 && y < 6 ? 1.0f : 0.0f);
      }
      batches.push_back(std::move(bt));
    }
  }
};

struct fixture {
  std::mt19937 rng{21};
  std::shared_ptr<nn::sequential> model = small_cnn(rng);
  synthetic_data data{6, 16, 5};
  search_context ctx{*model,
                     costs_of(*model, data.batches[0].images),
                     [this] { return data.batches.size(); },
                     [this](std::size_t i) { return data.batches.at(i); },
                     [this] { return data.batches.size(); },
                     [this](std::size_t i) { return data.batches.at(i); },
                     7,
                     std::getenv("MIXQ_TEST_LOG") ? &std::cerr : nullptr};
};

void train(fixture& f, std::size_t epochs) {
  nn::sgd opt(f.model->parameters(), 0.05f, 0.9f);
  f.model->train();
  for (std::size_t e = 0; e < epochs; ++e)
    for (const auto& bt : f.data.batches) {
      opt.zero_grad();
      autodiff::backward(
          autodiff::cross_entropy((*f.model)(autodiff::constant(bt.images)), bt.labels));
      opt.step();
    }
}

double weight_bits_of(const std::vector<layer_cost>& costs, const bit_config& c) {
  double s = 0;
  for (std::size_t i = 0; i < costs.size(); ++i) s += double(costs[i].params) * c.w_bits[i];
  return s;
}

}  // namespace

TEST_CASE("ompq: importances and coefficients follow the formulas") {
  const std::vector<std::vector<double>> s = {{1, 0.5, 0.2}, {0.5, 1, 0.1}, {0.2, 0.1, 1}};
  const auto theta = ompq_importance(s, 2.0);
  CHECK(theta[0] == doctest::Approx(std::exp(-2.0 * 0.7)));
  CHECK(theta[1] == doctest::Approx(std::exp(-2.0 * 0.6)));
  CHECK(theta[2] == doctest::Approx(std::exp(-2.0 * 0.3)));
  const auto c = ompq_coefficients(theta);
  CHECK(c[2] == doctest::Approx(theta[2]));
  CHECK(c[1] == doctest::Approx((theta[1] + theta[2]) / 2));
  CHECK(c[0] == doctest::Approx((theta[0] + theta[1] + theta[2]) / 3));
  CHECK_THROWS_AS(ompq_importance({{1, 0}, {0}}, 1.0), shape_error);
}

TEST_CASE("ompq_policy: CKA of the layer outputs, LP + rounding within the budget") {
  fixture f;
  const auto outputs = record_layer_outputs(*f.model, first_samples(f.data.batches[0].images, 32));
  REQUIRE(outputs.size() == 4);
  CHECK(outputs[0].shape() == shape_t{16, 4, 8, 8});
  CHECK(outputs[3].shape() == shape_t{16, 3});
  for (auto kind : {budget_kind::weight_bits, budget_kind::bitops})
    for (int w : {2, 3, 5}) {
      const auto b = budget::like_uniform(kind, f.ctx.costs, w, 8);
      ompq_options o;
      o.beta = 2.0;
      ompq_policy p(o);
      const auto cfg = p.allocate(f.ctx, b);
      const auto& r = p.report();
      CHECK(b.admits(f.ctx.costs, cfg));
      CHECK(r.rounded_cost <= r.lp_cost * (1 + 1e-9));
      CHECK(r.lp_cost <= b.value * (1 + 1e-9));
      REQUIRE(r.similarity.size() == 4);
      for (std::size_t i = 0; i < 4; ++i)
        for (std::size_t j = 0; j < 4; ++j)
          CHECK(r.similarity[i][j] == doctest::Approx(cka(outputs[i], outputs[j])).epsilon(1e-9));
      for (std::size_t i = 0; i < 4; ++i) {
        CHECK(cfg.a_bits[i] == 8);
        CHECK(cfg.w_bits[i] >= 2);
        CHECK(cfg.w_bits[i] <= 8);
        // Budget-matching rounding: floor or ceil of the LP's real bits.
        CHECK(cfg.w_bits[i] >= int(std::floor(r.real_bits[i] + 1e-9)));
        CHECK(cfg.w_bits[i] <= int(std::ceil(r.real_bits[i] - 1e-9)));
      }
      // The LP is the greedy fractional knapsack: at most one layer strictly between bounds,
      // the budget used up unless every layer is at the top.
      int fractional = 0;
      for (double x : r.real_bits) fractional += (x > 2 + 1e-9 && x < 8 - 1e-9);
      CHECK(fractional <= 1);
      // The exact ILP on the same objective is at least as good and also admitted.
      o.exact_ilp = true;
      ompq_policy exact(o);
      const auto cfg2 = exact.allocate(f.ctx, b);
      CHECK(b.admits(f.ctx.costs, cfg2));
      double v_round = 0, v_ilp = 0;
      for (std::size_t i = 0; i < 4; ++i) {
        v_round += r.coefficient[i] * cfg.w_bits[i];
        v_ilp += r.coefficient[i] * cfg2.w_bits[i];
      }
      CHECK(v_ilp >= v_round - 1e-9);
    }
}

TEST_CASE("ompq_policy: pinned edge layers and sparse candidates") {
  fixture f;
  ompq_options o;
  o.space.pin_first = o.space.pin_last = true;
  o.space.edge_bits = 8;
  ompq_policy p(o);
  const auto b = budget::like_uniform(budget_kind::weight_bits, f.ctx.costs, 4, 8);
  const auto cfg = p.allocate(f.ctx, b);
  CHECK(cfg.w_bits.front() == 8);
  CHECK(cfg.w_bits.back() == 8);
  CHECK(p.report().searched == std::vector<std::size_t>{1, 2});
  CHECK(b.admits(f.ctx.costs, cfg));
  o.space.candidates = {2, 4, 8};
  CHECK_THROWS_AS(ompq_policy(o).allocate(f.ctx, b), bits_error);  // rounding needs steps of 1
  o.exact_ilp = true;
  const auto cfg2 = ompq_policy(o).allocate(f.ctx, b);
  for (std::size_t i = 1; i < 3; ++i)
    CHECK((cfg2.w_bits[i] == 2 || cfg2.w_bits[i] == 4 || cfg2.w_bits[i] == 8));
}

TEST_CASE("ompq_policy: bad input") {
  fixture f;
  ompq_policy p;
  // Below W2 everywhere: budget_error naming the smallest feasible value.
  const double least = weight_bits_of(f.ctx.costs, bit_config::uniform(4, 2, 8));
  try {
    p.allocate(f.ctx, budget::weight_bits(least - 1));
    FAIL("expected budget_error");
  } catch (const budget_error& e) {
    CHECK(std::string(e.what()).find(search::detail::figure(least)) != std::string::npos);
  }
  CHECK_NOTHROW(p.allocate(f.ctx, budget::weight_bits(least)));
  auto wrong = f.ctx;
  wrong.costs.pop_back();
  CHECK_THROWS_AS(p.allocate(wrong, budget::weight_bits(least * 4)), shape_error);
  ompq_options o;
  o.batch_index = 99;
  CHECK_THROWS_AS(ompq_policy(o).allocate(f.ctx, budget::weight_bits(least * 4)), shape_error);
  o = {};
  o.beta = -1;
  CHECK_THROWS_AS(ompq_policy{o}, value_error);
  o = {};
  o.samples = 1;
  CHECK_THROWS_AS(ompq_policy{o}, shape_error);
  nn::sequential plain;
  plain.add(std::make_shared<nn::relu>());
  CHECK_THROWS_AS(record_layer_outputs(plain, ftensor({2, 3}, 1.0f)), shape_error);
}

TEST_CASE("bmpq: bit planes rebuild the quantized weight and carry the bit gradients") {
  std::mt19937 rng(31);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int bits : {1, 2, 3, 5, 8}) {
    CAPTURE(bits);
    ftensor wv({6, 5});
    for (auto& x : wv) x = g(rng);
    wv[3] = 0.0f;
    const var w = var::parameter(wv);
    const auto bp = make_bit_plane_weight(w, bits);
    REQUIRE(bp.planes.size() == std::size_t(bits == 1 ? 1 : bits - 1));
    std::vector<float> ref;
    if (bits == 1) {  // binary: mean|W| * sign(W), sign(0) = +1 (quant::binary_sign)
      double mean = 0, mx = 0;
      for (float v : wv)
        mean += std::abs(v) / double(wv.size()), mx = std::max(mx, double(std::abs(v)));
      for (float v : wv) ref.push_back(float(mean) * (v >= 0 ? 1.0f : -1.0f));
      CHECK(bp.scale == doctest::Approx(mean).epsilon(1e-6));
      CHECK(bp.sensitivity_scale == doctest::Approx((mx / mean) * (mx / mean)).epsilon(1e-5));
    } else {
      ref = symmetric_fake_quant(wv.span(), bits);
      CHECK(bp.sensitivity_scale == 1.0f);
    }
    for (std::size_t i = 0; i < wv.size(); ++i)
      CHECK(bp.quantized.value()[i] == doctest::Approx(ref[i]).epsilon(1e-6));
    ftensor r({6, 5});
    for (auto& x : r) x = g(rng);
    autodiff::backward(autodiff::sum(autodiff::mul(bp.quantized, autodiff::constant(r))));
    for (std::size_t i = 0; i < wv.size(); ++i) {
      if (wv[i] != 0.0f) CHECK(w.grad()[i] == doctest::Approx(r[i]).epsilon(1e-5));  // STE
      const float sign =
          bits == 1 ? (wv[i] >= 0 ? 1.0f : -1.0f) : (wv[i] > 0 ? 1.0f : (wv[i] < 0 ? -1.0f : 0.0f));
      for (int p = 0; p < int(bp.planes.size()); ++p)
        CHECK(bp.planes[std::size_t(p)].grad()[i] ==
              doctest::Approx(bp.scale * float(1 << p) * sign * r[i]).epsilon(1e-5));
    }
  }
  CHECK_THROWS_AS(make_bit_plane_weight(var::parameter(ftensor({2}, 1.0f)), 0), bits_error);
  CHECK_THROWS_AS(make_bit_plane_weight(var::parameter(ftensor({2}, 1.0f)), 9), bits_error);
}

TEST_CASE("bmpq: the mse weight scale beats the max scale and rebuilds through the planes") {
  std::mt19937 rng(37);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int bits : {2, 3, 4, 8}) {
    CAPTURE(bits);
    ftensor wv({16, 9});
    for (auto& x : wv) x = g(rng);
    const float levels = float((1 << (bits - 1)) - 1);
    auto error_at = [&](float sc) {
      double e = 0;
      for (float v : wv) {
        const double d = v - sc * std::clamp(std::round(v / sc), -levels, levels);
        e += d * d;
      }
      return e;
    };
    const float smax = search::detail::bmpq_scale(wv.span(), bits, bmpq_weight_scale::max);
    const float smse = search::detail::bmpq_scale(wv.span(), bits, bmpq_weight_scale::mse);
    float m = 0;
    for (float v : wv) m = std::max(m, std::abs(v));
    CHECK(smax == doctest::Approx(m / levels));
    CHECK(smse <= smax);
    CHECK(smse >= 0.25f * smax * (1 - 1e-6f));
    CHECK(error_at(smse) <= error_at(smax));
    // No scale on a fine grid of the same range does better than the chosen one by > 1%.
    for (int k = 0; k <= 300; ++k)
      CHECK(error_at(smse) <= 1.01 * error_at((0.25f + 0.75f * float(k) / 300) * smax) + 1e-9);
    if (bits == 2) CHECK(error_at(smse) < 0.9 * error_at(smax));  // clipping pays at 2 bits
    const auto bp = make_bit_plane_weight(var::parameter(wv), bits, smse);
    CHECK(bp.scale == smse);
    CHECK(bp.sensitivity_scale == doctest::Approx((smax / smse) * (smax / smse)).epsilon(1e-5));
    for (std::size_t i = 0; i < wv.size(); ++i)
      CHECK(bp.quantized.value()[i] ==
            smse * std::clamp(std::round(wv[i] / smse), -levels, levels));
  }
}

TEST_CASE("bmpq_policy: re-allocates during the early phase within the budget, then freezes") {
  fixture f;
  bmpq_options o;
  o.space.candidates = {2, 3, 4, 6, 8};
  o.space.a_bits = 4;
  o.early_epochs = 4;
  o.interval_epochs = 1;
  bmpq_policy p(o);
  const auto b = budget::like_uniform(budget_kind::weight_bits, f.ctx.costs, 4, 4);
  const auto first = p.allocate(f.ctx, b);
  CHECK(b.admits(f.ctx.costs, first));
  CHECK(f.model->size() > 0);
  nn::sgd opt(f.model->parameters(), 0.05f, 0.9f);
  bool changed = false;
  for (std::size_t epoch = 0; epoch < 6; ++epoch) {
    f.model->train();
    for (const auto& bt : f.data.batches) {
      opt.zero_grad();
      const var loss =
          autodiff::cross_entropy((*f.model)(autodiff::constant(bt.images)), bt.labels);
      autodiff::backward(loss);
      opt.step();
    }
    const auto next = p.on_epoch_end(f.ctx, b, epoch);
    if (epoch >= o.early_epochs) CHECK(!next.has_value());
    if (next) {
      changed = true;
      CHECK(*next == p.config());
    }
  }
  CHECK(p.is_frozen());
  REQUIRE(p.history().size() == 1 + o.early_epochs);  // initial + one per early epoch
  for (const auto& r : p.history()) {
    CHECK(r.cost <= b.value * (1 + 1e-9));
    CHECK(b.admits(f.ctx.costs, r.config));
    for (double s : r.sensitivity) CHECK(s > 0);
  }
  CHECK(changed);
}

TEST_CASE("bmpq_policy: the ILP solution is optimal for the accumulated sensitivities") {
  fixture f;
  bmpq_policy p;
  const auto b = budget::like_uniform(budget_kind::bitops, f.ctx.costs, 3, 4);
  const auto cfg = p.allocate(f.ctx, b);
  const auto& r = p.history().back();
  const std::vector<int> cand = {2, 3, 4, 5, 6, 8};
  auto noise = [&](const std::vector<int>& w) {
    double s = 0;
    for (std::size_t i = 0; i < w.size(); ++i)
      s += double(f.ctx.costs[i].params) * r.sensitivity[i] * std::ldexp(1.0, -2 * w[i]);
    return s;
  };
  double best = 1e300;
  std::vector<int> w(4);
  for (int a = 0; a < 6; ++a)
    for (int bb = 0; bb < 6; ++bb)
      for (int c = 0; c < 6; ++c)
        for (int d = 0; d < 6; ++d) {
          w = {cand[a], cand[bb], cand[c], cand[d]};
          bit_config bc{w, std::vector<int>(4, 4)};
          if (b.admits(f.ctx.costs, bc)) best = std::min(best, noise(w));
        }
  CHECK(noise(cfg.w_bits) == doctest::Approx(best).epsilon(1e-9));
  CHECK_THROWS_AS(p.allocate(f.ctx, budget::bitops(1.0)), budget_error);
  bmpq_options o;
  o.space.candidates = {0, 2};
  CHECK_THROWS_AS(bmpq_policy{o}, bits_error);
  o.space.candidates = {2, 9};
  CHECK_THROWS_AS(bmpq_policy{o}, bits_error);
  o.space.candidates = {1, 2};
  CHECK_NOTHROW(bmpq_policy{o});
  o = {};
  o.interval_epochs = 0;
  CHECK_THROWS_AS(bmpq_policy{o}, value_error);
}

TEST_CASE("bmpq_policy: LSQ activations and 1-bit weight candidates") {
  fixture f;
  bmpq_options o;
  o.space.candidates = {1, 2, 3, 4};
  o.space.a_bits = 2;
  o.probe_batches = 2;
  bmpq_policy p(o);
  // Half the 2-bit budget: some layers must take binary weights.
  auto b = budget::like_uniform(budget_kind::weight_bits, f.ctx.costs, 2, 2);
  b.value *= 0.75;
  const auto cfg = p.allocate(f.ctx, b);
  CHECK(b.admits(f.ctx.costs, cfg));
  CHECK(std::count(cfg.w_bits.begin(), cfg.w_bits.end(), 1) > 0);
  for (double s : p.history().back().sensitivity) CHECK(s > 0);
  const auto layers = nn::quantized_layers(*f.model);
  REQUIRE(p.parameters().size() == layers.size());  // one LSQ step per layer
  // The probe batches (training mode) set every step from the first batch each layer saw:
  // signed where that batch had negative inputs (the first layer reads signed synthetic
  // images), unsigned after the ReLUs.
  const auto& first = f.data.batches[0].images;
  const bool negative_images = *std::min_element(first.begin(), first.end()) < 0;
  CHECK(p.input_is_signed(0) == negative_images);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CAPTURE(i);
    CHECK(p.activation_step(i) > 0);
    if (i > 0) CHECK(!p.input_is_signed(i));
    if (!p.input_is_signed(i)) CHECK(p.clip_value(i) == doctest::Approx(3 * p.activation_step(i)));
  }
  // Re-attaching to the same layers (as the driver does for the finetune) keeps the steps.
  const float step0 = p.activation_step(0);
  nn::attach_policy(*f.model, p);
  CHECK(p.activation_step(0) == step0);
  // Eval forward: inputs on the LSQ grid, weights binary (mean|W| * sign) where the bits are 1.
  f.model->eval();
  {
    autodiff::no_grad ng;
    std::mt19937 rng(5);
    ftensor xt({3, 5});
    std::uniform_real_distribution<float> d(-1.0f, 2.0f);
    for (auto& v : xt) v = d(rng);
    for (std::size_t l : {std::size_t{0}, std::size_t{1}}) {
      const float step = p.activation_step(l);
      xt[0] = 1.5f * step;  // an exact tie
      const auto q = p.quantize_activations(l, autodiff::constant(xt)).value();
      const auto codes = quant::lsq_codes(xt, ftensor({1}, step), 2, p.input_is_signed(l));
      for (std::size_t i = 0; i < xt.size(); ++i) CHECK(q[i] == step * float(codes.codes[i]));
    }
    for (std::size_t i = 0; i < layers.size(); ++i) {
      CAPTURE(i);
      const auto wc = p.weight_codes(i);
      CHECK(wc.type.bits == cfg.w_bits[i]);
      const auto want = p.quantize_weights(i, layers[i]->weight).value();
      const auto got = wc.dequantize();
      REQUIRE(got.size() == want.size());
      for (std::size_t j = 0; j < got.size(); ++j) CHECK(got[j] == want[j]);
    }
  }
  // A driver-style finetune step trains the steps: they receive gradients.
  f.model->train();
  const auto& bt = f.data.batches[0];
  autodiff::backward(autodiff::cross_entropy((*f.model)(autodiff::constant(bt.images)), bt.labels));
  double g = 0;
  for (auto& s : p.parameters()) g += std::abs(double(s.grad()[0]));
  CHECK(g > 0);
}

TEST_CASE("hutchinson_traces: quadratic models with a known Hessian") {
  std::mt19937 rng(41);
  std::normal_distribution<float> g(0.0f, 1.0f);
  // loss = mse(X1 W1^T, T1) + mse(X2 W2^T, T2): block Hessians (2 / (N O)) I_O (x) X^T X,
  // traces 2 ||X||_F^2 / N.
  const std::size_t N = 48;
  ftensor x1({N, 10}), x2({N, 6}), t1({N, 4}), t2({N, 3});
  for (auto* t : {&x1, &x2, &t1, &t2})
    for (auto& v : *t) v = g(rng);
  for (std::size_t i = 0; i < N; ++i) x2[i * 6] *= 5.0f;  // a dominant column
  nn::quantized_linear l1(10, 4, false, rng), l2(6, 3, true, rng);
  auto loss = [&] {
    return autodiff::add(autodiff::mse_loss(l1(autodiff::constant(x1)), autodiff::constant(t1)),
                         autodiff::mse_loss(l2(autodiff::constant(x2)), autodiff::constant(t2)));
  };
  auto exact = [&](const ftensor& x) {
    double s = 0;
    for (float v : x) s += double(v) * v;
    return 2.0 * s / double(N);
  };
  const std::vector<var> params = {l1.weight, l2.weight};
  const ftensor w1 = l1.weight.value();
  std::mt19937_64 prng(3);
  hutchinson_options o;
  o.probes = 200;
  const auto tr = hutchinson_traces(loss, params, prng, o);
  CHECK(std::abs(tr[0] - exact(x1)) <= 0.05 * exact(x1));
  CHECK(std::abs(tr[1] - exact(x2)) <= 0.05 * exact(x2));
  CHECK(l1.weight.value() == w1);  // restored
  CHECK_THROWS_AS(hutchinson_traces(loss, std::span<const var>{}, prng), shape_error);
  o.probes = 0;
  CHECK_THROWS_AS(hutchinson_traces(loss, params, prng, o), value_error);
  const std::vector<var> bad = {autodiff::constant(ftensor({2}, 1.0f))};
  CHECK_THROWS_AS(hutchinson_traces(loss, bad, prng), value_error);
}

TEST_CASE("hawq_policy: 4/8-bit ILP on Hessian-weighted perturbations") {
  fixture f;
  train(f, 3);
  hawq_options o;
  o.hutchinson.probes = 8;
  hawq_policy p(o);
  for (double frac : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    const double c4 = budget::like_uniform(budget_kind::bitops, f.ctx.costs, 4, 4).value;
    const double c8 = budget::like_uniform(budget_kind::bitops, f.ctx.costs, 8, 8).value;
    const auto b = budget::bitops(c4 + frac * (c8 - c4));
    const auto cfg = p.allocate(f.ctx, b);
    const auto& r = p.report();
    CHECK(b.admits(f.ctx.costs, cfg));
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK((cfg.w_bits[i] == 4 || cfg.w_bits[i] == 8));
      CHECK(cfg.a_bits[i] == cfg.w_bits[i]);
      CHECK(r.sensitivity[i][1] <= r.sensitivity[i][0]);  // 8 bits perturb less than 4
    }
    // Brute force over the 2^4 choices.
    double best = 1e300, got = 0;
    for (int mask = 0; mask < 16; ++mask) {
      bit_config bc = bit_config::uniform(4, 4, 4);
      double s = 0;
      for (std::size_t i = 0; i < 4; ++i) {
        const bool high = (mask >> i) & 1;
        bc.w_bits[i] = bc.a_bits[i] = high ? 8 : 4;
        s += r.sensitivity[i][high];
      }
      if (b.admits(f.ctx.costs, bc)) best = std::min(best, s);
    }
    for (std::size_t i = 0; i < 4; ++i) got += r.sensitivity[i][cfg.w_bits[i] == 8];
    CHECK(got == doctest::Approx(best).epsilon(1e-12));
    bool strict = true;
    for (std::size_t i = 0; i < 4; ++i)
      strict = strict && r.sensitivity[i][1] < r.sensitivity[i][0];
    if (frac == 1.0 && strict) CHECK(cfg == bit_config::uniform(4, 8, 8));
    if (frac == 0.0) CHECK(cfg == bit_config::uniform(4, 4, 4));
  }
  for (double t : p.report().trace) CHECK(std::isfinite(t));
  CHECK_THROWS_AS(p.allocate(f.ctx, budget::weight_bits(10)), budget_error);
  o.batches = 0;
  CHECK_THROWS_AS(hawq_policy{o}, value_error);
}

// ---------------------------------------------------------------------------------------------
// Tied layers (search_context::tied_layers): a residual block's conv1 and downsampling conv
// read the same tensor and must share their bits.

namespace {

// stem conv (1 -> 4) -> relu -> residual block (4 -> 8, stride 2, 1x1 downsample) -> global
// average -> fc (3).
std::shared_ptr<nn::sequential> residual_cnn(std::mt19937& rng) {
  auto m = std::make_shared<nn::sequential>();
  m->add(std::make_shared<nn::quantized_conv2d>(1, 4, 3, 1, 1, 1, false, rng));
  m->add(std::make_shared<nn::relu>());
  m->add(std::make_shared<nn::quantized_residual_block>(4, 8, 2, rng));
  m->add(std::make_shared<nn::global_avg_pool2d>());
  m->add(std::make_shared<nn::flatten>());
  m->add(std::make_shared<nn::quantized_linear>(8, 3, true, rng));
  return m;
}

struct residual_fixture {
  std::mt19937 rng{23};
  std::shared_ptr<nn::sequential> model = residual_cnn(rng);
  synthetic_data data{4, 16, 9};
  model_desc traced = trace_costs(*model, {1, 1, 8, 8});
  search_context ctx{*model,
                     traced.layers,
                     [this] { return data.batches.size(); },
                     [this](std::size_t i) { return data.batches.at(i); },
                     [this] { return data.batches.size(); },
                     [this](std::size_t i) { return data.batches.at(i); },
                     7,
                     nullptr,
                     traced.shared_input_groups};
};

}  // namespace

TEST_CASE(
    "tied layers: OMPQ, HAWQ and BMPQ give a residual block's conv1 and downsample equal bits") {
  residual_fixture f;
  REQUIRE(f.ctx.tied_layers.size() == 1);
  REQUIRE(f.ctx.tied_layers[0].size() == 2);
  const std::size_t t0 = f.ctx.tied_layers[0][0], t1 = f.ctx.tied_layers[0][1];
  REQUIRE(t0 != t1);
  const std::size_t n = f.ctx.costs.size();
  // Different costs per bit (3x3 vs 1x1 conv): an untied solver treats them differently.
  REQUIRE(f.ctx.costs[t0].params != f.ctx.costs[t1].params);

  // Each policy over a sweep of budgets, with and without the tie.
  auto sweep = [&](auto&& allocate, budget_kind kind, int lo_bits, int hi_bits, const char* what) {
    const double lo = budget::like_uniform(kind, f.ctx.costs, lo_bits, 8).value;
    const double hi = budget::like_uniform(kind, f.ctx.costs, hi_bits, 8).value;
    int untied_differ = 0;
    for (int k = 0; k <= 10; ++k) {
      const budget b{kind, lo + (hi - lo) * k / 10.0};
      INFO(what << " " << b.describe());
      const auto groups = f.ctx.tied_layers;
      const bit_config tied = allocate(b);
      f.ctx.tied_layers.clear();
      const bit_config untied = allocate(b);
      f.ctx.tied_layers = groups;
      CHECK(b.admits(f.ctx.costs, tied));
      CHECK(b.admits(f.ctx.costs, untied));
      CHECK(tied.w_bits[t0] == tied.w_bits[t1]);
      CHECK(tied.a_bits[t0] == tied.a_bits[t1]);
      untied_differ += untied.w_bits[t0] != untied.w_bits[t1];
    }
    INFO(what);
    CHECK(untied_differ > 0);  // the sweep holds budgets where the tie changes the answer
  };

  for (budget_kind kind : {budget_kind::weight_bits, budget_kind::bitops}) {
    for (bool exact : {false, true}) {
      ompq_options o;
      o.exact_ilp = exact;
      o.space.candidates = {2, 3, 4, 5, 6, 7, 8};
      sweep([&](const budget& b) { return ompq_policy(o).allocate(f.ctx, b); }, kind, 2, 8,
            exact ? "ompq exact" : "ompq rounding");
    }
    hawq_options h;
    h.hutchinson.probes = 2;
    sweep([&](const budget& b) { return hawq_policy(h).allocate(f.ctx, b); }, kind, 4, 8, "hawq");
    bmpq_options bo;
    bo.space.candidates = {1, 2, 3, 4, 5, 6, 8};
    bo.space.a_bits = 8;
    bo.probe_batches = 2;
    sweep(
        [&](const budget& b) {
          bmpq_policy p(bo);  // attaches itself: detach before it goes
          const auto c = p.allocate(f.ctx, b);
          nn::detach_policy(*f.model);
          return c;
        },
        kind, 1, 8, "bmpq");
  }

  // HAWQ's tied allocation is the optimum over the tied configurations (brute force over 4/8
  // per layer), with the sensitivities it reports.
  hawq_options h;
  h.hutchinson.probes = 2;
  hawq_policy p(h);
  const double c4 = budget::like_uniform(budget_kind::bitops, f.ctx.costs, 4, 4).value;
  const double c8 = budget::like_uniform(budget_kind::bitops, f.ctx.costs, 8, 8).value;
  for (double frac : {0.2, 0.5, 0.8}) {
    const auto b = budget::bitops(c4 + frac * (c8 - c4));
    const auto cfg = p.allocate(f.ctx, b);
    const auto& r = p.report();
    double best = 1e300, got = 0;
    for (std::size_t mask = 0; mask < (std::size_t{1} << n); ++mask) {
      if (((mask >> t0) & 1) != ((mask >> t1) & 1)) continue;
      bit_config bc = bit_config::uniform(n, 4, 4);
      double s = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const bool high = (mask >> i) & 1;
        bc.w_bits[i] = bc.a_bits[i] = high ? 8 : 4;
        s += r.sensitivity[i][high];
      }
      if (b.admits(f.ctx.costs, bc)) best = std::min(best, s);
    }
    for (std::size_t i = 0; i < n; ++i) got += r.sensitivity[i][cfg.w_bits[i] == 8];
    CHECK(got == doctest::Approx(best).epsilon(1e-12));
  }
}

TEST_CASE("tied layers: pins spread over a tie group; bad groups raise typed errors") {
  weight_search_space s;
  s.pin_first = true;
  s.edge_bits = 8;
  const std::vector<std::vector<std::size_t>> tie01{{0, 1}}, tie12{{1, 2}}, bad{{1, 4}};
  CHECK(s.pinned(4, "test", tie01) == std::vector<int>{8, 8, 0, 0});
  CHECK(s.pinned(4, "test", tie12) == std::vector<int>{8, 0, 0, 0});
  // overlapping groups join: {0,1} and {1,2} tie 0, 1 and 2
  const std::vector<std::vector<std::size_t>> chain{{0, 1}, {1, 2}};
  CHECK(s.pinned(4, "test", chain) == std::vector<int>{8, 8, 8, 0});
  CHECK(tie_classes(4, chain, "test") == std::vector<std::vector<std::size_t>>{{0, 1, 2}, {3}});
  CHECK_THROWS_AS(s.pinned(4, "test", bad), shape_error);
  s.pin_last = true;
  s.edge_bits = 8;
  s.fixed_w_bits = {0, 4, 0, 0};
  const std::vector<std::vector<std::size_t>> tie13{{1, 3}};
  CHECK_THROWS_AS(s.pinned(4, "test", tie13), value_error);  // 4 and 8 bits in one group
  // The cheapest config honours the spread pins.
  weight_search_space t;
  t.pin_first = true;
  CHECK(t.cheapest(3, "test", tie01).w_bits == std::vector<int>{8, 8, 2});
}
