// Allocation policies: linear CKA against a plain H K H reference and its invariances
// (identical features, orthogonal transforms, isotropic scaling, symmetry, range, both forms);
// bad inputs of each part.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mixq/search/cka.hpp"

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
