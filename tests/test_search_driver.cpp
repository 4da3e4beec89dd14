// search::run on a tiny quantized network and synthetic data: the uniform baseline, a toy
// differentiable policy and toy re-allocating policies go through every phase; derived configs
// meet the budget; the JSON result round-trips; bad budgets and inputs raise typed errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "mixq/nn/fixed_policy.hpp"
#include "mixq/nn/quantized_residual.hpp"
#include "mixq/search/driver.hpp"
#include "mixq/search/trace.hpp"
#include "mixq/search/uniform_policy.hpp"

namespace ad = mixq::autodiff;
namespace nn = mixq::nn;
namespace search = mixq::search;
using mixq::quant::bit_config;
using search::budget;
using search::budget_kind;

namespace {

/// conv 1->4 3x3 (pad 1) on 8x8, ReLU, 2x2 max-pool, flatten, linear 64->3.
std::shared_ptr<nn::sequential> tiny_net(unsigned seed) {
  std::mt19937 rng(seed);
  auto net = std::make_shared<nn::sequential>();
  net->add(std::make_shared<nn::quantized_conv2d>(1, 4, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::max_pool2d>(2));
  net->add(std::make_shared<nn::flatten>());
  net->add(std::make_shared<nn::quantized_linear>(64, 3, true, rng));
  return net;
}

/// Three classes: a bright 4x4 block in the top-left, top-right or bottom half, plus noise.
struct synthetic {
  ad::ftensor images;
  std::vector<int> labels;
};
synthetic make_data(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  synthetic s{ad::ftensor({n, 1, 8, 8}), std::vector<int>(n)};
  for (std::size_t i = 0; i < n; ++i) {
    const int c = int(i % 3);
    s.labels[i] = c;
    for (std::size_t y = 0; y < 8; ++y)
      for (std::size_t x = 0; x < 8; ++x) {
        const bool on = c == 0 ? (y < 4 && x < 4) : c == 1 ? (y < 4 && x >= 4) : y >= 4;
        s.images[((i * 8) + y) * 8 + x] = (on ? 1.0f : 0.0f) + noise(rng);
      }
  }
  return s;
}

search::search_options quick_options() {
  search::search_options o;
  o.warmup_epochs = 1;
  o.search_epochs = 2;
  o.finetune_epochs = 2;
  o.batch_size = 16;
  o.eval_batch_size = 32;
  o.val_fraction = 0.25;
  o.lr = 0.05f;
  o.finetune_lr = 0.05f;
  o.arch_lr = 0.05f;
  o.out = nullptr;
  return o;
}

/// Symmetric max-abs fake quantization with a straight-through round (test-local).
ad::var symq(const ad::var& x, int bits) {
  float m = 0;
  for (float v : x.value()) m = std::max(m, std::fabs(v));
  if (m == 0) return x;
  const float step = m / float((1 << (bits - 1)) - 1);
  return ad::mul(ad::round_ste(ad::mul(x, 1.0f / step)), step);
}

/// Toy EBS-like policy: per layer a softmax over candidate bits {2, 8} (w = a) mixing the
/// quantized weights; expected BitOps = sum macs * E[b]^2; loss = CE + lambda * C / budget.
struct toy_diff_policy : nn::precision_policy {
  std::vector<int> cand{2, 8};
  std::vector<ad::var> theta;
  std::vector<search::layer_cost> costs;
  std::vector<std::size_t> epochs_seen;
  float lambda = 2.0f;

  void on_attach(std::span<nn::quantized_layer* const> layers) override {
    if (theta.size() != layers.size()) {
      theta.clear();
      for (std::size_t i = 0; i < layers.size(); ++i)
        theta.push_back(ad::var::parameter(ad::ftensor({2}, 0.0f)));
    }
  }
  std::vector<ad::var> architecture_parameters() override { return theta; }
  ad::var prob(std::size_t l, std::size_t k) const {
    ad::ftensor onehot({2}, 0.0f);
    onehot[k] = 1.0f;
    return ad::sum(ad::mul(ad::softmax(theta[l]), ad::constant(onehot)));
  }
  ad::var quantize_weights(std::size_t l, const ad::var& w) override {
    ad::var out;
    for (std::size_t k = 0; k < cand.size(); ++k) {
      mixq::shape_t ones(w.shape().size(), 1);
      const ad::var term = ad::mul(ad::reshape(prob(l, k), ones), symq(w, cand[k]));
      out = out.defined() ? ad::add(out, term) : term;
    }
    return out;
  }
  ad::var quantize_activations(std::size_t, const ad::var& x) override { return x; }
  ad::var expected_cost() {
    ad::var total;
    for (std::size_t l = 0; l < theta.size(); ++l) {
      ad::var eb;
      for (std::size_t k = 0; k < cand.size(); ++k) {
        const ad::var t = ad::mul(prob(l, k), float(cand[k]));
        eb = eb.defined() ? ad::add(eb, t) : t;
      }
      const ad::var c = ad::mul(ad::mul(eb, eb), float(costs.at(l).macs));
      total = total.defined() ? ad::add(total, c) : c;
    }
    return total;
  }
  ad::var search_loss(const ad::var& task, const budget& b) {
    return ad::add(task, ad::mul(expected_cost(), float(lambda / b.value)));
  }
  void on_search_epoch(const search::search_context& c, std::size_t e, std::size_t) {
    costs = c.costs;
    epochs_seen.push_back(e);
  }
  bit_config derive(const search::search_context& c, const budget& b) {
    bit_config cfg;
    for (auto& t : theta) {
      const int bits = t.value()[1] > t.value()[0] ? 8 : 2;
      cfg.w_bits.push_back(bits);
      cfg.a_bits.push_back(bits);
    }
    // Lower the costliest 8-bit layer until the budget admits the config.
    while (!b.admits(c.costs, cfg)) {
      std::size_t worst = 0;
      double worst_cost = -1;
      for (std::size_t l = 0; l < cfg.size(); ++l)
        if (cfg.w_bits[l] == 8 && double(c.costs[l].macs) > worst_cost)
          worst = l, worst_cost = double(c.costs[l].macs);
      if (worst_cost < 0) break;
      cfg.w_bits[worst] = cfg.a_bits[worst] = 2;
    }
    return cfg;
  }
};
static_assert(search::differentiable_policy<toy_diff_policy>);

/// Re-allocates once, after finetune epoch 0, to `next`.
struct reallocating_policy {
  bit_config first, next;
  std::vector<std::size_t> calls;
  bit_config allocate(search::search_context&, const budget&) { return first; }
  std::optional<bit_config> on_epoch_end(search::search_context&, const budget&, std::size_t e) {
    calls.push_back(e);
    if (e == 0) return next;
    return std::nullopt;
  }
};
static_assert(search::allocation_policy<reallocating_policy>);

struct fixture {
  synthetic train = make_data(96, 1), test = make_data(30, 2);
  search::search_data data() const {
    return {{train.images, train.labels}, {test.images, test.labels}};
  }
};

void check_phases(const search::search_result& r, const search::search_options& o) {
  CHECK(r.initial.ran);
  CHECK(r.warmup.ran == (o.warmup_epochs > 0));
  CHECK(r.warmup.epochs == o.warmup_epochs);
  CHECK(r.search.ran);
  CHECK(r.derive.ran);
  CHECK(r.finetune.ran == (o.finetune_epochs > 0));
  CHECK(r.finetune.epochs == o.finetune_epochs);
  for (const auto* p : {&r.initial, &r.warmup, &r.search, &r.derive, &r.finetune}) {
    if (!p->ran) continue;
    if (p == &r.search && r.search.epochs == 0) {  // allocation: no model change to evaluate
      CHECK(std::isnan(p->test_accuracy));
      continue;
    }
    CHECK(p->seconds >= 0);
    CHECK(p->test_accuracy >= 0.0);
    CHECK(p->test_accuracy <= 1.0);
    CHECK(std::isfinite(p->test_loss));
  }
  CHECK(r.total_seconds >= r.finetune.seconds);
}

}  // namespace

TEST_CASE(
    "input_statistics / signed_input_layers: the first layer reads signed pixels, the second ReLU "
    "outputs") {
  auto net = tiny_net(1);
  auto d = make_data(6, 1);  // noisy images with negative values
  CHECK(search::signed_input_layers(*net, d.images) == std::vector<std::size_t>{0});
  // Layer 0 reads the images themselves: its quantiles of |x| are those of the pixels.
  std::vector<float> pix;
  for (float v : d.images) pix.push_back(std::fabs(v));
  std::sort(pix.begin(), pix.end());
  for (double q : {0.0, 0.5, 0.999, 1.0}) {
    const auto st = search::input_statistics(*net, d.images, q);
    REQUIRE(st.size() == 2);
    CHECK(st[0].has_negative);
    CHECK_FALSE(st[1].has_negative);
    CHECK(st[0].abs_quantile == pix[std::size_t(std::llround(q * double(pix.size() - 1)))]);
    CHECK(st[1].abs_quantile >= 0.0f);
  }
  CHECK_THROWS_AS(search::input_statistics(*net, d.images, 1.5), mixq::value_error);
  for (auto& v : d.images) v = std::fabs(v);
  CHECK(search::signed_input_layers(*net, d.images).empty());
  for (auto* l : nn::quantized_layers(*net)) CHECK(l->policy() == nullptr);
}

TEST_CASE("run: uniform policy through every phase, config and figures, JSON round trip") {
  fixture f;
  auto net = tiny_net(3);
  const auto costs = search::trace_costs(*net, {1, 1, 8, 8}).layers;
  auto o = quick_options();
  o.policy_name = "uniform";
  SUBCASE("largest uniform config within a W3A3 budget") {
    const auto b = budget::like_uniform(budget_kind::bitops, costs, 3, 3);
    search::uniform_policy p;
    const auto r = search::run(*net, f.data(), p, b, o);
    check_phases(r, o);
    CHECK(r.config == bit_config::uniform(2, 3, 3));
    CHECK(r.config_history.size() == 1);
    CHECK(r.bitops == doctest::Approx(b.value));
    CHECK(r.budget_usage() <= 1.0 + 1e-9);
    REQUIRE(r.layers.size() == 2);
    double share = 0;
    for (std::size_t i = 0; i < 2; ++i) {
      CHECK(r.layers[i].bitops == double(costs[i].macs) * 9);
      CHECK(r.layers[i].weight_bits == double(costs[i].params) * 3);
      share += r.layers[i].bitops_share;
    }
    CHECK(share == doctest::Approx(1.0));
    CHECK(r.params == costs[0].params + costs[1].params);
    REQUIRE(r.finetuned_policy != nullptr);
    // The default finetune policy: nn::fixed_policy at the config, two-sided on layer 0.
    const auto* fp = dynamic_cast<const nn::fixed_policy*>(r.finetuned_policy.get());
    REQUIRE(fp != nullptr);
    CHECK(fp->config() == r.config);
    CHECK(fp->options().two_sided_layers == std::vector<std::size_t>{0});
    CHECK(fp->options().weights == nn::weight_quantizer::lsq);
    CHECK(fp->options().activations == nn::activation_quantizer::lsq);
    CHECK_THROWS_AS(fp->alpha(0), mixq::value_error);  // no PACT alphas
    std::size_t warm = 0, fine = 0;
    for (const auto& e : r.epochs) (e.phase == "warmup" ? warm : fine) += 1;
    CHECK(warm == o.warmup_epochs);
    CHECK(fine == o.finetune_epochs);
    // The patterns are easy: finetuned accuracy clearly above chance (1/3).
    CHECK(r.finetune.test_accuracy > 0.6);

    // JSON: parse what was written and compare field by field.
    const std::string json = r.to_json();
    const auto back = search::search_result::from_json(json);
    CHECK(back == r);
    CHECK(back.to_json() == json);
    const auto path = std::filesystem::temp_directory_path() /
                      ("mixq_test_result_" + std::to_string(::getpid()) + ".json");
    r.write_json(path.string());
    CHECK_FALSE(std::filesystem::exists(path.string() + ".tmp"));
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    CHECK(ss.str() == json);
    std::filesystem::remove(path);
  }
  SUBCASE("weight-bit budget between uniform W4 and W5 picks W4A4") {
    const auto lo = budget::like_uniform(budget_kind::weight_bits, costs, 4, 4);
    const auto b = budget::weight_bits(lo.value + 0.5 * double(costs[0].params + costs[1].params));
    search::uniform_policy p;
    o.warmup_epochs = 0;
    o.finetune_epochs = 1;
    const auto r = search::run(*net, f.data(), p, b, o);
    check_phases(r, o);
    CHECK(r.config == bit_config::uniform(2, 4, 4));
    CHECK(r.budget_cost == doctest::Approx(lo.value));
  }
  SUBCASE("a fixed uniform config over the budget is a budget_error") {
    const auto b = budget::like_uniform(budget_kind::bitops, costs, 2, 2);
    auto p = search::uniform_policy::fixed(8, 8);
    CHECK_THROWS_AS(search::run(*net, f.data(), p, b, o), mixq::budget_error);
  }
}

TEST_CASE("run: an infeasible budget fails before training, naming the smallest value") {
  fixture f;
  auto net = tiny_net(4);
  const auto costs = search::trace_costs(*net, {1, 1, 8, 8}).layers;
  const double least = budget::bitops(1).cost_of(costs, bit_config::uniform(2, 1, 1));
  search::uniform_policy p;
  auto o = quick_options();
  const auto before = net->parameters()[0].value();
  try {
    search::run(*net, f.data(), p, budget::bitops(least / 2), o);
    FAIL("expected budget_error");
  } catch (const mixq::budget_error& e) {
    CHECK(std::string(e.what()).find(search::detail::figure(least)) != std::string::npos);
  }
  const auto& after = net->parameters()[0].value();
  for (std::size_t i = 0; i < before.size(); ++i) CHECK(after[i] == before[i]);
  // With 2-bit minimums, a W1A1-sized budget is infeasible too.
  o.min_w_bits = o.min_a_bits = 2;
  CHECK_THROWS_AS(search::run(*net, f.data(), p, budget::bitops(least * 1.5), o),
                  mixq::budget_error);
  // The uniform policy itself names the cheapest candidate when none fits.
  search::uniform_policy only_4bit({{4, 4}, {8, 8}});
  o.min_w_bits = o.min_a_bits = 1;
  CHECK_THROWS_AS(search::run(*net, f.data(), only_4bit, budget::bitops(least * 2), o),
                  mixq::budget_error);
}

TEST_CASE("run: toy differentiable policy, alternating and joint updates") {
  fixture f;
  for (auto scheme : {search::update_scheme::alternating, search::update_scheme::joint}) {
    CAPTURE(int(scheme));
    auto net = tiny_net(5);
    const auto costs = search::trace_costs(*net, {1, 1, 8, 8}).layers;
    const auto b = budget::like_uniform(budget_kind::bitops, costs, 4, 4);
    toy_diff_policy p;
    auto o = quick_options();
    o.scheme = scheme;
    o.policy_name = "toy";
    const auto r = search::run(*net, f.data(), p, b, o);
    check_phases(r, o);
    CHECK(p.epochs_seen == std::vector<std::size_t>{0, 1});
    // The architecture parameters moved (they received gradients from the search loss).
    double moved = 0;
    for (auto& t : p.theta) moved += std::fabs(t.value()[0] - t.value()[1]);
    CHECK(moved > 0);
    CHECK(b.admits(costs, r.config));
    std::size_t searched = 0;
    for (const auto& e : r.epochs)
      if (e.phase == "search") {
        ++searched;
        CHECK(std::isfinite(e.expected_cost));
        CHECK(e.expected_cost > 0);
      }
    CHECK(searched == 2);
    // After the run, the model runs through the finetune policy, not the toy policy.
    for (auto* l : nn::quantized_layers(*net)) CHECK(l->policy() == r.finetuned_policy.get());
    const auto back = search::search_result::from_json(r.to_json());
    CHECK(back == r);
  }
}

TEST_CASE("run: re-allocation at epoch ends switches the finetune config") {
  fixture f;
  auto net = tiny_net(6);
  const auto costs = search::trace_costs(*net, {1, 1, 8, 8}).layers;
  const auto b = budget::like_uniform(budget_kind::bitops, costs, 4, 4);
  auto o = quick_options();
  o.warmup_epochs = 0;
  std::vector<bit_config> made;
  o.make_fixed_policy = [&](const bit_config& c) {
    made.push_back(c);
    return std::make_unique<nn::fixed_policy>(c);
  };
  reallocating_policy p{bit_config{{2, 8}, {2, 8}}, bit_config{{4, 4}, {4, 4}}, {}};
  const auto r = search::run(*net, f.data(), p, b, o);
  check_phases(r, o);
  CHECK(p.calls == std::vector<std::size_t>{0, 1});
  REQUIRE(r.config_history.size() == 2);
  CHECK(r.config_history[0] == p.first);
  CHECK(r.config == p.next);
  REQUIRE(made.size() == 2);
  CHECK(made[0] == p.first);
  CHECK(made[1] == p.next);
  CHECK(r.layers[0].w_bits == 4);

  // A re-allocation beyond the budget is rejected.
  auto net2 = tiny_net(6);
  reallocating_policy over{bit_config{{2, 2}, {2, 2}}, bit_config{{8, 8}, {8, 8}}, {}};
  CHECK_THROWS_AS(search::run(*net2, f.data(), over, b, o), mixq::budget_error);
  // So is an allocation with bits outside 1..8 or the wrong length.
  reallocating_policy bad_bits{bit_config{{0, 2}, {2, 2}}, {}, {}};
  CHECK_THROWS_AS(search::run(*net2, f.data(), bad_bits, b, o), mixq::bits_error);
  reallocating_policy bad_len{bit_config{{2}, {2}}, {}, {}};
  CHECK_THROWS_AS(search::run(*net2, f.data(), bad_len, b, o), mixq::shape_error);
}

/// Records the context's tied layers and allocates a fixed config.
struct tie_recording_policy {
  bit_config config;
  std::vector<std::vector<std::size_t>> seen;
  bit_config allocate(search::search_context& c, const budget&) {
    seen = c.tied_layers;
    return config;
  }
  std::optional<bit_config> on_epoch_end(search::search_context&, const budget&, std::size_t) {
    return std::nullopt;
  }
};

TEST_CASE("run: the context carries the traced model's tied layers (residual downsampling)") {
  fixture f;
  std::mt19937 rng(4);
  auto net = std::make_shared<nn::sequential>();
  net->add(std::make_shared<nn::quantized_conv2d>(1, 4, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::quantized_residual_block>(4, 8, 2, rng));
  net->add(std::make_shared<nn::global_avg_pool2d>());
  net->add(std::make_shared<nn::flatten>());
  net->add(std::make_shared<nn::quantized_linear>(8, 3, true, rng));
  const auto traced = search::trace_costs(*net, {1, 1, 8, 8});
  REQUIRE(traced.shared_input_groups.size() == 1);
  auto o = quick_options();
  o.warmup_epochs = 0;
  o.finetune_epochs = 0;
  tie_recording_policy p{bit_config::uniform(traced.size(), 4, 4), {}};
  const auto b = budget::like_uniform(budget_kind::bitops, traced.layers, 4, 4);
  (void)search::run(*net, f.data(), p, b, o);
  CHECK(p.seen == traced.shared_input_groups);
  // A model without residual blocks has none.
  auto plain = tiny_net(3);
  tie_recording_policy q{bit_config::uniform(2, 4, 4), {{9}}};
  (void)search::run(*plain, f.data(), q,
                    budget::like_uniform(budget_kind::bitops,
                                         search::trace_costs(*plain, {1, 1, 8, 8}).layers, 4, 4),
                    o);
  CHECK(q.seen.empty());
}

TEST_CASE("run: bad data and options raise typed errors") {
  fixture f;
  auto net = tiny_net(7);
  const auto costs = search::trace_costs(*net, {1, 1, 8, 8}).layers;
  const auto b = budget::like_uniform(budget_kind::bitops, costs, 4, 4);
  search::uniform_policy p;
  auto o = quick_options();
  o.val_fraction = 0;
  CHECK_THROWS_AS(search::run(*net, f.data(), p, b, o), mixq::value_error);
  o = quick_options();
  o.batch_size = 0;
  CHECK_THROWS_AS(search::run(*net, f.data(), p, b, o), mixq::value_error);
  o = quick_options();
  std::vector<int> short_labels(f.train.labels.begin(), f.train.labels.begin() + 10);
  search::search_data bad{{f.train.images, short_labels}, {f.test.images, f.test.labels}};
  CHECK_THROWS_AS(search::run(*net, bad, p, b, o), mixq::shape_error);
  o.max_train_samples = 1;
  CHECK_THROWS_AS(search::run(*net, f.data(), p, b, o), mixq::value_error);
  CHECK_THROWS_AS(search::uniform_policy({{0, 2}}), mixq::bits_error);
  CHECK_THROWS_AS(search::uniform_policy(std::vector<search::bit_pair>{}), mixq::value_error);
}

TEST_CASE("search_result JSON: malformed documents raise format_error") {
  search::search_result r;
  r.policy = "quote\" and \\ and \n newline";
  r.target = budget::bitops(100);
  r.config = bit_config::uniform(1, 2, 3);
  const auto json = r.to_json();
  CHECK(search::search_result::from_json(json) == r);
  CHECK_THROWS_AS(search::search_result::from_json("{"), mixq::format_error);
  CHECK_THROWS_AS(search::search_result::from_json("[]"), mixq::format_error);
  CHECK_THROWS_AS(search::search_result::from_json(json + "x"), mixq::format_error);
  std::string wrong = json;
  wrong.replace(wrong.find("mixq.search_result/1"), 20, "mixq.search_result/9");
  CHECK_THROWS_AS(search::search_result::from_json(wrong), mixq::format_error);
  std::string no_policy = json;
  no_policy.replace(no_policy.find("\"policy\""), 8, "\"polixy\"");
  CHECK_THROWS_AS(search::search_result::from_json(no_policy), mixq::format_error);
  CHECK_THROWS_AS(r.write_json("/nonexistent-dir/x/result.json"), mixq::io_error);
}

TEST_CASE("recalibrate_batch_norms: running statistics are the average over the batches") {
  std::mt19937 rng(4);
  auto net = std::make_shared<nn::sequential>();
  auto conv = net->add(std::make_shared<nn::quantized_conv2d>(1, 3, 3, 1, 1, 1, false, rng));
  auto bn = net->add(std::make_shared<nn::batch_norm2d>(3));
  nn::fixed_policy policy(bit_config::uniform(1, 2, 2));
  nn::attach_policy(*net, policy);
  net->eval();
  const auto d = make_data(40, 9);
  std::vector<std::size_t> idx(40);
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  const search::labelled_set data{d.images, d.labels};  // index_batches keeps a pointer
  search::detail::index_batches set(data, idx, 8, true, 3);
  // The reference: per-channel mean of the conv output on each of the first 3 batches (the
  // same shuffled order), averaged.
  set.set_epoch(0);
  std::vector<double> want(3, 0.0);
  for (std::size_t b = 0; b < 3; ++b) {
    ad::no_grad ng;
    const auto y = (*conv)(ad::constant(set[b].images)).value();
    const std::size_t n = y.shape()[0], hw = y.shape()[2] * y.shape()[3];
    for (std::size_t c = 0; c < 3; ++c) {
      double s = 0;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t p = 0; p < hw; ++p) s += y[(i * 3 + c) * hw + p];
      want[c] += s / double(n * hw) / 3.0;
    }
  }
  bn->running_mean.value() = ad::ftensor({3}, 123.0f);  // stale statistics
  search::detail::recalibrate_batch_norms(*net, set, 3);
  for (std::size_t c = 0; c < 3; ++c)
    CHECK(bn->running_mean.value()[c] == doctest::Approx(want[c]).epsilon(1e-4));
  CHECK(bn->momentum() == doctest::Approx(0.1f));  // restored
  CHECK_FALSE(net->is_training());                 // mode restored
  CHECK_THROWS_AS(bn->set_momentum(0.0f), mixq::value_error);
}
