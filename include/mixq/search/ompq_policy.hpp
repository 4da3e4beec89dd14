// OMPQ (Orthogonal Mixed Precision Quantization) as an allocation policy: the outputs of every
// quantized layer on one batch (forward hooks), linear CKA between all pairs, importances
// exp(-beta * sum of similarities), OMPQ's LP and its budget-matching rounding (or the exact ILP
// on the same objective). No gradients; the driver then finetunes at the returned config.
#pragma once

#include <chrono>
#include <cmath>
#include <cstddef>
#include <optional>
#include <unordered_map>
#include <vector>

#include "mixq/autodiff/var.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/cka.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/weight_allocation.hpp"

namespace mixq::search {

/// The first `samples` images of a batch [B, ...] (all of them when B <= samples).
inline autodiff::ftensor first_samples(const autodiff::ftensor& images, std::size_t samples) {
  if (images.rank() < 1 || images.dim(0) <= samples) return images;
  shape_t s = images.shape();
  const std::size_t per = images.size() / s[0];
  s[0] = samples;
  return autodiff::ftensor(s, std::span<const float>(images.data(), samples * per));
}

/// The output of every quantized layer of `model` on `images` (one forward, no graph, model in
/// eval mode for the call), in nn::quantized_layers() order, each [B, ...] as the layer
/// produced it. Uses the layers' forward hooks (cleared afterwards). shape_error if a layer
/// did not run.
inline std::vector<autodiff::ftensor> record_layer_outputs(nn::module& model,
                                                           const autodiff::ftensor& images) {
  auto layers = nn::quantized_layers(model);
  if (layers.empty()) throw shape_error("record_layer_outputs: the model has no quantized layer");
  std::unordered_map<const nn::module*, std::size_t> index;
  for (std::size_t i = 0; i < layers.size(); ++i) index[layers[i]] = i;
  std::vector<autodiff::ftensor> out(layers.size());
  std::vector<bool> seen(layers.size(), false);
  struct restore {
    std::vector<nn::quantized_layer*>& layers;
    nn::module& model;
    bool training;
    ~restore() {
      for (auto* l : layers) l->set_forward_hook(nullptr);
      model.train(training);
    }
  } guard{layers, model, model.is_training()};
  for (auto* l : layers)
    l->set_forward_hook([&](nn::module& m, const autodiff::var&, const autodiff::var& y) {
      const std::size_t i = index.at(&m);
      if (!seen[i]) out[i] = y.value(), seen[i] = true;  // a layer run twice: its first call
    });
  model.eval();
  {
    autodiff::no_grad ng;
    (void)model(autodiff::constant(images));
  }
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (!seen[i])
      throw shape_error(mixq::detail::cat("record_layer_outputs: quantized layer ", i,
                                          " did not run in the forward pass"));
  return out;
}

/// OMPQ's importance of each unit from the pairwise similarities: gamma_i = sum_{j != i} S_ij,
/// theta_i = exp(-beta * gamma_i).
inline std::vector<double> ompq_importance(const std::vector<std::vector<double>>& similarity,
                                           double beta) {
  const std::size_t L = similarity.size();
  std::vector<double> theta(L);
  for (std::size_t i = 0; i < L; ++i) {
    if (similarity[i].size() != L)
      throw shape_error(mixq::detail::cat("ompq_importance: row ", i, " has ", similarity[i].size(),
                                          " entries; expected ", L));
    double gamma = 0;
    for (std::size_t j = 0; j < L; ++j)
      if (j != i) gamma += similarity[i][j];
    theta[i] = std::exp(-beta * gamma);
  }
  return theta;
}

/// The official code's LP objective coefficients: c_i = mean of theta_j for j >= i (0-based).
inline std::vector<double> ompq_coefficients(std::span<const double> theta) {
  std::vector<double> c(theta.size());
  double suffix = 0;
  for (std::size_t i = theta.size(); i-- > 0;) {
    suffix += theta[i];
    c[i] = suffix / double(theta.size() - i);
  }
  return c;
}

struct ompq_options {
  double beta = 1.0;  // importance sharpness (paper scripts: 3.3 .. 100)
  weight_search_space space = weight_search_space::of({2, 3, 4, 5, 6, 7, 8}, 8);
  std::size_t samples = 32;     // images of the feature batch (OMPQ: 32)
  std::size_t batch_index = 0;  // which training batch
  bool exact_ilp = false;       // exact ILP on the LP's objective instead of LP + rounding
};

/// What the last allocate() computed, for logs and benchmarks.
struct ompq_report {
  std::vector<std::size_t> searched;            // layer indices in the search
  std::vector<std::vector<double>> similarity;  // CKA between searched layers
  std::vector<double> theta, coefficient;       // per searched layer
  std::vector<double> real_bits;                // LP solution per searched layer
  double lp_cost = 0, rounded_cost = 0;         // in the budget's unit, all layers
  bool rounding_exhaustive = true;
  bit_config config;
  double seconds_features = 0, seconds_cka = 0, seconds_solve = 0;
  double seconds_total() const { return seconds_features + seconds_cka + seconds_solve; }
};

/// OMPQ as an allocation_policy (weights searched from the space's candidates, activations at
/// the space's a_bits). Candidates must be consecutive when the rounding is used (floor/ceil of
/// the LP bits must be candidates); the ILP accepts any set.
class ompq_policy {
 public:
  explicit ompq_policy(ompq_options o = {}) : opt_(std::move(o)) {
    if (!(opt_.beta >= 0) || !std::isfinite(opt_.beta))
      throw value_error(
          mixq::detail::cat("ompq_policy: beta ", opt_.beta, "; expected a finite value >= 0"));
    if (opt_.space.a_follows_w)
      throw value_error(
          "ompq_policy: OMPQ searches weight bits only; expected a_follows_w = false");
    if (opt_.samples < 2)
      throw shape_error(
          mixq::detail::cat("ompq_policy: ", opt_.samples, " feature samples; expected >= 2"));
  }

