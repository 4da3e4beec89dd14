// Linear CKA (centred kernel alignment) between feature matrices of n samples: OMPQ's
// "orthogonality" between layer features. Both the Gram form (n x n) and the feature-space
// form (d1 x d2) are provided; cka() and cka_matrix() pick the cheaper one. Double accumulation.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/tensor.hpp"

namespace mixq::search {

/// Which form computes the cross term <Kc_x, Kc_y>_F = ||Xc^T Yc||_F^2.
enum class cka_form {
  automatic,  // the cheaper of the two for the shapes at hand
  gram,       // centred n x n Gram matrices: n^2 (d_x + d_y) work
  feature,    // the d_x x d_y cross-covariance: n d_x d_y work
};

/// One layer's features, centred per column (double), flattened to n x d: what every CKA
/// evaluation needs; the Gram matrix and the self-similarity norm are computed once, lazily.
class cka_features {
 public:
  /// `features` has rank >= 2; dim 0 is the sample count n (>= 2), the rest is flattened.
  explicit cka_features(const tensor<float>& features, const char* who = "cka") {
    if (features.rank() < 2)
      throw shape_error(mixq::detail::cat(who, ": features of shape ",
                                          shape_string(features.shape()),
                                          "; expected rank >= 2 (samples x features...)"));
    n_ = features.dim(0);
    d_ = n_ ? features.size() / n_ : 0;
    if (n_ < 2 || d_ == 0)
      throw shape_error(mixq::detail::cat(who, ": features of shape ",
                                          shape_string(features.shape()),
                                          "; expected at least 2 samples and 1 feature"));
    x_.assign(n_ * d_, 0.0);
    std::vector<double> mean(d_, 0.0);
    const float* src = features.data();
    for (std::size_t i = 0; i < n_ * d_; ++i) {
      if (!std::isfinite(src[i]))
        throw value_error(mixq::detail::cat(who, ": feature ", i % d_, " of sample ", i / d_,
                                            " is ", src[i], "; expected finite values"));
      x_[i] = src[i];
      mean[i % d_] += src[i];
    }
    for (auto& m : mean) m /= double(n_);
    for (std::size_t r = 0; r < n_; ++r)
      for (std::size_t c = 0; c < d_; ++c) x_[r * d_ + c] -= mean[c];
  }

  std::size_t samples() const noexcept { return n_; }
  std::size_t features() const noexcept { return d_; }
  /// Column-centred features, row-major n x d.
  std::span<const double> centred() const noexcept { return x_; }

  /// Kc = Xc Xc^T (= H X X^T H), row-major n x n.
  const std::vector<double>& gram() const {
    if (gram_.empty()) {
      gram_.assign(n_ * n_, 0.0);
      for (std::size_t a = 0; a < n_; ++a)
        for (std::size_t b = a; b < n_; ++b) {
          const double* ra = x_.data() + a * d_;
          const double* rb = x_.data() + b * d_;
          double s = 0;
          for (std::size_t k = 0; k < d_; ++k) s += ra[k] * rb[k];
          gram_[a * n_ + b] = gram_[b * n_ + a] = s;
        }
    }
    return gram_;
  }

  /// ||Kc||_F = ||Xc^T Xc||_F, by whichever side is smaller.
  double self_norm() const {
    if (norm_ < 0) {
      double s = 0;
      if (n_ <= d_) {
        for (double v : gram()) s += v * v;
      } else {
        const auto c = cross(*this, *this);
        for (double v : c) s += v * v;
      }
      norm_ = std::sqrt(s);
    }
    return norm_;
  }

