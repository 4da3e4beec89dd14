// dnas_policy: DNAS mixed-precision search (Wu et al., arXiv 1812.00090) as a
// differentiable_policy: a super net whose every quantized layer mixes candidate branches, each
// with its own weight copy, by Gumbel-softmax weights over per-layer logits.
//
// Everything but the abstract is [reconstruction] (algorithms.md §2; no official code):
//  - candidates: joint (w, a) pairs (one branch per pair, each its own weight copy and PACT
//    alpha) or separate weight / activation sets (one branch per weight bit-width with its own
//    weight copy; the activation is the mixture sum_j m_a[j] PACT_j(x) shared by the branches,
//    and the branch outputs are summed as one convolution on the mixed weight, which equals
//    the paper's sum of branch convolutions because a convolution is linear in its weight);
//  - quantizers quant::dorefa_weights and quant::pact (one alpha per activation branch; the
//    PACT knobs are nn::fixed_policy's: pact_settings);
//  - temperature tau_e = tau0 * exp(-tau_decay * e) per search epoch (FBNet's 5.0 / 0.045);
//  - loss CE * beta * (log(C / cost_unit))^gamma with C the cost under the mixture weights
//    of the last forward, sum_l sum_k m[l][k] cost[l][k] (sampled_cost(); expected_cost() is
//    the same under softmax(theta)); beta, gamma default to
//    FBNet's 0.2 / 0.6; cost_unit defaults to (all-minimum-bits cost) / e, so the log is >= 1
//    over the whole search space and the power is defined;
//  - alternating weight / architecture updates (update_scheme::alternating, the driver's
//    train / validation split);
//  - final choice: argmax, or N configurations sampled from softmax(theta) (seeded); among the
//    sampled ones within budget the one with the best validation accuracy using the super
//    net's own branch weights (a stand-in for the paper's "train each from scratch"); ties and
//    a missing validation set fall back to the most probable. If none is within budget (and
//    for argmax), the most probable is repaired greedily (least log-probability lost per cost
//    saved). Then (fill_budget, default on; this library's addition) the leftover budget is
//    spent: the most probable configuration costing between the choice's cost (or 98% of the
//    budget) and the budget. The chosen branch's weight is copied into the layer's weight for
//    the finetune.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "mixq/search/differentiable_common.hpp"

namespace mixq::search {

enum class dnas_choice { argmax, sample };

struct dnas_options {
  /// Joint candidates (w, a); when empty the separate sets below are used.
  std::vector<bit_pair> pairs;
  std::vector<int> w_bits{1, 2, 3, 4, 8};
  std::vector<int> a_bits{1, 2, 3, 4, 8};
  float tau0 = 5.0f;
  float tau_decay = 0.045f;
  bool hard_gumbel = false;  // straight-through one-hot samples in the forward
  float beta = 0.2f;
  float gamma = 0.6f;
  double cost_unit = 0;  // 0: (all-minimum-bits cost) / e
  pact_settings activations{};
  dnas_choice choice = dnas_choice::sample;
  std::size_t samples = 8;       // configurations sampled by derive()
  std::size_t eval_batches = 2;  // validation batches to rank the sampled configurations
  std::uint64_t seed = 0;        // Gumbel noise and sampling (reseeded from the context)
  budget_kind cost_kind = budget_kind::bitops;  // unit of expected_cost() before a budget is seen
  /// After the choice, spend the budget it left: the most probable configuration with cost
  /// in [max(its cost, (1 - fill_slack) T), T] (detail::fill_budget_exact, as EBS's default
  /// derive; this library's addition). On Fashion-MNIST one search epoch left DNAS at 85% of
  /// a W3A3 budget, 3.6 points under uniform.
  bool fill_budget = true;
  double fill_slack = 0.02;
  std::uint64_t fill_max_nodes = 1'000'000;
};

class dnas_policy : public nn::precision_policy {
 public:
  using var = autodiff::var;
  using ftensor = autodiff::ftensor;