  bit_config allocate(search_context& c, const budget& b) {
    using clock = std::chrono::steady_clock;
    static constexpr const char* who = "ompq_policy";
    const auto& tied = c.tied_layers;  // e.g. a residual block's conv1 and downsampling conv
    const auto pin = opt_.space.pinned(c.costs.size(), who, tied);
    opt_.space.check_feasible(c.costs, b, who, tied);
    const auto& cand = opt_.space.candidates;
    if (!opt_.exact_ilp)
      for (std::size_t i = 1; i < cand.size(); ++i)
        if (cand[i] != cand[i - 1] + 1)
          throw bits_error(mixq::detail::cat(
              who, ": candidates must be consecutive bit-widths for the floor/ceil rounding (",
              cand[i - 1], " then ", cand[i], "); use exact_ilp for sparse sets"));
    if (opt_.batch_index >= c.train_batches())
      throw shape_error(mixq::detail::cat(who, ": feature batch ", opt_.batch_index, " of ",
                                          c.train_batches(), " training batches"));
    ompq_report r;
    for (std::size_t i = 0; i < pin.size(); ++i)
      if (!pin[i]) r.searched.push_back(i);

    auto t0 = clock::now();
    std::vector<autodiff::ftensor> outputs;
    {
      const full_precision_scope fp(c.model);  // OMPQ reads the float model's features
      outputs = record_layer_outputs(
          c.model, first_samples(c.train_batch(opt_.batch_index).images, opt_.samples));
    }
    if (outputs.size() != c.costs.size())
      throw shape_error(mixq::detail::cat(who, ": the model has ", outputs.size(),
                                          " quantized layers but the context has ", c.costs.size(),
                                          " layer costs"));
    std::vector<cka_features> feats;
    feats.reserve(r.searched.size());
    for (std::size_t i : r.searched) feats.emplace_back(outputs[i], who);
    auto t1 = clock::now();
    r.similarity = r.searched.empty() ? std::vector<std::vector<double>>{} : cka_matrix(feats);
    r.theta = ompq_importance(r.similarity, opt_.beta);
    r.coefficient = ompq_coefficients(r.theta);
    auto t2 = clock::now();

    // Value of w bits on searched layer k: c_k * w / 8 (OMPQ's x = b / 8).
    std::vector<double> coef(c.costs.size(), 0.0);
    for (std::size_t k = 0; k < r.searched.size(); ++k) coef[r.searched[k]] = r.coefficient[k];
    auto value_of = [&](std::size_t i, int w) { return coef[i] * double(w) / 8.0; };
    const auto problem = make_weight_problem(c.costs, opt_.space, b, value_of, who, tied);
    const auto lp = solve_allocation_lp(problem);
    std::vector<std::vector<double>> bits_attr;
    for (std::size_t i = 0; i < c.costs.size(); ++i) {
      std::vector<double> a;
      if (pin[i])
        a.push_back(pin[i]);
      else
        for (int w : cand) a.push_back(w);
      bits_attr.push_back(std::move(a));
    }
    const auto real = lp.expected(bits_attr);
    r.lp_cost = lp.cost;
    for (std::size_t i : r.searched) r.real_bits.push_back(real[i]);
    if (opt_.exact_ilp) {
      r.config = weight_config(c.costs, opt_.space, solve_allocation(problem).choice, who, tied);
    } else {
      // Rounding over the searched layers; pinned ones keep their bits. One rounding unit per
      // tie class (the LP gives tied layers equal real bits): unit cost = cost of one weight
      // bit of all its layers (both budget kinds are linear in w).
      std::vector<std::vector<std::size_t>> units;
      for (auto& cls : tie_classes(c.costs.size(), tied, who))
        if (!pin[cls.front()]) units.push_back(std::move(cls));
      std::vector<double> unit, unit_bits;
      for (const auto& u : units) {
        double cost = 0;
        for (std::size_t i : u)
          cost += b.kind == budget_kind::bitops ? layer_bitops(c.costs[i], 1, opt_.space.a_bits)
                                                : layer_size_bits(c.costs[i], 1);
        unit.push_back(cost);
        unit_bits.push_back(real[u.front()]);
      }
      r.config = opt_.space.cheapest(c.costs.size(), who, tied);
      if (!units.empty()) {
        const auto rounded = ompq_budget_matching_rounding(unit_bits, unit);
        r.rounding_exhaustive = rounded.exhaustive;
        for (std::size_t k = 0; k < units.size(); ++k)
          for (std::size_t i : units[k]) r.config.w_bits[i] = rounded.bits[k];
      }
    }
    r.rounded_cost = b.cost_of(c.costs, r.config);
    auto t3 = clock::now();
    r.seconds_features = std::chrono::duration<double>(t1 - t0).count();
    r.seconds_cka = std::chrono::duration<double>(t2 - t1).count();
    r.seconds_solve = std::chrono::duration<double>(t3 - t2).count();
    if (c.log)
      *c.log << "ompq: features " << r.seconds_features << " s, CKA " << r.seconds_cka
             << " s, LP+rounding " << r.seconds_solve << " s; config " << r.config.to_string()
             << "\n";
    report_ = r;
    return r.config;
  }

  std::optional<bit_config> on_epoch_end(search_context&, const budget&, std::size_t) {
    return std::nullopt;
  }

  const ompq_report& report() const noexcept { return report_; }
  const ompq_options& options() const noexcept { return opt_; }

 private:
  ompq_options opt_;
  ompq_report report_;
};

static_assert(allocation_policy<ompq_policy>);

}  // namespace mixq::search
