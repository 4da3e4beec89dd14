// HAWQ-V3-style allocation: per-layer Hessian trace by Hutchinson's estimator (Rademacher
// probes) with finite-difference Hessian-vector products on the graph (two gradient
// evaluations at w +- eps v), sensitivity (Tr(H)/n) ||W - Q_b(W)||^2, and the exact ILP
// minimising the total sensitivity under the budget (4 or 8 bits by default).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <random>
#include <vector>

#include "mixq/autodiff/ops.hpp"
#include "mixq/autodiff/var.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/weight_allocation.hpp"

namespace mixq::search {

struct hutchinson_options {
  std::size_t probes = 16;  // Rademacher vectors
  /// Finite-difference step per parameter block: eps * RMS of the block's values (eps itself
  /// when the block is all zeros). Exact for a quadratic loss whatever the step.
  double relative_eps = 1e-2;
};

/// Hutchinson estimates of Tr(H_kk) for each parameter block k of the Hessian of `loss()`
/// w.r.t. `params` (trainable leaves): for each probe, every block gets its own Rademacher
/// vector v_k, Hv ~ (g(w + eps v) - g(w - eps v)) / (2 eps) by two gradient evaluations, and
/// v_k . (Hv)_k estimates Tr(H_kk) (cross-block terms vanish in expectation). Parameter values
/// are restored and their gradients zeroed afterwards. `loss` must rebuild the graph each call
/// and be a deterministic function of the parameters (fixed batch, eval-mode batch norm).
inline std::vector<double> hutchinson_traces(const std::function<autodiff::var()>& loss,
                                             std::span<const autodiff::var> params,
                                             std::mt19937_64& rng,
                                             const hutchinson_options& o = {}) {
  using autodiff::ftensor;
  if (params.empty())
    throw shape_error("hutchinson_traces: no parameters; expected at least one block");
  if (o.probes == 0) throw value_error("hutchinson_traces: 0 probes; expected >= 1");
  if (!(o.relative_eps > 0) || !std::isfinite(o.relative_eps))
    throw value_error(mixq::detail::cat("hutchinson_traces: relative_eps ", o.relative_eps,
                                        "; expected a finite value > 0"));
  for (const auto& p : params)
    if (!p.defined() || !p.requires_grad() || !p.is_leaf())
      throw value_error("hutchinson_traces: every parameter must be a trainable leaf var");
  const std::size_t nb = params.size();
  std::vector<ftensor> w0(nb), v(nb), g_plus(nb);
  std::vector<double> eps(nb), trace(nb, 0.0);
  for (std::size_t k = 0; k < nb; ++k) {
    w0[k] = params[k].value();
    double ss = 0;
    for (float x : w0[k]) ss += double(x) * x;
    const double rms = w0[k].size() ? std::sqrt(ss / double(w0[k].size())) : 0.0;
    eps[k] = rms > 0 ? o.relative_eps * rms : o.relative_eps;
    v[k] = ftensor(w0[k].shape());
  }
  auto gradients_at = [&](double sign, std::vector<ftensor>& out) {
    for (std::size_t k = 0; k < nb; ++k) {
      autodiff::var p = params[k];  // shares the node
      auto& w = p.value();
      for (std::size_t i = 0; i < w.size(); ++i)
        w[i] = float(double(w0[k][i]) + sign * eps[k] * double(v[k][i]));
      params[k].zero_grad();
    }
    autodiff::backward(loss());
    for (std::size_t k = 0; k < nb; ++k) out[k] = params[k].grad();
  };
  std::bernoulli_distribution coin(0.5);
  std::vector<ftensor> g_minus(nb);
  for (std::size_t t = 0; t < o.probes; ++t) {
    for (auto& vk : v)
      for (auto& x : vk) x = coin(rng) ? 1.0f : -1.0f;
    gradients_at(+1.0, g_plus);
    gradients_at(-1.0, g_minus);
    for (std::size_t k = 0; k < nb; ++k) {
      double s = 0;
      for (std::size_t i = 0; i < v[k].size(); ++i)
        s += double(v[k][i]) * (double(g_plus[k][i]) - double(g_minus[k][i]));
      trace[k] += s / (2.0 * eps[k]);
    }
  }
  for (std::size_t k = 0; k < nb; ++k) {
    autodiff::var p = params[k];
    p.value() = w0[k];
    params[k].zero_grad();
    trace[k] /= double(o.probes);
  }
  return trace;
}

struct hawq_options {
  weight_search_space space =
      weight_search_space::of({4, 8}, 8, true);  // W4A4 / W8A8 per layer, as HAWQ-V3 releases
  std::size_t batches = 1;                       // training batches the traces average over
  hutchinson_options hutchinson{};
};

/// What the last allocate() measured.
struct hawq_report {
  std::vector<double> trace;  // Tr(H_l) estimate per layer
  std::vector<std::vector<double>>
      sensitivity;  // [layer][candidate]: (max(Tr,0)/n) ||W - Q_b(W)||^2
  bit_config config;
  double cost = 0;
};

/// HAWQ-V3's allocation as an allocation_policy: traces of the model as it is (after the
/// driver's warm-up), batch norm in eval mode, then the exact ILP.
class hawq_policy {
 public:
  explicit hawq_policy(hawq_options o = {}) : opt_(std::move(o)) {
    if (opt_.batches == 0) throw value_error("hawq_policy: 0 batches; expected >= 1");
    if (opt_.space.candidates.empty() || opt_.space.candidates.front() < 2)
      throw bits_error("hawq_policy: weight-bit candidates must be >= 2");
  }

