// The search driver: search::run(model, data, policy, budget, options) takes any
// differentiable_policy or allocation_policy through the same phases (warm-up, search, derive,
// finetune at the fixed config), with the training loop's progress display, and returns a
// search_result (config, cost figures, accuracy and time per phase). Also
// input_statistics() / signed_input_layers(): the sign and range of each quantized layer's
// input (two-sided PACT, initial clip levels).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mixq/autodiff.hpp"
#include "mixq/core/error.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/optim.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/nn/train.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/result.hpp"
#include "mixq/search/trace.hpp"

namespace mixq::search {

// ---- signed inputs ---------------------------------------------------------------------------

namespace detail {
/// Passes everything through unchanged and records each layer's input values.
class input_probe_policy : public nn::precision_policy {
 public:
  std::vector<std::vector<float>> inputs;
  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    inputs.assign(layers.size(), {});
  }
  autodiff::var quantize_weights(std::size_t, const autodiff::var& w) override { return w; }
  autodiff::var quantize_activations(std::size_t layer, const autodiff::var& x) override {
    inputs.at(layer).assign(x.value().begin(), x.value().end());
    return x;
  }
};
}  // namespace detail

/// Per quantized layer, what its input looked like on one batch.
struct layer_input_stats {
  bool has_negative = false;  // some input value < 0 (a signed range is needed)
  float abs_quantile = 0;     // the requested quantile of |input|
};

/// Input statistics of every quantized layer on `images` (one forward in eval mode without a
/// graph; the model is left detached from any precision policy). `quantile` in [0, 1].
inline std::vector<layer_input_stats> input_statistics(nn::module& model,
                                                       const autodiff::ftensor& images,
                                                       double quantile = 0.999) {
  if (!(quantile >= 0 && quantile <= 1))
    throw value_error(
        mixq::detail::cat("input_statistics: quantile ", quantile, "; expected 0..1"));
  detail::input_probe_policy probe;
  nn::attach_policy(model, probe);
  const bool was_training = model.is_training();
  model.eval();
  try {
    autodiff::no_grad ng;
    (void)model(autodiff::constant(images));
  } catch (...) {
    nn::detach_policy(model);
    model.train(was_training);
    throw;
  }
  nn::detach_policy(model);
  model.train(was_training);
  std::vector<layer_input_stats> out(probe.inputs.size());
  for (std::size_t l = 0; l < out.size(); ++l) {
    auto& v = probe.inputs[l];
    if (v.empty()) continue;
    out[l].has_negative = std::any_of(v.begin(), v.end(), [](float f) { return f < 0.0f; });
    for (auto& f : v) f = std::fabs(f);
    const auto k = std::size_t(std::llround(quantile * double(v.size() - 1)));
    std::nth_element(v.begin(), v.begin() + std::ptrdiff_t(k), v.end());
    out[l].abs_quantile = v[k];
  }
  return out;
}

/// The quantized layers (by index) whose input has negative values on `images` (e.g. the
/// first conv reading standardised pixels): their activation quantizers need a signed range
/// (nn::fixed_policy_options::two_sided_layers).
inline std::vector<std::size_t> signed_input_layers(nn::module& model,
                                                    const autodiff::ftensor& images) {
  std::vector<std::size_t> out;
  const auto st = input_statistics(model, images);
  for (std::size_t l = 0; l < st.size(); ++l)
    if (st[l].has_negative) out.push_back(l);
  return out;
}

// ---- data -----------------------------------------------------------------------------------

/// Images [N, C, H, W] and their labels, viewed (the caller keeps them alive during run()).
struct labelled_set {
  const autodiff::ftensor& images;
  std::span<const int> labels;
};

/// The training set (split by the driver into train and validation parts) and the test set
/// (accuracy per phase; may be empty, then no accuracy is reported).
struct search_data {
  labelled_set train;
  labelled_set test;
};

namespace detail {
inline std::uint64_t mix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
inline void seeded_shuffle(std::vector<std::size_t>& v, std::uint64_t seed) {
  std::uint64_t s = seed;
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[std::size_t(mix64(s) % i)]);
}