  explicit dnas_policy(dnas_options o = {}) : o_(std::move(o)) {
    if (o_.pairs.empty()) {
      o_.w_bits = detail::checked_candidates(o_.w_bits, "dnas_policy", "weight");
      o_.a_bits = detail::checked_candidates(o_.a_bits, "dnas_policy", "activation");
    } else {
      for (const auto& p : o_.pairs)
        if (p.w < 1 || p.w > 8 || p.a < 1 || p.a > 8)
          throw bits_error(detail::cat("dnas_policy: candidate pair (w=", p.w, ", a=", p.a,
                                       "); expected bits 1..8"));
    }
    if (!(o_.tau0 > 0) || !(o_.tau_decay >= 0))
      throw value_error(detail::cat("dnas_policy: tau0 ", o_.tau0, " and tau_decay ", o_.tau_decay,
                                    "; expected tau0 > 0 and tau_decay >= 0"));
    if (!(o_.beta > 0) || !(o_.gamma > 0) || !(o_.cost_unit >= 0))
      throw value_error(detail::cat("dnas_policy: beta ", o_.beta, ", gamma ", o_.gamma,
                                    ", cost_unit ", o_.cost_unit,
                                    "; expected beta, gamma > 0 and cost_unit >= 0"));
    detail::check_pact_settings(o_.activations, "dnas_policy");
    if (o_.choice == dnas_choice::sample && o_.samples == 0)
      throw value_error("dnas_policy: samples must be >= 1 when choosing by sampling");
    tau_ = o_.tau0;
    kind_ = o_.cost_kind;
    rng_.seed(o_.seed);
  }

  bool joint() const noexcept { return !o_.pairs.empty(); }
  const dnas_options& options() const noexcept { return o_; }
  float temperature() const noexcept { return tau_; }
  search::update_scheme update_scheme() const noexcept { return update_scheme::alternating; }

  /// Layer costs (in quantized_layers() order); otherwise read from the last forward.
  void set_layer_costs(std::vector<layer_cost> costs) {
    costs_.set(std::move(costs), "dnas_policy");
  }

  // ---- precision_policy -----------------------------------------------------------------

  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    detail::check_two_sided(o_.activations, layers.size(), "dnas_policy");
    costs_.attach(layers);
    state_.clear();
    forced_.clear();
    const std::size_t nw = joint() ? o_.pairs.size() : o_.w_bits.size();
    const std::size_t na = joint() ? o_.pairs.size() : o_.a_bits.size();
    for (auto* l : layers) {
      layer_state s;
      s.logits_w = var::parameter(ftensor({nw}, 0.0f));
      if (!joint()) s.logits_a = var::parameter(ftensor({na}, 0.0f));
      for (std::size_t k = 0; k < nw; ++k) s.weights.push_back(var::parameter(l->weight.value()));
      for (std::size_t k = 0; k < na; ++k)
        s.alphas.push_back(detail::initial_alpha(o_.activations, *l));
      state_.push_back(std::move(s));
    }
  }

  /// Single-branch quantizers at the most probable candidate (forward() mixes all branches).
  var quantize_weights(std::size_t layer, const var& w) override {
    return detail::dorefa_weight(w, w_bit(detail::argmax(at(layer).logits_w.value().span())));
  }
  var quantize_activations(std::size_t layer, const var& x) override {
    auto& s = at(layer);
    const std::size_t j = detail::argmax((joint() ? s.logits_w : s.logits_a).value().span());
    return act(layer, x, s.alphas[j], a_bit(j));
  }

  /// The super-net edge: sum over branches of the mixture weight times the branch output.
  var forward(nn::quantized_layer& layer, const var& x) override {
    auto& s = at(layer.index());
    if (!forced_.empty()) {  // one fixed configuration (derive's ranking, evaluation)
      const auto [kw, ka] = forced_[layer.index()];
      s.mix_w = s.mix_a = var();
      return layer.compute(act(layer.index(), x, s.alphas[ka], a_bit(ka)),
                           detail::dorefa_weight(s.weights[kw], w_bit(kw)));
    }
    const bool sample = layer.is_training();
    s.mix_w = mixture(s.logits_w, sample);
    if (joint()) {
      std::vector<var> ys;
      for (std::size_t k = 0; k < o_.pairs.size(); ++k)
        ys.push_back(layer.compute(act(layer.index(), x, s.alphas[k], o_.pairs[k].a),
                                   detail::dorefa_weight(s.weights[k], o_.pairs[k].w)));
      return autodiff::weighted_sum(ys, s.mix_w);
    }
    s.mix_a = mixture(s.logits_a, sample);
    std::vector<var> xs, ws;
    for (std::size_t j = 0; j < o_.a_bits.size(); ++j)
      xs.push_back(act(layer.index(), x, s.alphas[j], o_.a_bits[j]));
    // sum_i m_w[i] conv(xm, Q_i(W_i)) = conv(xm, sum_i m_w[i] Q_i(W_i)): the layer is linear
    // in its weight, so one convolution on the mixed weight gives the branch sum and its
    // gradients (the bias enters once with weight sum_i m_w[i] = 1 instead of once per
    // branch). The per-branch form cost a convolution, its im2col buffer and three
    // activation-sized gradients per candidate (with the mixtures as one weighted_sum
    // node each: CPU time per search step down 3.3x, peak memory 1.27 GB -> 0.45 GB).
    for (std::size_t i = 0; i < o_.w_bits.size(); ++i)
      ws.push_back(detail::dorefa_weight(s.weights[i], o_.w_bits[i]));
    return layer.compute(autodiff::weighted_sum(xs, s.mix_a), autodiff::weighted_sum(ws, s.mix_w));
  }