  /// Xc^T Yc (d_x x d_y, row-major) of two feature sets with the same samples.
  static std::vector<double> cross(const cka_features& x, const cka_features& y) {
    std::vector<double> c(x.d_ * y.d_, 0.0);
    for (std::size_t r = 0; r < x.n_; ++r) {
      const double* xr = x.x_.data() + r * x.d_;
      const double* yr = y.x_.data() + r * y.d_;
      for (std::size_t p = 0; p < x.d_; ++p) {
        const double xp = xr[p];
        double* out = c.data() + p * y.d_;
        for (std::size_t q = 0; q < y.d_; ++q) out[q] += xp * yr[q];
      }
    }
    return c;
  }

 private:
  std::size_t n_ = 0, d_ = 0;
  std::vector<double> x_;
  mutable std::vector<double> gram_;
  mutable double norm_ = -1;
};

namespace detail {
/// Work of each form for one pair, counting the Gram matrices not yet computed.
inline bool prefer_feature_form(const cka_features& x, const cka_features& y) {
  const double n = double(x.samples());
  const double feature = n * double(x.features()) * double(y.features());
  const double gram = n * n * (double(x.features()) + double(y.features()) + 1.0);
  return feature < gram;
}
}  // namespace detail

/// Linear CKA of two centred feature sets: <Kc_x, Kc_y>_F / (||Kc_x||_F ||Kc_y||_F), in [0, 1].
/// A feature set with no variance (every sample equal) has no direction to compare: 0.
inline double cka(const cka_features& x, const cka_features& y,
                  cka_form form = cka_form::automatic) {
  if (x.samples() != y.samples())
    throw shape_error(mixq::detail::cat("cka: feature sets of ", x.samples(), " and ", y.samples(),
                                        " samples; expected the same batch for both"));
  if (form == cka_form::automatic)
    form = detail::prefer_feature_form(x, y) ? cka_form::feature : cka_form::gram;
  double num = 0;
  if (form == cka_form::feature) {
    for (double v : cka_features::cross(x, y)) num += v * v;
  } else {
    const auto& kx = x.gram();
    const auto& ky = y.gram();
    for (std::size_t i = 0; i < kx.size(); ++i) num += kx[i] * ky[i];
  }
  const double den = x.self_norm() * y.self_norm();
  if (!(den > 0)) return 0.0;
  return std::clamp(num / den, 0.0, 1.0);  // clamp only absorbs rounding
}

/// Linear CKA of two feature tensors (dim 0 = samples, the rest flattened per sample).
inline double cka(const tensor<float>& x, const tensor<float>& y,
                  cka_form form = cka_form::automatic) {
  if (x.rank() >= 1 && y.rank() >= 1 && x.dim(0) != y.dim(0))
    throw shape_error(mixq::detail::cat("cka: feature tensors of shapes ", shape_string(x.shape()),
                                        " and ", shape_string(y.shape()),
                                        "; expected the same sample count (dim 0)"));
  return cka(cka_features(x), cka_features(y), form);
}

/// CKA between every pair of feature sets (symmetric, ones on the diagonal for sets with
/// variance). Each pair uses the cheaper form; Gram matrices are shared across pairs.
inline std::vector<std::vector<double>> cka_matrix(std::span<const cka_features> sets,
                                                   cka_form form = cka_form::automatic) {
  if (sets.empty())
    throw shape_error("cka_matrix: no feature sets; expected at least one layer's features");
  for (std::size_t i = 1; i < sets.size(); ++i)
    if (sets[i].samples() != sets[0].samples())
      throw shape_error(mixq::detail::cat("cka_matrix: feature set ", i, " has ", sets[i].samples(),
                                          " samples and set 0 has ", sets[0].samples(),
                                          "; expected the same batch"));
  const std::size_t L = sets.size();
  std::vector<std::vector<double>> m(L, std::vector<double>(L, 0.0));
  for (std::size_t i = 0; i < L; ++i) {
    m[i][i] = sets[i].self_norm() > 0 ? 1.0 : 0.0;
    for (std::size_t j = i + 1; j < L; ++j) m[i][j] = m[j][i] = cka(sets[i], sets[j], form);
  }
  return m;
}

}  // namespace mixq::search