/// Mini-batches over a subset of a labelled set; with shuffle, set_epoch(e) draws epoch e's
/// order from (seed, e). The interface nn::train_epoch / nn::evaluate expect.
class index_batches {
 public:
  index_batches(const labelled_set& set, std::vector<std::size_t> indices, std::size_t batch_size,
                bool shuffle, std::uint64_t seed)
      : set_(&set),
        idx_(std::move(indices)),
        order_(idx_),
        bs_(batch_size),
        shuffle_(shuffle),
        seed_(seed) {
    set_epoch(0);
  }
  void set_epoch(std::size_t e) {
    order_ = idx_;
    if (shuffle_) seeded_shuffle(order_, seed_ ^ (0xd1b54a32d192ed03ull * (e + 1)));
  }
  std::size_t size() const noexcept { return (idx_.size() + bs_ - 1) / bs_; }
  std::size_t samples() const noexcept { return idx_.size(); }
  batch operator[](std::size_t i) const {
    if (i >= size())
      throw value_error(
          mixq::detail::cat("search: batch index ", i, " out of range (", size(), " batches)"));
    const std::size_t lo = i * bs_, hi = std::min(lo + bs_, order_.size());
    shape_t s = set_->images.shape();
    const std::size_t per = set_->images.size() / s[0];
    s[0] = hi - lo;
    batch b{autodiff::ftensor(s), std::vector<int>(hi - lo)};
    for (std::size_t k = lo; k < hi; ++k) {
      std::copy_n(set_->images.data() + order_[k] * per, per, b.images.data() + (k - lo) * per);
      b.labels[k - lo] = set_->labels[order_[k]];
    }
    return b;
  }

 private:
  const labelled_set* set_;
  std::vector<std::size_t> idx_, order_;
  std::size_t bs_;
  bool shuffle_;
  std::uint64_t seed_;
};

inline void check_set(const labelled_set& s, const char* which, bool may_be_empty) {
  if (s.images.rank() != 4 || s.images.dim(0) != s.labels.size())
    throw shape_error(mixq::detail::cat("search::run: ", which, " images of shape ",
                                        shape_string(s.images.shape()), " with ", s.labels.size(),
                                        " labels; expected [N, C, H, W] and N labels"));
  if (!may_be_empty && s.labels.empty())
    throw value_error(mixq::detail::cat("search::run: the ", which, " set is empty"));
}
}  // namespace detail

// ---- options ----------------------------------------------------------------------------------

/// Makes the fixed-bit precision policy used for the finetune phase from a config.
using fixed_policy_factory =
    std::function<std::unique_ptr<nn::precision_policy>(const bit_config&)>;

struct search_options {
  /// Epochs per phase. Warm-up: FP32 training for allocation policies, weight-only training
  /// with the (differentiable) policy attached otherwise; 0 when starting from a trained
  /// checkpoint is fine. Search: differentiable policies only (allocation policies allocate
  /// once, in no epochs). Finetune: training at the fixed derived config.
  std::size_t warmup_epochs = 0, search_epochs = 2, finetune_epochs = 2;
  std::size_t batch_size = 64, eval_batch_size = 500;
  /// Share of the training set held out as the validation split (architecture steps,
  /// allocation scores). The finetune trains on the whole training set.
  double val_fraction = 0.2;
  /// Use only this many training / test samples (0: all); for quick runs and tests.
  std::size_t max_train_samples = 0, max_test_samples = 0;
  /// SGD with Nesterov momentum on the weights (and the policy's parameters()); weight decay
  /// on tensors of rank >= 2 only. Warm-up and finetune anneal the lr by a cosine over the
  /// phase; the search keeps it constant.
  float lr = 0.01f, finetune_lr = 0.01f, momentum = 0.9f, weight_decay = 5e-4f;
  /// Adam on the architecture parameters.
  float arch_lr = 3e-3f, arch_weight_decay = 0.0f;
  /// Alternating or joint updates; empty: the policy's update_scheme() if it has one, else
  /// alternating.
  std::optional<update_scheme> scheme;
  /// The smallest bits any policy may choose, for the up-front feasibility check.
  int min_w_bits = 1, min_a_bits = 1;
  std::uint64_t seed = 1;
  /// Recorded in the result ("uniform", "dnas", ...).
  std::string policy_name = "policy";
  /// The finetune's precision policy; empty: nn::fixed_policy with fixed_options (signed
  /// grids on the layers with signed inputs; PACT alphas, when PACT is chosen, initialised to
  /// the 99.9% quantile of |input| on one training batch; see input_statistics()).
  fixed_policy_factory make_fixed_policy;
  /// Settings of the default finetune policy (two_sided_layers is filled in by the driver).
  /// LSQ weights (a learned step per output channel) and LSQ activations by default: on
  /// Fashion-MNIST at W2A2 per-channel max-scaled weights with PACT left 8 of 18 finetunes at
  /// chance, LSQ none (docs/search.md). Both keep a trained model's weight scale, unlike
  /// DoReFa's tanh normalisation, so the batch-norm statistics still fit at the start.
  nn::fixed_policy_options fixed_options = default_fixed_options();
  /// Batches over which the batch norms' running statistics are re-estimated whenever a
  /// fixed config is attached for the finetune (0: keep the stored statistics).
  std::size_t bn_recalibration_batches = 20;

