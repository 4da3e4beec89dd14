// Differentiable expected costs as autodiff vars, for the regularisers of the search policies:
// FracBits (MACs * lambda_w * lambda_a, or size, per layer or kernel-wise lambdas), EBS/EdMIPS
// (product of expected bits under probability vectors) and DNAS (mixture of candidate costs).
// Each wraps the plain-double formula of cost.hpp (value and exact gradient) in one graph node,
// so the formulas exist once.
#pragma once

#include <span>
#include <vector>

#include "mixq/autodiff/ops.hpp"
#include "mixq/quant/fracbits.hpp"
#include "mixq/search/cost.hpp"

namespace mixq::search {

namespace detail {
/// A one-element var with value `scale * value` and d/d parents[k][j] = scale * grads[k][j].
inline autodiff::var scalar_node(std::vector<autodiff::var> parents, double value,
                                 std::vector<std::vector<double>> grads, double scale,
                                 const char* op) {
  return autodiff::detail::make_result(
      autodiff::ftensor({1}, float(value * scale)), std::move(parents), op,
      [grads = std::move(grads), scale](autodiff::node& self) {
        const double g = double(self.grad[0]) * scale;
        for (std::size_t k = 0; k < grads.size(); ++k)
          if (autodiff::ftensor* gp = autodiff::detail::parent_grad(self, k))
            for (std::size_t j = 0; j < grads[k].size(); ++j) (*gp)[j] += float(g * grads[k][j]);
      });
}

inline std::vector<double> values_of(const autodiff::var& v) {
  return std::vector<double>(v.value().begin(), v.value().end());
}

inline void check_count(std::size_t got, std::size_t n, const char* who, const char* what) {
  if (got != n)
    throw shape_error(cat(who, ": ", got, " ", what, "; expected ", n, " (one per layer)"));
}
}  // namespace detail

/// FracBits' cost of real bit-widths: per layer lambda_w (shape [1], or [C_out] kernel-wise)
/// and lambda_a (shape [1]). Each lambda is clamped to `range` (gradient 0 outside); a
/// kernel-wise layer costs MACs * mean_c(lambda_w[c]) * lambda_a (= (MACs / C_out) *
/// sum_c lambda_w[c] lambda_a), size params * mean_c(lambda_w[c]). Edge-layer rules as in
/// evaluate() (FracBits: first layer W8A8, last W8). Returns scale * cost (e.g. 1e-9 for
/// GBitOps, 1 / bits_per_unit(unit) for MB).
inline autodiff::var fracbits_cost(const model_desc& model, std::span<const autodiff::var> lambda_w,
                                   std::span<const autodiff::var> lambda_a, cost_metric metric,
                                   const cost_conventions& conv = {},
                                   const quant::bit_range& range = {}, double scale = 1.0) {
  const std::size_t n = model.size();
  detail::check_count(lambda_w.size(), n, "fracbits_cost", "weight bit-widths");
  detail::check_count(lambda_a.size(), n, "fracbits_cost", "activation bit-widths");
  range.validate();
  std::vector<autodiff::var> w_mean, a_clamped;
  std::vector<double> w(n), a(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t out = model.layers[i].out_channels;
    if (lambda_w[i].size() != 1 && std::int64_t(lambda_w[i].size()) != out)
      throw shape_error(detail::cat("fracbits_cost: layer ", i, " has ", lambda_w[i].size(),
                                    " weight bit-widths; expected 1 or ", out,
                                    " (one per output channel)"));
    if (lambda_a[i].size() != 1)
      throw shape_error(detail::cat("fracbits_cost: layer ", i, " has ", lambda_a[i].size(),
                                    " activation bit-widths; expected 1"));
    const autodiff::var lw = quant::clamp_bits(lambda_w[i], range);
    w_mean.push_back(lw.size() == 1 ? lw : autodiff::mean(lw));
    a_clamped.push_back(quant::clamp_bits(lambda_a[i], range));
    w[i] = w_mean.back().value()[0];
    a[i] = a_clamped.back().value()[0];
  }
  const relaxed_bits_cost r =
      fracbits_cost(model, w, a, metric, conv, range.min_bits, range.max_bits);
  std::vector<autodiff::var> parents = w_mean;
  parents.insert(parents.end(), a_clamped.begin(), a_clamped.end());
  std::vector<std::vector<double>> grads;
  for (std::size_t i = 0; i < n; ++i) grads.push_back({r.d_w_bits[i]});
  for (std::size_t i = 0; i < n; ++i) grads.push_back({r.d_a_bits[i]});
  return detail::scalar_node(std::move(parents), r.value, std::move(grads), scale, "fracbits_cost");
}

/// EBS / EdMIPS: per layer probability vars p_w[l] over `w_candidates` and p_a[l] over
/// `a_candidates` (e.g. autodiff::softmax of the strengths); cost = sum MACs * E[w] * E[a] or
/// params * E[w] (+ extras). Returns scale * cost.
inline autodiff::var expected_bits_cost(const model_desc& model, std::span<const autodiff::var> p_w,
                                        std::span<const int> w_candidates,
                                        std::span<const autodiff::var> p_a,
                                        std::span<const int> a_candidates, cost_metric metric,
                                        const cost_conventions& conv = {}, double scale = 1.0) {
  const std::size_t n = model.size();
  detail::check_count(p_w.size(), n, "expected_bits_cost", "weight probability vectors");
  detail::check_count(p_a.size(), n, "expected_bits_cost", "activation probability vectors");
  std::vector<std::vector<double>> pw, pa;
  for (const auto& v : p_w) pw.push_back(detail::values_of(v));
  for (const auto& v : p_a) pa.push_back(detail::values_of(v));
  relaxed_prob_cost r =
      expected_bits_cost(model, std::span<const std::vector<double>>(pw), w_candidates,
                         std::span<const std::vector<double>>(pa), a_candidates, metric, conv);
  std::vector<autodiff::var> parents(p_w.begin(), p_w.end());
  parents.insert(parents.end(), p_a.begin(), p_a.end());
  std::vector<std::vector<double>> grads = std::move(r.d_p_w);
  for (auto& g : r.d_p_a) grads.push_back(std::move(g));
  return detail::scalar_node(std::move(parents), r.value, std::move(grads), scale,
                             "expected_bits_cost");
}

/// DNAS: per layer mixture weights m[l] over `candidates` (e.g. Gumbel-softmax samples);
/// cost = sum_l sum_k m[l][k] cost(l, k). Returns scale * cost.
inline autodiff::var mixture_cost(const model_desc& model, std::span<const autodiff::var> m,
                                  std::span<const bit_pair> candidates, cost_metric metric,
                                  const cost_conventions& conv = {}, double scale = 1.0) {
  detail::check_count(m.size(), model.size(), "mixture_cost", "mixture vectors");
  std::vector<std::vector<double>> mv;
  for (const auto& v : m) mv.push_back(detail::values_of(v));
  relaxed_mixture_cost r =
      mixture_cost(model, std::span<const std::vector<double>>(mv), candidates, metric, conv);
  return detail::scalar_node(std::vector<autodiff::var>(m.begin(), m.end()), r.value,
                             std::move(r.d_m), scale, "mixture_cost");
}

}  // namespace mixq::search