  /// Branch weight copies and PACT alphas (trained with the model's weights).
  std::vector<var> parameters() override {
    std::vector<var> out;
    for (auto& s : state_) {
      out.insert(out.end(), s.weights.begin(), s.weights.end());
      out.insert(out.end(), s.alphas.begin(), s.alphas.end());
    }
    return out;
  }
  /// The logits theta (per layer: over pairs, or over weight then activation candidates).
  std::vector<var> architecture_parameters() override {
    std::vector<var> out;
    for (auto& s : state_) {
      out.push_back(s.logits_w);
      if (s.logits_a.defined()) out.push_back(s.logits_a);
    }
    return out;
  }

  // ---- differentiable_policy ------------------------------------------------------------

  /// C = sum_l sum_k p[l][k] cost(l, k) with p = softmax(theta): the expected cost of a
  /// configuration drawn from the learned distribution, in the unit of the last budget seen.
  /// Separate sets: MACs * E[w] * E[a] (or params * E[w]), the same expectation.
  var expected_cost() { return cost_under(false, "dnas_policy::expected_cost"); }

  /// The paper's relaxed cost: the same sum with m the mixture weights of the last forward
  /// (the Gumbel samples of a training forward; softmax(theta) before any, and after an
  /// evaluation forward). search_loss() uses this one.
  var sampled_cost() { return cost_under(true, "dnas_policy::sampled_cost"); }

  /// CE * beta * (log(C / cost_unit))^gamma. budget_error when b is below the all-minimum cost.
  var search_loss(const var& task_loss, const budget& b) {
    kind_ = b.kind;
    const auto& costs = costs_.get("dnas_policy::search_loss");
    b.check_feasible(costs, min_w(), min_a());
    const double unit = o_.cost_unit > 0 ? o_.cost_unit : min_cost(costs) / std::numbers::e;
    const var ratio = autodiff::mul(sampled_cost(), float(1.0 / unit));
    const var factor = autodiff::mul(autodiff::pow(autodiff::log(ratio), o_.gamma), o_.beta);
    return autodiff::mul(task_loss, factor);
  }

  /// Temperature annealing; the context's costs and seed are adopted at epoch 0.
  void on_search_epoch(const search_context& c, std::size_t epoch, std::size_t epochs) {
    (void)epochs;
    if (!c.costs.empty()) costs_.set(c.costs, "dnas_policy");
    if (epoch == 0) {
      std::seed_seq seq{std::uint32_t(c.seed), std::uint32_t(c.seed >> 32), std::uint32_t(o_.seed),
                        std::uint32_t(o_.seed >> 32), 0x646e6173u};
      rng_.seed(seq);
    }
    tau_ = o_.tau0 * std::exp(-o_.tau_decay * float(epoch));
  }

  /// The final configuration (see the header comment); copies the chosen branch weights into
  /// the layers' weights.
  bit_config derive(const search_context& c, const budget& b) {
    kind_ = b.kind;
    if (!c.costs.empty()) costs_.set(c.costs, "dnas_policy");
    const auto& costs = costs_.get("dnas_policy::derive");
    check_attached();
    b.check_feasible(costs, min_w(), min_a());
    const auto choices = layer_choices();
    std::vector<std::size_t> best(choices.size());
    for (std::size_t l = 0; l < choices.size(); ++l)
      for (std::size_t k = 1; k < choices[l].size(); ++k)
        if (choices[l][k].logp > choices[l][best[l]].logp) best[l] = k;
    std::vector<std::size_t> pick;
    if (o_.choice == dnas_choice::sample) pick = pick_sampled(c, b, choices, costs);
    if (pick.empty()) pick = detail::repair_to_budget(choices, best, costs, b, "dnas_policy");
    if (o_.fill_budget) {
      const auto start = pick;
      pick = detail::fill_budget_exact(choices, start, costs, b, o_.fill_slack, o_.fill_max_nodes)
                 .chosen;
      if (c.log)
        *c.log << "dnas: chosen " << detail::config_of(choices, start).to_string() << " ("
               << 100 * detail::choices_cost(choices, start, costs, b.kind) / b.value
               << "% of the budget), filled " << detail::config_of(choices, pick).to_string()
               << " (" << 100 * detail::choices_cost(choices, pick, costs, b.kind) / b.value
               << "%)\n";
    }
    set_forced(pick);
    for (std::size_t l = 0; l < state_.size(); ++l)
      costs_.layers()[l]->weight.value() = state_[l].weights[forced_[l].first].value();
    forced_.clear();
    return detail::config_of(choices, pick);
  }