  static nn::fixed_policy_options default_fixed_options() {
    nn::fixed_policy_options f;
    f.weights = nn::weight_quantizer::lsq;
    f.activations = nn::activation_quantizer::lsq;
    return f;
  }
  std::ostream* out = &std::cerr;  // progress and phase lines; nullptr: silent
  int interactive = -1;            // progress bar redraws: -1 detect a terminal, 0 off, 1 on
};

namespace detail {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// SGD over the model's and the precision policy's trainable parameters (decay on rank >= 2).
inline nn::sgd make_weight_optimizer(nn::module& model, nn::precision_policy* policy,
                                     const search_options& o, float lr) {
  nn::param_group decayed{{}, lr, o.momentum, o.weight_decay, o.momentum > 0},
      plain{{}, lr, o.momentum, 0.0f, o.momentum > 0};
  for (auto& p : model.parameters()) (p.shape().size() > 1 ? decayed : plain).params.push_back(p);
  if (policy)
    for (auto& p : policy->parameters()) plain.params.push_back(p);
  return nn::sgd({decayed, plain});
}

inline void collect_batch_norms(nn::module& m, std::vector<nn::batch_norm2d*>& out) {
  if (auto* bn = dynamic_cast<nn::batch_norm2d*>(&m)) out.push_back(bn);
  for (auto& [name, c] : m.children()) collect_batch_norms(*c, out);
}

/// Re-estimates every batch norm's running statistics under the attached precision policy:
/// the cumulative average over the first `batches` batches of `set` (train-mode forwards, no
/// graph, weights untouched). Quantizing a trained model shifts the statistics its FP32
/// training stored; without this the first evaluation at low bits is near chance.
inline void recalibrate_batch_norms(nn::module& model, index_batches& set, std::size_t batches) {
  std::vector<nn::batch_norm2d*> bns;
  collect_batch_norms(model, bns);
  batches = std::min(batches, set.size());
  if (bns.empty() || batches == 0) return;
  std::vector<float> momentum;
  for (auto* bn : bns) momentum.push_back(bn->momentum());
  const bool was_training = model.is_training();
  model.train();
  set.set_epoch(0);
  autodiff::no_grad ng;
  for (std::size_t i = 0; i < batches; ++i) {
    for (auto* bn : bns) bn->set_momentum(1.0f / float(i + 1));  // running mean of batches
    (void)model(autodiff::constant(set[i].images));
  }
  for (std::size_t k = 0; k < bns.size(); ++k) bns[k]->set_momentum(momentum[k]);
  model.train(was_training);
}

inline void check_config(const bit_config& c, std::span<const layer_cost> costs, const budget& b,
                         const char* who) {
  c.validate(costs.size());
  if (!b.admits(costs, c))
    throw budget_error(mixq::detail::cat(who, " config ", c.to_string(), " costs ",
                                         figure(b.cost_of(costs, c)), " ", to_string(b.kind),
                                         "; the budget is ", figure(b.value)));
}

}  // namespace detail

// ---- the driver -----------------------------------------------------------------------------