  bit_config allocate(search_context& c, const budget& b) {
    static constexpr const char* who = "hawq_policy";
    const auto pin = opt_.space.pinned(c.costs.size(), who, c.tied_layers);
    opt_.space.check_feasible(c.costs, b, who, c.tied_layers);
    auto layers = nn::quantized_layers(c.model);
    if (layers.size() != c.costs.size())
      throw shape_error(mixq::detail::cat(who, ": the model has ", layers.size(),
                                          " quantized layers but the context has ", c.costs.size(),
                                          " layer costs"));
    std::vector<autodiff::var> weights;
    for (auto* l : layers) weights.push_back(l->weight);
    const std::size_t nb = std::min(opt_.batches, c.train_batches());
    if (nb == 0) throw shape_error("hawq_policy: the context has no training batch");
    std::mt19937_64 rng(c.seed ^ 0x68617771ULL);
    hawq_report r;
    r.trace.assign(layers.size(), 0.0);
    const full_precision_scope fp(c.model);  // eval mode, no quantizer (smooth loss)
    for (std::size_t k = 0; k < nb; ++k) {
      const auto bt = c.train_batch(k);
      const auto images = autodiff::constant(bt.images);
      auto loss = [&] { return autodiff::cross_entropy(c.model(images), bt.labels); };
      const auto t = hutchinson_traces(loss, weights, rng, opt_.hutchinson);
      for (std::size_t i = 0; i < t.size(); ++i) r.trace[i] += t[i] / double(nb);
    }
    c.model.zero_grad();
    const auto& cand = opt_.space.candidates;
    r.sensitivity.assign(layers.size(), std::vector<double>(cand.size(), 0.0));
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& w = layers[i]->weight.value();
      for (std::size_t j = 0; j < cand.size(); ++j) {
        const auto q = symmetric_fake_quant(w.span(), cand[j]);
        double e = 0;
        for (std::size_t t = 0; t < w.size(); ++t) e += double(w[t] - q[t]) * double(w[t] - q[t]);
        // Away from a minimum a block's trace can be negative (the CE Hessian is not PSD);
        // negative curvature gives no second-order reason for bits: clamp at 0.
        r.sensitivity[i][j] = std::max(r.trace[i], 0.0) / double(w.size()) * e;
      }
    }
    auto value_of = [&](std::size_t i, int bits) {
      const auto it = std::find(cand.begin(), cand.end(), bits);
      return -r.sensitivity[i][std::size_t(it - cand.begin())];
    };
    r.config = solve_weight_allocation(c.costs, opt_.space, b, value_of, who, c.tied_layers);
    r.cost = b.cost_of(c.costs, r.config);
    if (c.log) *c.log << "hawq: allocation " << r.config.to_string() << "\n";
    (void)pin;
    report_ = std::move(r);
    return report_.config;
  }

  std::optional<bit_config> on_epoch_end(search_context&, const budget&, std::size_t) {
    return std::nullopt;
  }

  const hawq_report& report() const noexcept { return report_; }

 private:
  hawq_options opt_;
  hawq_report report_;
};

static_assert(allocation_policy<hawq_policy>);

}  // namespace mixq::search