  /// Run every layer with one configuration's branches (std::nullopt: back to the mixture).
  /// bits_error when a bit-width is not a candidate of that layer.
  void force_config(const std::optional<bit_config>& config) {
    if (!config) {
      forced_.clear();
      return;
    }
    check_attached();
    config->validate(state_.size());
    const auto choices = layer_choices();
    std::vector<std::size_t> pick(choices.size());
    for (std::size_t l = 0; l < choices.size(); ++l) {
      std::size_t k = 0;
      while (k < choices[l].size() &&
             !(choices[l][k].w == config->w_bits[l] && choices[l][k].a == config->a_bits[l]))
        ++k;
      if (k == choices[l].size())
        throw bits_error(detail::cat("dnas_policy::force_config: layer ", l, " W",
                                     config->w_bits[l], "A", config->a_bits[l],
                                     " is not a candidate"));
      pick[l] = k;
    }
    set_forced(pick);
  }

 private:
  struct layer_state {
    var logits_w, logits_a;
    std::vector<var> weights, alphas;
    var mix_w, mix_a;  // mixture weights of the last forward
  };

  var cost_under(bool last_mixture, const char* who) {
    const auto& costs = costs_.get(who);
    check_attached();
    std::vector<var> mw, ma;
    for (auto& s : state_) {
      mw.push_back(last_mixture && s.mix_w.defined() ? s.mix_w : autodiff::softmax(s.logits_w));
      if (!joint())
        ma.push_back(last_mixture && s.mix_a.defined() ? s.mix_a : autodiff::softmax(s.logits_a));
    }
    const model_desc desc = detail::desc_of(costs);
    if (joint()) return mixture_cost(desc, mw, o_.pairs, detail::metric_of(kind_));
    return expected_bits_cost(desc, mw, o_.w_bits, ma, o_.a_bits, detail::metric_of(kind_));
  }
  var act(std::size_t layer, const var& x, const var& alpha, int bits) const {
    return detail::pact_activation(o_.activations, layer, x, alpha, bits);
  }
  layer_state& at(std::size_t l) {
    if (l >= state_.size())
      throw shape_error(detail::cat("dnas_policy: layer ", l, " of ", state_.size(),
                                    "; attach the policy to the model first"));
    return state_[l];
  }
  void check_attached() const {
    if (state_.empty())
      throw value_error("dnas_policy: not attached to a model; call nn::attach_policy first");
  }
  var mixture(const var& logits, bool sample) {
    if (!sample) return autodiff::softmax(logits);
    return autodiff::gumbel_softmax(logits, tau_, rng_, o_.hard_gumbel);
  }
  int w_bit(std::size_t k) const { return joint() ? o_.pairs[k].w : o_.w_bits[k]; }
  int a_bit(std::size_t k) const { return joint() ? o_.pairs[k].a : o_.a_bits[k]; }
  int min_w() const {
    int m = 8;
    for (std::size_t k = 0; k < (joint() ? o_.pairs.size() : o_.w_bits.size()); ++k)
      m = std::min(m, w_bit(k));
    return m;
  }
  int min_a() const {
    int m = 8;
    for (std::size_t k = 0; k < (joint() ? o_.pairs.size() : o_.a_bits.size()); ++k)
      m = std::min(m, a_bit(k));
    return m;
  }
  /// Cheapest configuration (for the default cost unit): per layer the cheapest candidate.
  double min_cost(const std::vector<layer_cost>& costs) const {
    double t = 0;
    for (const auto& lc : costs) {
      double m = std::numeric_limits<double>::infinity();
      if (joint())
        for (const auto& p : o_.pairs) m = std::min(m, detail::unit_cost(lc, kind_, p.w, p.a));
      else
        m = detail::unit_cost(lc, kind_, min_w(), min_a());
      t += m;
    }
    return t;
  }
  /// Per layer every (w, a) choice with its log-probability under softmax(theta).
  std::vector<std::vector<detail::layer_choice>> layer_choices() const {
    std::vector<std::vector<detail::layer_choice>> out;
    for (const auto& s : state_) {
      const auto lw = detail::log_probs(s.logits_w.value().span());
      std::vector<detail::layer_choice> ch;
      if (joint()) {
        for (std::size_t k = 0; k < o_.pairs.size(); ++k)
          ch.push_back({o_.pairs[k].w, o_.pairs[k].a, lw[k]});
      } else {
        const auto la = detail::log_probs(s.logits_a.value().span());
        for (std::size_t i = 0; i < o_.w_bits.size(); ++i)
          for (std::size_t j = 0; j < o_.a_bits.size(); ++j)
            ch.push_back({o_.w_bits[i], o_.a_bits[j], lw[i] + la[j]});
      }
      out.push_back(std::move(ch));
    }
    return out;
  }
  /// Choice index -> (weight branch, activation branch).
  void set_forced(const std::vector<std::size_t>& pick) {
    forced_.clear();
    for (std::size_t k : pick) {
      if (joint())
        forced_.push_back({k, k});
      else
        forced_.push_back({k / o_.a_bits.size(), k % o_.a_bits.size()});
    }
  }
  /// Samples configurations, keeps those within budget, ranks them (see the header comment).
  /// Empty when no sample is within budget.
  std::vector<std::size_t> pick_sampled(const search_context& c, const budget& b,
                                        const std::vector<std::vector<detail::layer_choice>>& ch,
                                        const std::vector<layer_cost>& costs) {
    std::seed_seq seq{std::uint32_t(c.seed), std::uint32_t(c.seed >> 32), std::uint32_t(o_.seed),
                      std::uint32_t(o_.seed >> 32), 0x73616d70u};
    std::mt19937_64 rng(seq);
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    std::set<std::vector<std::size_t>> seen;
    std::vector<std::vector<std::size_t>> ok;
    for (std::size_t n = 0; n < o_.samples; ++n) {
      std::vector<std::size_t> pick;
      for (const auto& layer : ch) {
        double u = uni(rng), acc = 0;
        std::size_t k = 0;
        for (; k + 1 < layer.size(); ++k) {
          acc += std::exp(layer[k].logp);
          if (u < acc) break;
        }
        pick.push_back(k);
      }
      if (!seen.insert(pick).second) continue;
      if (detail::choices_cost(ch, pick, costs, b.kind) <= b.value * (1 + 1e-9))
        ok.push_back(std::move(pick));
    }
    if (ok.empty()) return {};
    auto logp = [&](const std::vector<std::size_t>& p) {
      double s = 0;
      for (std::size_t l = 0; l < p.size(); ++l) s += ch[l][p[l]].logp;
      return s;
    };
    const std::size_t nval = c.val_batches ? c.val_batches() : 0;
    std::vector<double> acc(ok.size(), 0.0);
    if (nval > 0 && c.val_batch && o_.eval_batches > 0 && ok.size() > 1) {
      const bool was_training = c.model.is_training();
      c.model.eval();
      autodiff::no_grad ng;
      for (std::size_t i = 0; i < ok.size(); ++i) {
        set_forced(ok[i]);
        std::size_t right = 0, total = 0;
        for (std::size_t bi = 0; bi < std::min(nval, o_.eval_batches); ++bi) {
          const batch bt = c.val_batch(bi);
          const var logits = c.model(autodiff::constant(bt.images));
          const std::size_t N = logits.shape()[0], C = logits.shape()[1];
          for (std::size_t r = 0; r < N; ++r) {
            const float* row = logits.value().data() + r * C;
            right += int(std::max_element(row, row + C) - row) == bt.labels[r];
          }
          total += N;
        }
        acc[i] = total ? double(right) / double(total) : 0.0;
      }
      forced_.clear();
      c.model.train(was_training);
    }
    std::size_t best = 0;
    for (std::size_t i = 1; i < ok.size(); ++i)
      if (acc[i] > acc[best] || (acc[i] == acc[best] && logp(ok[i]) > logp(ok[best]))) best = i;
    return ok[best];
  }

  dnas_options o_;
  std::vector<layer_state> state_;
  std::vector<std::pair<std::size_t, std::size_t>> forced_;
  detail::layer_cost_cache costs_;
  std::mt19937_64 rng_;
  float tau_ = 5.0f;
  budget_kind kind_ = budget_kind::bitops;
};

static_assert(differentiable_policy<dnas_policy>);

}  // namespace mixq::search