/// Runs the phases for `policy` on `model` under budget `b`:
///  1. warm-up (options.warmup_epochs; FP32 for allocation policies, weight-only training with
///     the policy attached for differentiable ones);
///  2. search: differentiable policies train weights (SGD, task loss) and architecture
///     parameters (Adam, policy.search_loss) for options.search_epochs, alternating between a
///     train batch and a validation batch (or jointly); allocation policies call allocate();
///  3. derive: differentiable policies call derive(); the config must meet the budget
///     (budget_error otherwise);
///  4. finetune at the config (options.finetune_epochs) with a fixed-bit precision policy (or
///     the allocation policy itself when it is a precision_policy); allocation policies'
///     on_epoch_end() may switch the config after every epoch.
/// Test accuracy is measured before the warm-up ("initial", FP32) and after every phase
/// ("derive" = the fixed config before finetuning). On return the model is attached to the
/// finetune's precision policy, kept alive by result.finetuned_policy (or to the allocation
/// policy itself). Throws budget_error when the budget is infeasible at options.min_*_bits.
template <class P>
requires differentiable_policy<P> || allocation_policy<P> search_result
run(nn::module& model, const search_data& data, P& policy, const budget& b,
    const search_options& o = {}) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  detail::check_set(data.train, "training", false);
  detail::check_set(data.test, "test", true);
  if (!(o.val_fraction > 0 && o.val_fraction < 1))
    throw value_error(mixq::detail::cat("search::run: val_fraction ", o.val_fraction,
                                        "; expected 0 < fraction < 1"));
  if (o.batch_size == 0 || o.eval_batch_size == 0)
    throw value_error("search::run: batch sizes must be >= 1");

  nn::detach_policy(model);
  const shape_t sample(data.train.images.shape().begin() + 1, data.train.images.shape().end());
  shape_t one{1};
  one.insert(one.end(), sample.begin(), sample.end());
  const model_desc traced = trace_costs(model, one);
  const std::vector<layer_cost>& costs = traced.layers;
  b.check_feasible(costs, o.min_w_bits, o.min_a_bits);

  // Train / validation split of the (possibly limited) training set; test subset.
  std::size_t n_train = data.train.labels.size();
  if (o.max_train_samples) n_train = std::min(n_train, o.max_train_samples);
  std::vector<std::size_t> perm(data.train.labels.size());
  std::iota(perm.begin(), perm.end(), std::size_t{0});
  detail::seeded_shuffle(perm, o.seed * 0x9e3779b97f4a7c15ull + 17);
  perm.resize(n_train);
  const std::size_t n_val = std::clamp<std::size_t>(
      std::size_t(std::lround(o.val_fraction * double(n_train))), 1, n_train > 1 ? n_train - 1 : 1);
  if (n_train < 2)
    throw value_error(mixq::detail::cat("search::run: ", n_train,
                                        " training samples; expected >= 2 (train + validation)"));
  std::vector<std::size_t> val_idx(perm.begin(), perm.begin() + std::ptrdiff_t(n_val)),
      train_idx(perm.begin() + std::ptrdiff_t(n_val), perm.end());
  std::size_t n_test = data.test.labels.size();
  if (o.max_test_samples) n_test = std::min(n_test, o.max_test_samples);
  std::vector<std::size_t> test_idx(n_test);
  std::iota(test_idx.begin(), test_idx.end(), std::size_t{0});

  detail::index_batches train(data.train, train_idx, o.batch_size, true, o.seed),
      val(data.train, val_idx, o.batch_size, true, o.seed + 1),
      all_train(data.train, perm, o.batch_size, true, o.seed + 2),
      test(data.test, test_idx, o.eval_batch_size, false, 0);

  search_context ctx{model,
                     costs,
                     [&] { return train.size(); },
                     [&](std::size_t i) { return train[i]; },
                     [&] { return val.size(); },
                     [&](std::size_t i) { return val[i]; },
                     o.seed,
                     o.out,
                     traced.shared_input_groups};

  search_result r;
  r.policy = o.policy_name;
  r.seed = o.seed;
  r.target = b;
  std::ostream null_stream(nullptr);
  std::ostream& log = o.out ? *o.out : null_stream;

  auto evaluate_into = [&](phase_report& p) {
    if (test.samples() == 0) return;
    const auto s = nn::evaluate(model, test);
    p.test_accuracy = s.accuracy;
    p.test_loss = s.loss;
  };
  auto loop_opts = [&](std::string label) {
    nn::loop_options lo;
    lo.label = std::move(label);
    lo.out = o.out;
    lo.interactive = o.interactive;
    return lo;
  };
  auto epoch_label = [](const char* phase, std::size_t e, std::size_t n) {
    return mixq::detail::cat(phase, " ", e + 1, "/", n);
  };
  // Weight training for `epochs` epochs over `set` with a cosine lr schedule (warm-up and
  // finetune), each epoch recorded in r.epochs under `record`; after_epoch(e) may replace opt.
  auto train_phase = [&](const char* label, const char* record, std::size_t epochs,
                         detail::index_batches& set, nn::sgd& opt,
                         const std::function<void(std::size_t)>& after_epoch) {
    const nn::cosine_schedule sched{epochs * set.size()};
    for (std::size_t e = 0; e < epochs; ++e) {
      set.set_epoch(e);
      auto lo = loop_opts(epoch_label(label, e, epochs));
      lo.first_step = e * set.size();
      lo.on_step = [&](std::size_t st) { opt.set_lr_factor(sched.factor(st)); };
      const auto s = nn::train_epoch(model, opt, set, lo);
      r.epochs.push_back(
          {record, e, s.loss, s.accuracy, std::numeric_limits<double>::quiet_NaN(), s.seconds});
      if (after_epoch) after_epoch(e);
    }
  };

  log << "search [" << o.policy_name << "]: " << costs.size() << " quantized layers, "
      << train_idx.size() << " train / " << val_idx.size() << " validation / " << n_test
      << " test samples, budget " << b.describe() << "\n";

  // 0. initial accuracy (FP32, as given)
  evaluate_into(r.initial);
  r.initial.ran = true;

  // 1. warm-up
  constexpr bool differentiable = differentiable_policy<P>;
  nn::precision_policy* warm_policy = nullptr;
  if constexpr (differentiable) {
    warm_policy = &policy;
    nn::attach_policy(model, policy);
  }
  if (o.warmup_epochs) {
    const auto t0 = clock::now();
    auto opt = detail::make_weight_optimizer(model, warm_policy, o, o.lr);
    train_phase("warm-up", "warmup", o.warmup_epochs, train, opt, {});
    r.warmup.ran = true;
    r.warmup.epochs = o.warmup_epochs;
    r.warmup.seconds = detail::seconds_since(t0);
    evaluate_into(r.warmup);
  }

  // 2. search and 3. derive
  if constexpr (differentiable) {
    const auto t0 = clock::now();
    update_scheme scheme = update_scheme::alternating;
    if constexpr (requires(const P& p) {
                    { p.update_scheme() } -> std::convertible_to<update_scheme>;
                  })
      scheme = policy.update_scheme();
    if (o.scheme) scheme = *o.scheme;
    auto wopt = detail::make_weight_optimizer(model, &policy, o, o.lr);
    auto arch = policy.architecture_parameters();
    std::optional<nn::adam> aopt;
    if (!arch.empty())
      aopt.emplace(std::vector<nn::param_group>{{arch, o.arch_lr, 0.0f, o.arch_weight_decay}});
    auto zero_all = [&] {
      wopt.zero_grad();
      if (aopt) aopt->zero_grad();
    };
    for (std::size_t e = 0; e < o.search_epochs; ++e) {
      policy.on_search_epoch(ctx, e, o.search_epochs);
      train.set_epoch(o.warmup_epochs + e);
      val.set_epoch(o.warmup_epochs + e);
      model.train();
      nn::progress_bar bar(epoch_label("search", e, o.search_epochs), train.size(), log,
                           o.out ? o.interactive : 0);
      nn::epoch_stats s;
      double loss_sum = 0;
      std::size_t correct = 0;
      for (std::size_t i = 0; i < train.size(); ++i) {
        const batch tb = train[i];
        const autodiff::var logits = model(autodiff::constant(tb.images));
        const autodiff::var task = autodiff::cross_entropy(logits, tb.labels);
        zero_all();
        if (scheme == update_scheme::joint) {
          autodiff::backward(policy.search_loss(task, b));
          wopt.step();
          if (aopt) aopt->step();
        } else {
          autodiff::backward(task);
          wopt.step();
          const batch vb = val[i % val.size()];
          const autodiff::var vloss =
              autodiff::cross_entropy(model(autodiff::constant(vb.images)), vb.labels);
          zero_all();
          autodiff::backward(policy.search_loss(vloss, b));
          if (aopt) aopt->step();
        }
        const std::size_t n = tb.labels.size();
        loss_sum += double(task.item()) * double(n);
        correct += nn::detail::count_correct(logits.value(), tb.labels);
        s.samples += n;
        s.loss = loss_sum / double(s.samples);
        s.accuracy = double(correct) / double(s.samples);
        bar.update(i + 1, s);
      }
      zero_all();
      s.seconds = bar.elapsed();
      if (o.out) bar.finish(s);
      double cost = 0;
      {
        autodiff::no_grad ng;
        cost = double(policy.expected_cost().item());
      }
      log << "  expected cost " << detail::figure(cost) << " " << to_string(b.kind) << " ("
          << 100.0 * cost / b.value << "% of the budget)\n";
      r.epochs.push_back({"search", e, s.loss, s.accuracy, cost, s.seconds});
    }
    r.search.ran = true;
    r.search.epochs = o.search_epochs;
    r.search.seconds = detail::seconds_since(t0);
    evaluate_into(r.search);

    const auto t1 = clock::now();
    r.config = policy.derive(ctx, b);
    r.derive.seconds = detail::seconds_since(t1);
    detail::check_config(r.config, costs, b, "search::run: the derived");
    nn::detach_policy(model);
  } else {
    const auto t0 = clock::now();
    r.config = policy.allocate(ctx, b);
    r.search.ran = true;
    r.search.seconds = detail::seconds_since(t0);
    detail::check_config(r.config, costs, b, "search::run: the allocated");
  }
  r.derive.ran = true;
  r.config_history.push_back(r.config);
  log << "config: " << r.config.to_string() << "  (" << detail::figure(b.cost_of(costs, r.config))
      << " " << to_string(b.kind) << ", " << 100.0 * b.cost_of(costs, r.config) / b.value
      << "% of the budget)\n";

  // 4. finetune at the fixed config
  // The default finetune policy starts from the inputs' ranges: two-sided PACT where inputs
  // are signed, alpha = the 99.9% quantile of |input| (PACT's fixed initial alphas, 8 and 10,
  // would round the small activations of a trained model to 0 at 2 bits).
  std::vector<layer_input_stats> input_stats;
  std::vector<std::size_t> signed_layers;
  if (!o.make_fixed_policy) {
    input_stats = input_statistics(model, train[0].images);
    for (std::size_t l = 0; l < input_stats.size(); ++l)
      if (input_stats[l].has_negative) signed_layers.push_back(l);
  }
  std::shared_ptr<nn::precision_policy> fixed;
  nn::precision_policy* active = nullptr;
  auto attach_config = [&](const bit_config& c) {
    if constexpr (allocation_policy<P> && std::derived_from<P, nn::precision_policy>) {
      (void)c;
      active = &policy;
    } else {
      if (o.make_fixed_policy) {
        fixed = std::shared_ptr<nn::precision_policy>(o.make_fixed_policy(c));
      } else {
        nn::fixed_policy_options fo = o.fixed_options;
        fo.two_sided_layers = signed_layers;
        auto fp = std::make_shared<nn::fixed_policy>(c, fo);
        fixed = fp;
        nn::attach_policy(model, *fp);  // creates the alphas
        for (std::size_t l = 0; l < input_stats.size(); ++l)
          if (input_stats[l].abs_quantile > 0 && fo.activations == nn::activation_quantizer::pact)
            fp->alpha(l).value()[0] = input_stats[l].abs_quantile;
      }
      if (!fixed) throw value_error("search::run: make_fixed_policy returned no policy");
      active = fixed.get();
    }
    nn::attach_policy(model, *active);
    detail::recalibrate_batch_norms(model, all_train, o.bn_recalibration_batches);
  };
  attach_config(r.config);
  evaluate_into(r.derive);
  if (o.finetune_epochs) {
    const auto t0 = clock::now();
    auto opt = detail::make_weight_optimizer(model, active, o, o.finetune_lr);
    train_phase("finetune", "finetune", o.finetune_epochs, all_train, opt, [&](std::size_t e) {
      if constexpr (allocation_policy<P>) {
        if (auto next = policy.on_epoch_end(ctx, b, e); next && *next != r.config) {
          detail::check_config(*next, costs, b, "search::run: the re-allocated");
          r.config = *next;
          r.config_history.push_back(r.config);
          log << "  re-allocated: " << r.config.to_string() << "\n";
          if (!std::derived_from<P, nn::precision_policy>) {
            attach_config(r.config);
            opt = detail::make_weight_optimizer(model, active, o, o.finetune_lr);
          }
        }
      } else {
        (void)e;
      }
    });
    r.finetune.ran = true;
    r.finetune.epochs = o.finetune_epochs;
    r.finetune.seconds = detail::seconds_since(t0);
    evaluate_into(r.finetune);
  }
  fill_cost_figures(r, costs);
  r.finetuned_policy = fixed;
  r.total_seconds = detail::seconds_since(t_start);
  auto pct = [](double a) {
    return std::isnan(a) ? std::string("-") : mixq::detail::cat(100.0 * a, "%");
  };
  log << "accuracy: initial " << pct(r.initial.test_accuracy) << ", derived "
      << pct(r.derive.test_accuracy) << ", finetuned " << pct(r.finetune.test_accuracy) << "; "
      << r.total_seconds << " s\n";
  return r;
}

}  // namespace mixq::search
