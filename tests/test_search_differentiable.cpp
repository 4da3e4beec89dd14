// Differentiable search policies (DNAS, EBS, FracBits) on a tiny network and synthetic data:
// expected costs against cost.hpp's float formulas (value and gradient), gradients of the
// architecture parameters from the task loss and from the cost term separately, derived
// configurations within budget, FracBits' bisection, EBS's single convolution per layer,
// DNAS reproducibility, loss reduction over a few search steps, and bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>

#include "mixq/nn.hpp"
#include "mixq/search/dnas_policy.hpp"
#include "mixq/search/ebs_policy.hpp"
#include "mixq/search/fracbits_policy.hpp"
#include "mixq/search/model_zoo.hpp"

using namespace mixq;
using namespace mixq::search;
namespace ad = mixq::autodiff;
using ad::ftensor;
using ad::var;

namespace {

// Layers that count how often their float op runs.
struct counting_conv : nn::quantized_conv2d {
  using nn::quantized_conv2d::quantized_conv2d;
  mutable std::size_t calls = 0;
  var compute(const var& x, const var& w) const override {
    ++calls;
    return nn::quantized_conv2d::compute(x, w);
  }
};
struct counting_linear : nn::quantized_linear {
  using nn::quantized_linear::quantized_linear;
  mutable std::size_t calls = 0;
  var compute(const var& x, const var& w) const override {
    ++calls;
    return nn::quantized_linear::compute(x, w);
  }
};

// 1x8x8 -> conv 3x3 (4) -> relu -> conv 3x3/2 (8) -> relu -> global avg -> fc (2).
struct tiny_net : nn::module {
  std::shared_ptr<counting_conv> c1, c2;
  std::shared_ptr<counting_linear> fc;
  explicit tiny_net(std::uint32_t seed) {
    std::mt19937 rng(seed);
    c1 = register_module("c1", std::make_shared<counting_conv>(1, 4, 3, 1, 1, 1, false, rng));
    c2 = register_module("c2", std::make_shared<counting_conv>(4, 8, 3, 2, 1, 1, false, rng));
    fc = register_module("fc", std::make_shared<counting_linear>(8, 2, true, rng));
  }
  var forward(const var& x) override {
    var h = ad::relu((*c1)(x));
    h = ad::relu((*c2)(h));
    return (*fc)(ad::flatten(ad::global_avg_pool2d(h)));
  }
  void reset_counts() { c1->calls = c2->calls = fc->calls = 0; }
};

// The same layers described independently through cost.hpp.
std::vector<layer_cost> tiny_costs() {
  return {make_conv("c1", 1, 4, 3, 1, 1, 8), make_conv("c2", 4, 8, 3, 2, 1, 8),
          make_linear("fc", 8, 2)};
}
model_desc tiny_desc() {
  return {"tiny", tiny_costs(), {}};
}

// Class 0: a bright blob in the top half; class 1: in the bottom half; noise in [0, 0.3).
batch make_batch(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> noise(0.0f, 0.3f);
  std::uniform_int_distribution<int> col(0, 5);
  batch b{ftensor({n, 1, 8, 8}), {}};
  for (std::size_t i = 0; i < n; ++i) {
    const int label = int(i % 2);
    for (std::size_t p = 0; p < 64; ++p) b.images[i * 64 + p] = noise(rng);
    const int r0 = label == 0 ? 1 : 5, c0 = col(rng);
    for (int r = r0; r < r0 + 2; ++r)
      for (int c = c0; c < c0 + 3; ++c) b.images[i * 64 + std::size_t(r * 8 + c)] += 1.0f;
    b.labels.push_back(label);
  }
  return b;
}

search_context make_context(nn::module& model, std::uint64_t seed = 7,
                            std::size_t train_batches = 4) {
  search_context c{model, tiny_costs(), {}, {}, {}, {}, seed, nullptr};
  c.train_batches = [train_batches] { return train_batches; };
  c.train_batch = [](std::size_t i) { return make_batch(16, 100 + std::uint32_t(i)); };
  c.val_batches = [] { return std::size_t(2); };
  c.val_batch = [](std::size_t i) { return make_batch(16, 200 + std::uint32_t(i)); };
  return c;
}

var task_loss(nn::module& m, const batch& b) {
  return ad::cross_entropy(m(ad::constant(b.images)), b.labels);
}

void randomize(std::vector<var> params, std::uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& p : params)
    for (auto& v : p.value()) v = d(rng);
}

void zero_grads(std::vector<var> params) {
  for (auto& p : params) p.zero_grad();
}

// Every architecture tensor has a non-zero gradient.
void require_all_nonzero(const std::vector<var>& params, const char* what) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    double s = 0;
    if (params[i].has_grad())
      for (float g : params[i].grad()) s += std::fabs(g);
    INFO(what << ": architecture tensor " << i);
    CHECK(s > 0);
  }
}

std::vector<var> concat(std::vector<var> a, const std::vector<var>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Search steps as the driver runs them: joint (one backward of search_loss updates all) or
// alternating (a weight step on CE of a train batch, then an architecture step on search_loss
// of a validation batch). Returns nothing; the caller measures.
template <class P>
void search_steps(nn::module& net, P& pol, const budget& b, search_context& ctx, std::size_t epochs,
                  bool alternating) {
  nn::sgd wopt(concat(net.parameters(), pol.parameters()), 0.05f, 0.9f);
  nn::adam aopt(pol.architecture_parameters(), 0.05f);
  net.train();
  for (std::size_t e = 0; e < epochs; ++e) {
    pol.on_search_epoch(ctx, e, epochs);
    for (std::size_t i = 0; i < ctx.train_batches(); ++i) {
      const batch tb = ctx.train_batch(i);
      if (alternating) {
        wopt.zero_grad();
        aopt.zero_grad();
        ad::backward(task_loss(net, tb));
        wopt.step();
        const batch vb = ctx.val_batch(i % ctx.val_batches());
        wopt.zero_grad();
        aopt.zero_grad();
        ad::backward(pol.search_loss(task_loss(net, vb), b));
        aopt.step();
      } else {
        wopt.zero_grad();
        aopt.zero_grad();
        ad::backward(pol.search_loss(task_loss(net, tb), b));
        wopt.step();
        aopt.step();
      }
    }
  }
}

double eval_loss(nn::module& net, const batch& b) {
  ad::no_grad ng;
  const bool was = net.is_training();
  net.eval();
  const double l = task_loss(net, b).item();
  net.train(was);
  return l;
}

std::vector<std::vector<double>> softmax_rows(const std::vector<var>& logits) {
  std::vector<std::vector<double>> out;
  for (const auto& l : logits) {
    double m = -1e300, s = 0;
    for (float v : l.value()) m = std::max(m, double(v));
    std::vector<double> p;
    for (float v : l.value()) s += std::exp(double(v) - m);
    for (float v : l.value()) p.push_back(std::exp(double(v) - m) / s);
    out.push_back(p);
  }
  return out;
}

void check_close(double got, double want, double rel, const char* what) {
  INFO(what << ": got " << got << ", want " << want);
  CHECK(std::fabs(got - want) <= rel * std::max(1.0, std::fabs(want)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Expected cost = cost.hpp's float formulas, value and gradient

TEST_CASE("ebs expected cost equals expected_bits_cost (value and gradient)") {
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits}) {
    tiny_net net(1);
    ebs_options o;
    o.w_bits = {1, 2, 4, 8};
    o.a_bits = {2, 3, 8};
    o.cost_kind = kind;
    ebs_policy pol(o);
    nn::attach_policy(net, pol);
    net(ad::constant(make_batch(2, 1).images));  // costs from the forward's shapes
    auto arch = pol.architecture_parameters();
    randomize(arch, 3, -2.0f, 2.0f);
    std::vector<var> sw, sa;
    for (std::size_t i = 0; i < arch.size(); i += 2)
      sw.push_back(arch[i]), sa.push_back(arch[i + 1]);
    const auto pw = softmax_rows(sw), pa = softmax_rows(sa);
    const auto ref = expected_bits_cost(
        tiny_desc(), pw, o.w_bits, pa, o.a_bits,
        kind == budget_kind::bitops ? cost_metric::bitops : cost_metric::size_bits);
    zero_grads(arch);
    const var c = pol.expected_cost();
    check_close(c.item(), ref.value, 1e-5, "value");
    ad::backward(c);
    for (std::size_t l = 0; l < sw.size(); ++l) {
      const auto gw = softmax_backward(pw[l], ref.d_p_w[l]);
      const auto ga = softmax_backward(pa[l], ref.d_p_a[l]);
      const double scale = std::max(1.0, ref.value);
      for (std::size_t k = 0; k < gw.size(); ++k)
        CHECK(std::fabs(sw[l].grad()[k] - gw[k]) <= 1e-5 * scale);
      for (std::size_t k = 0; k < ga.size(); ++k)
        CHECK(std::fabs(sa[l].has_grad() ? sa[l].grad()[k] - ga[k] : ga[k]) <= 1e-5 * scale);
    }
  }
}

TEST_CASE("dnas expected cost equals mixture_cost / expected_bits_cost") {
  SUBCASE("joint pairs") {
    tiny_net net(1);
    dnas_options o;
    o.pairs = {{2, 2}, {4, 4}, {8, 2}, {3, 8}};
    dnas_policy pol(o);
    nn::attach_policy(net, pol);
    auto arch = pol.architecture_parameters();
    randomize(arch, 5, -2.0f, 2.0f);
    net.eval();  // an evaluation forward: mixture = softmax(theta)
    net(ad::constant(make_batch(2, 1).images));
    const auto m = softmax_rows(arch);
    const auto ref = mixture_cost(tiny_desc(), m, o.pairs, cost_metric::bitops);
    zero_grads(arch);
    const var c = pol.expected_cost();
    check_close(c.item(), ref.value, 1e-5, "value");
    ad::backward(c);
    for (std::size_t l = 0; l < arch.size(); ++l) {
      const auto g = softmax_backward(m[l], ref.d_m[l]);
      for (std::size_t k = 0; k < g.size(); ++k)
        CHECK(std::fabs(arch[l].grad()[k] - g[k]) <= 1e-5 * ref.value);
    }
  }
  SUBCASE("separate sets, training forward (Gumbel mixture weights)") {
    tiny_net net(1);
    dnas_options o;
    o.w_bits = {1, 2, 4};
    o.a_bits = {2, 8};
    dnas_policy pol(o);
    nn::attach_policy(net, pol);
    pol.set_layer_costs(tiny_costs());
    net.train();
    net(ad::constant(make_batch(2, 1).images));
    // The training forward's Gumbel mixture: its cost lies between the cheapest and the
    // dearest configuration, and differs from the expectation under softmax(theta).
    const double c_train = pol.sampled_cost().item();
    const auto lo = evaluate(tiny_desc(), bit_config::uniform(3, 1, 2)).bitops;
    const auto hi = evaluate(tiny_desc(), bit_config::uniform(3, 4, 8)).bitops;
    CHECK(c_train >= lo * (1 - 1e-6));
    CHECK(c_train <= hi * (1 + 1e-6));
    CHECK(c_train != doctest::Approx(pol.expected_cost().item()));
    auto arch = pol.architecture_parameters();
    randomize(arch, 9, -2.0f, 2.0f);
    net.eval();
    net(ad::constant(make_batch(2, 1).images));
    std::vector<var> lw, la;
    for (std::size_t i = 0; i < arch.size(); i += 2)
      lw.push_back(arch[i]), la.push_back(arch[i + 1]);
    const auto ref = expected_bits_cost(tiny_desc(), softmax_rows(lw), o.w_bits, softmax_rows(la),
                                        o.a_bits, cost_metric::bitops);
    check_close(pol.expected_cost().item(), ref.value, 1e-5, "value");
    check_close(pol.sampled_cost().item(), ref.value, 1e-5, "eval forward: softmax mixture");
  }
  SUBCASE("hard Gumbel samples cost exactly one discrete configuration") {
    tiny_net net(1);
    dnas_options o;
    o.w_bits = {1, 2, 4};
    o.a_bits = {2, 8};
    o.hard_gumbel = true;
    dnas_policy pol(o);
    nn::attach_policy(net, pol);
    pol.set_layer_costs(tiny_costs());
    net.train();
    for (int rep = 0; rep < 5; ++rep) {
      net(ad::constant(make_batch(2, 1).images));
      const double c = pol.sampled_cost().item();
      bool found = false;
      for (int code = 0; code < 216 && !found; ++code) {
        bit_config cfg;
        for (int l = 0, k = code; l < 3; ++l, k /= 6) {
          cfg.w_bits.push_back(o.w_bits[std::size_t(k % 6 / 2)]);
          cfg.a_bits.push_back(o.a_bits[std::size_t(k % 2)]);
        }
        found = std::fabs(evaluate(tiny_desc(), cfg).bitops - c) <= 1e-5 * c;
      }
      CHECK(found);
    }
  }
}

TEST_CASE("fracbits expected cost equals fracbits_cost (value and gradient)") {
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits}) {
    tiny_net net(1);
    fracbits_options o;
    o.cost_kind = kind;
    fracbits_policy pol(o);
    nn::attach_policy(net, pol);
    pol.set_layer_costs(tiny_costs());
    auto arch = pol.architecture_parameters();
    randomize(arch, 11, 1.2f, 7.8f);
    std::vector<double> lw, la;
    for (std::size_t i = 0; i < arch.size(); i += 2)
      lw.push_back(arch[i].value()[0]), la.push_back(arch[i + 1].value()[0]);
    const auto ref =
        fracbits_cost(tiny_desc(), lw, la,
                      kind == budget_kind::bitops ? cost_metric::bitops : cost_metric::size_bits);
    zero_grads(arch);
    const var c = pol.expected_cost();
    check_close(c.item(), ref.value, 1e-5, "value");
    ad::backward(c);
    for (std::size_t l = 0; l < lw.size(); ++l) {
      CHECK(std::fabs(arch[2 * l].grad()[0] - ref.d_w_bits[l]) <= 1e-5 * ref.value);
      const double ga = arch[2 * l + 1].has_grad() ? arch[2 * l + 1].grad()[0] : 0.0;
      CHECK(std::fabs(ga - ref.d_a_bits[l]) <= 1e-5 * ref.value);
    }
  }
}

TEST_CASE("policies read layer costs from the attached layers' last forward") {
  tiny_net net(1);
  ebs_policy pol;
  nn::attach_policy(net, pol);
  CHECK_THROWS_AS(pol.expected_cost(), value_error);  // no forward yet
  net(ad::constant(make_batch(2, 1).images));
  const double want = evaluate(tiny_desc(), bit_config::uniform(3, 1, 1)).bitops;
  // uniform strengths: E[w] = E[a] = mean of the candidates
  double mean = 0;
  for (int b : pol.options().w_bits) mean += b;
  mean /= double(pol.options().w_bits.size());
  check_close(pol.expected_cost().item(), want * mean * mean, 1e-5, "uniform strengths");
}

// ---------------------------------------------------------------------------------------------
// Gradients from the task loss and from the cost term, separately

TEST_CASE("architecture parameters get gradients from the task loss and the cost term") {
  const batch b = make_batch(16, 42);
  const budget bud = budget::like_uniform(budget_kind::bitops, tiny_costs(), 2, 2);
  auto check = [&](nn::precision_policy& pol, auto&& cost_term) {
    tiny_net net(3);
    nn::attach_policy(net, pol);
    net.train();
    auto arch = pol.architecture_parameters();
    zero_grads(arch);
    ad::backward(task_loss(net, b));
    require_all_nonzero(arch, "task loss");
    zero_grads(arch);
    net(ad::constant(b.images));
    ad::backward(cost_term());
    require_all_nonzero(arch, "cost term");
  };
  SUBCASE("dnas (separate sets)") {
    dnas_policy pol;
    // the multiplicative factor beta (log C)^gamma alone: search_loss of a constant CE of 1
    check(pol, [&] { return pol.search_loss(ad::constant(ftensor({1}, 1.0f)), bud); });
  }
  SUBCASE("dnas (joint pairs)") {
    dnas_options o;
    o.pairs = {{2, 2}, {2, 4}, {4, 4}, {8, 8}};
    dnas_policy pol(o);
    check(pol, [&] { return pol.search_loss(ad::constant(ftensor({1}, 1.0f)), bud); });
  }
  SUBCASE("ebs") {
    ebs_policy pol;
    check(pol, [&] { return pol.search_loss(ad::constant(ftensor({1}, 0.0f)), bud); });
  }
  SUBCASE("fracbits layer-wise") {
    fracbits_policy pol;
    check(pol, [&] { return pol.search_loss(ad::constant(ftensor({1}, 0.0f)), bud); });
  }
  SUBCASE("fracbits kernel-wise") {
    fracbits_options o;
    o.kernel_wise = true;
    fracbits_policy pol(o);
    check(pol, [&] { return pol.search_loss(ad::constant(ftensor({1}, 0.0f)), bud); });
  }
}

// ---------------------------------------------------------------------------------------------
// EBS: one convolution per layer per step

TEST_CASE(
    "ebs and dnas (separate sets) run one convolution per layer per step; joint dnas one per "
    "pair") {
  const batch b = make_batch(8, 5);
  const budget bud = budget::like_uniform(budget_kind::bitops, tiny_costs(), 3, 3);
  {
    tiny_net net(2);
    ebs_policy pol;  // 5 weight x 5 activation candidates
    nn::attach_policy(net, pol);
    net.train();
    for (int step = 0; step < 3; ++step) {
      net.reset_counts();
      ad::backward(pol.search_loss(task_loss(net, b), bud));
      CHECK(net.c1->calls == 1);
      CHECK(net.c2->calls == 1);
      CHECK(net.fc->calls == 1);
    }
  }
  {
    tiny_net net(2);
    dnas_policy pol;  // separate sets: one op on the mixed weight
    nn::attach_policy(net, pol);
    net.train();
    net.reset_counts();
    ad::backward(pol.search_loss(task_loss(net, b), bud));
    CHECK(net.c1->calls == 1);
    CHECK(net.fc->calls == 1);
  }
  {
    tiny_net net(2);
    dnas_options o;
    o.pairs = {{1, 2}, {2, 2}, {4, 8}};
    dnas_policy pol(o);  // joint pairs: one op per pair (each its own input quantizer)
    nn::attach_policy(net, pol);
    net.train();
    net.reset_counts();
    ad::backward(pol.search_loss(task_loss(net, b), bud));
    CHECK(net.c1->calls == o.pairs.size());
    CHECK(net.fc->calls == o.pairs.size());
  }
}

TEST_CASE(
    "dnas separate sets: the mixed-weight convolution equals the sum of branch convolutions") {
  // Value and gradients (logits, branch weights, alphas, input) against the paper's form
  // sum_i m_w[i] conv(sum_j m_a[j] PACT_j(x), Q_i(W_i)), built explicitly.
  std::mt19937 rng(11);
  ftensor xt({2, 2, 5, 5});
  std::uniform_real_distribution<float> d(-0.5f, 3.0f);
  for (auto& v : xt) v = d(rng);
  counting_conv conv(2, 3, 3, 1, 1, 1, true, rng);  // with a bias
  dnas_options o;
  o.w_bits = {1, 2, 4};
  o.a_bits = {2, 3};
  dnas_policy pol(o);
  nn::attach_policy(conv, pol);
  randomize(pol.architecture_parameters(), 12, -1.0f, 1.0f);
  auto params = pol.parameters();  // 3 weight copies, then 2 alphas
  REQUIRE(params.size() == 5);
  randomize({params[0], params[1], params[2]}, 13, -0.5f, 0.5f);
  randomize({params[3], params[4]}, 14, 1.5f, 3.0f);
  conv.eval();  // mixture = softmax(theta), deterministic
  const auto arch = pol.architecture_parameters();
  ftensor gt({2, 3, 5, 5});
  for (auto& v : gt) v = d(rng);
  const var g = ad::constant(gt);
  auto grads_of = [&](const var& y, const var& x) {
    for (auto& p : params) p.zero_grad();
    for (auto& p : arch) p.zero_grad();
    conv.zero_grad();
    ad::backward(ad::sum(ad::mul(y, g)));
    std::vector<ftensor> out;
    for (auto& p : params) out.push_back(p.grad());
    for (auto& p : arch) out.push_back(p.grad());
    out.push_back(x.grad());
    out.push_back(conv.bias.grad());
    return out;
  };
  const var x1 = ad::var::parameter(xt);
  const var y = conv(x1);
  CHECK(conv.calls == 1);
  const auto fast = grads_of(y, x1);
  const var x2 = ad::var::parameter(xt);
  const var mw = ad::softmax(arch[0], 0), ma = ad::softmax(arch[1], 0);
  var xm, ref;
  for (std::size_t j = 0; j < 2; ++j) {
    const var t =
        ad::mul(quant::pact(x2, params[3 + j], o.a_bits[j]), search::detail::element(ma, j));
    xm = j ? ad::add(xm, t) : t;
  }
  for (std::size_t i = 0; i < 3; ++i) {
    const var t =
        ad::mul(ad::conv2d(xm, quant::dorefa_weights(params[i], o.w_bits[i]), conv.bias, 1, 1, 1),
                search::detail::element(mw, i));
    ref = i ? ad::add(ref, t) : t;
  }
  const auto slow = grads_of(ref, x2);
  auto rel = [](const ftensor& a, const ftensor& b) {
    REQUIRE(a.shape() == b.shape());
    double m = 0, scale = 1e-3;
    for (std::size_t i = 0; i < a.size(); ++i)
      m = std::max(m, double(std::fabs(a[i] - b[i]))),
      scale = std::max(scale, double(std::fabs(b[i])));
    return m / scale;
  };
  CHECK(rel(y.value(), ref.value()) < 1e-5);
  REQUIRE(fast.size() == slow.size());
  for (std::size_t k = 0; k < fast.size(); ++k) {
    CAPTURE(k);
    CHECK(rel(fast[k], slow[k]) < 1e-4);
  }
}

TEST_CASE("ebs forward is the expectation over all (w, a) pairs; dnas mixes its branches") {
  std::mt19937 rng(3);
  ftensor xt({2, 2, 6, 6});
  std::uniform_real_distribution<float> d(-0.5f, 3.0f);
  for (auto& v : xt) v = d(rng);
  const var x = ad::constant(xt);
  auto softmax_of = [](const var& v) { return softmax_rows({v})[0]; };
  auto max_diff = [](const ftensor& a, const ftensor& b) {
    REQUIRE(a.shape() == b.shape());
    double m = 0, scale = 1;
    for (std::size_t i = 0; i < a.size(); ++i)
      m = std::max(m, double(std::fabs(a[i] - b[i]))),
      scale = std::max(scale, double(std::fabs(b[i])));
    return m / scale;
  };
  {
    counting_conv conv(2, 3, 3, 1, 1, 1, false, rng);
    ebs_options o;
    o.w_bits = {1, 2, 4};
    o.a_bits = {2, 3};
    ebs_policy pol(o);
    nn::attach_policy(conv, pol);
    randomize(pol.architecture_parameters(), 4, -1.0f, 1.0f);
    randomize(pol.parameters(), 5, 1.5f, 3.0f);  // PACT alphas
    const var y = conv(x);
    CHECK(conv.calls == 1);
    const auto arch = pol.architecture_parameters();
    const auto alphas = pol.parameters();
    const auto rw = softmax_of(arch[0]), ra = softmax_of(arch[1]);
    ftensor ref(y.shape(), 0.0f);
    for (std::size_t i = 0; i < o.w_bits.size(); ++i)
      for (std::size_t j = 0; j < o.a_bits.size(); ++j) {
        const var yij = ad::conv2d(quant::pact(x, alphas[j], o.a_bits[j]),
                                   quant::dorefa_weights(conv.weight, o.w_bits[i]), var(), 1, 1, 1);
        for (std::size_t k = 0; k < ref.size(); ++k)
          ref[k] += float(rw[i] * ra[j]) * yij.value()[k];
      }
    CHECK(max_diff(y.value(), ref) < 1e-5);
  }
  {
    counting_conv conv(2, 3, 3, 1, 1, 1, false, rng);
    dnas_options o;
    o.pairs = {{1, 2}, {2, 2}, {4, 8}};
    dnas_policy pol(o);
    nn::attach_policy(conv, pol);
    randomize(pol.architecture_parameters(), 6, -1.0f, 1.0f);
    auto params = pol.parameters();  // 3 weight copies, then 3 alphas
    randomize({params[0], params[1], params[2]}, 7, -0.5f, 0.5f);
    randomize({params[3], params[4], params[5]}, 8, 1.5f, 3.0f);
    conv.eval();  // no Gumbel noise: the mixture is softmax(theta)
    const var y = conv(x);
    CHECK(conv.calls == 3);
    const auto m = softmax_of(pol.architecture_parameters()[0]);
    ftensor ref(y.shape(), 0.0f);
    for (std::size_t k = 0; k < 3; ++k) {
      const var yk = ad::conv2d(quant::pact(x, params[3 + k], o.pairs[k].a),
                                quant::dorefa_weights(params[k], o.pairs[k].w), var(), 1, 1, 1);
      for (std::size_t i = 0; i < ref.size(); ++i) ref[i] += float(m[k]) * yk.value()[i];
    }
    CHECK(max_diff(y.value(), ref) < 1e-5);
    // Training forwards draw Gumbel noise: mixture weights differ between two forwards.
    conv.train();
    const var y1 = conv(x), y2 = conv(x);
    CHECK(max_diff(y1.value(), y2.value()) > 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Search steps: loss goes down, the derived configuration meets the budget

TEST_CASE("a few search steps reduce the loss and derive a configuration within budget") {
  const batch probe = make_batch(32, 999);
  const auto costs = tiny_costs();
  const budget search_budget = budget::like_uniform(budget_kind::bitops, costs, 3, 3);
  std::vector<budget> budgets;
  for (int bits : {2, 3})
    for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits})
      budgets.push_back(budget::like_uniform(kind, costs, bits, bits));
  budgets.push_back(budget::bitops(budgets[0].value * 0.7));  // below uniform W2A2
  // Searches at W3A3 BitOps; the loss on a probe batch must go down; then the configuration
  // derived for each budget must be admitted by it.
  auto run = [&](auto& pol, bool alternating, const char* name) {
    INFO(name);
    tiny_net net(4);
    search_context ctx = make_context(net, 7, 3);
    nn::attach_policy(net, pol);
    const double before = eval_loss(net, probe);
    search_steps(net, pol, search_budget, ctx, 2, alternating);
    const double after = eval_loss(net, probe);
    CHECK(after < before);
    for (const budget& b : budgets) {
      INFO("budget " << b.describe());
      const bit_config cfg = pol.derive(ctx, b);
      CHECK(b.admits(costs, cfg));
    }
  };
  {
    dnas_options o;
    o.samples = 4;
    o.eval_batches = 1;
    dnas_policy pol(o);
    run(pol, true, "dnas, separate sets, sampled choice");
  }
  {
    dnas_options o;
    o.pairs = {{1, 2}, {2, 2}, {3, 3}, {4, 4}, {8, 8}};
    o.choice = dnas_choice::argmax;
    dnas_policy pol(o);
    run(pol, true, "dnas, joint pairs, argmax");
  }
  {
    ebs_policy pol;
    run(pol, false, "ebs, absolute penalty");
  }
  {
    ebs_options o;
    o.penalty = ebs_penalty::linear;
    ebs_policy pol(o);
    run(pol, false, "ebs, linear penalty");
  }
  {
    fracbits_policy pol;
    run(pol, false, "fracbits");
  }
  {
    fracbits_options o;
    o.kernel_wise = true;
    o.hard_assign_fraction = 1.0;  // only in derive()
    fracbits_policy pol(o);
    run(pol, false, "fracbits kernel-wise");
  }
}

TEST_CASE("fracbits hard-assigns at the chosen fraction of the search, then drops the cost") {
  tiny_net net(5);
  search_context ctx = make_context(net, 7, 2);
  fracbits_policy pol;  // 0.8 of 5 epochs: before epoch 4
  nn::attach_policy(net, pol);
  const budget b = budget::like_uniform(budget_kind::bitops, tiny_costs(), 2, 2);
  nn::sgd opt(concat(concat(net.parameters(), pol.parameters()), pol.architecture_parameters()),
              0.05f);
  for (std::size_t e = 0; e < 5; ++e) {
    pol.on_search_epoch(ctx, e, 5);
    CHECK(pol.hard_assigned() == (e >= 4));
    const batch tb = ctx.train_batch(e % 2);
    opt.zero_grad();
    const var ce = task_loss(net, tb);
    const var loss = pol.search_loss(ce, b);
    if (pol.hard_assigned()) CHECK(loss.item() == ce.item());
    if (!pol.hard_assigned()) CHECK(loss.item() > ce.item());  // 3.5 bits is above W2A2
    ad::backward(loss);
    opt.step();
  }
  REQUIRE(pol.assigned_config());
  CHECK(b.admits(tiny_costs(), *pol.assigned_config()));
  CHECK(pol.derive(ctx, b) == *pol.assigned_config());
  // The hard forward equals fixed DoReFa / PACT at the assigned bits: lambdas get no gradient.
  for (auto& p : pol.architecture_parameters()) p.zero_grad();
  ad::backward(task_loss(net, ctx.train_batch(0)));
  for (auto& p : pol.architecture_parameters())
    for (float g : p.grad()) CHECK(g == 0.0f);
}

TEST_CASE("ebs derive: argmax when within budget, else repaired and then filled back up") {
  const auto costs = tiny_costs();
  std::mt19937 rng(31);
  for (int trial = 0; trial < 20; ++trial) {
    tiny_net net(9);
    ebs_options o;
    o.derive = ebs_derive::argmax;
    ebs_policy pol(o);
    nn::attach_policy(net, pol);
    pol.set_layer_costs(costs);
    auto arch = pol.architecture_parameters();
    randomize(arch, 300 + std::uint32_t(trial), -2.0f, 2.0f);
    const auto& wb = pol.options().w_bits;
    const auto& ab = pol.options().a_bits;
    // argmax configuration and per-layer log-probabilities of every (w, a)
    bit_config argmax_cfg;
    std::vector<std::vector<double>> lw, la;
    for (std::size_t l = 0; l < costs.size(); ++l) {
      const auto pw = softmax_rows({arch[2 * l]})[0], pa = softmax_rows({arch[2 * l + 1]})[0];
      argmax_cfg.w_bits.push_back(
          wb[std::size_t(std::max_element(pw.begin(), pw.end()) - pw.begin())]);
      argmax_cfg.a_bits.push_back(
          ab[std::size_t(std::max_element(pa.begin(), pa.end()) - pa.begin())]);
      std::vector<double> a, c;
      for (double p : pw) a.push_back(std::log(p));
      for (double p : pa) c.push_back(std::log(p));
      lw.push_back(a), la.push_back(c);
    }
    const double full = budget::bitops(1).cost_of(costs, argmax_cfg);
    const double least = budget::bitops(1).cost_of(costs, bit_config::uniform(3, 1, 1));
    const budget b = budget::bitops(
        least + (full - least) * std::uniform_real_distribution<double>(0.0, 1.2)(rng));
    search_context ctx = make_context(net);
    const bit_config cfg = pol.derive(ctx, b);
    INFO("trial " << trial << " budget " << b.describe() << " argmax cost " << full);
    REQUIRE(b.admits(costs, cfg));
    if (b.admits(costs, argmax_cfg)) {
      CHECK(cfg == argmax_cfg);
      continue;
    }
    // No single layer can move to a more probable (w, a) that still fits.
    const double total = b.cost_of(costs, cfg);
    auto index_of = [](const std::vector<int>& v, int x) {
      return std::size_t(std::find(v.begin(), v.end(), x) - v.begin());
    };
    for (std::size_t l = 0; l < costs.size(); ++l) {
      const double now_lp = lw[l][index_of(wb, cfg.w_bits[l])] + la[l][index_of(ab, cfg.a_bits[l])];
      const double now_cost = layer_bitops(costs[l], cfg.w_bits[l], cfg.a_bits[l]);
      for (std::size_t i = 0; i < wb.size(); ++i)
        for (std::size_t j = 0; j < ab.size(); ++j) {
          const double lp = lw[l][i] + la[l][j];
          const double c = layer_bitops(costs[l], wb[i], ab[j]);
          if (lp > now_lp && c > now_cost) CHECK(total - now_cost + c > b.value * (1 + 1e-9));
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// EBS: the budget fill (fill_exact / fill_greedy) against brute force over all configurations

namespace {
// Per layer every (w, a) of {1,2,3,4,8}^2 with log p = log softmax(s_w)[w] + log softmax(s_a)[a]
// from random strengths in [-spread, spread].
std::vector<std::vector<search::detail::layer_choice>> random_choices(std::size_t layers,
                                                                      std::mt19937& rng,
                                                                      double spread) {
  const int bits[] = {1, 2, 3, 4, 8};
  std::uniform_real_distribution<double> d(-spread, spread);
  auto log_softmax = [&] {
    std::vector<double> x(5);
    double m = -1e300, z = 0;
    for (auto& v : x) v = d(rng), m = std::max(m, v);
    for (double v : x) z += std::exp(v - m);
    for (auto& v : x) v = v - m - std::log(z);
    return x;
  };
  std::vector<std::vector<search::detail::layer_choice>> out(layers);
  for (auto& layer : out) {
    const auto lw = log_softmax(), la = log_softmax();
    for (std::size_t i = 0; i < 5; ++i)
      for (std::size_t j = 0; j < 5; ++j) layer.push_back({bits[i], bits[j], lw[i] + la[j]});
  }
  return out;
}

// Calls f(chosen) for every configuration.
template <class F>
void for_all_configs(const std::vector<std::vector<search::detail::layer_choice>>& ch, F&& f) {
  std::vector<std::size_t> k(ch.size(), 0);
  for (;;) {
    f(std::as_const(k));
    std::size_t l = 0;
    while (l < ch.size() && ++k[l] == ch[l].size()) k[l++] = 0;
    if (l == ch.size()) return;
  }
}

double logp_of(const std::vector<std::vector<search::detail::layer_choice>>& ch,
               const std::vector<std::size_t>& k) {
  double v = 0;
  for (std::size_t l = 0; l < ch.size(); ++l) v += ch[l][k[l]].logp;
  return v;
}
}  // namespace

TEST_CASE("ebs fill_exact: the most probable config in [floor, budget], checked by brute force") {
  const auto costs = tiny_costs();
  std::mt19937 rng(2024);
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits}) {
    for (int trial = 0; trial < 30; ++trial) {
      const auto ch = random_choices(costs.size(), rng, trial % 2 ? 2.0 : 0.05);
      const budget unit{kind, 1.0};
      const double least = unit.cost_of(costs, bit_config::uniform(3, 1, 1));
      const double most = unit.cost_of(costs, bit_config::uniform(3, 8, 8));
      const double t = least + (most - least) * std::uniform_real_distribution<double>(0, 1)(rng);
      const budget b = kind == budget_kind::bitops ? budget::bitops(t) : budget::weight_bits(t);
      const double slack = trial % 3 == 0 ? 0.001 : 0.02;
      // start: the argmax, repaired
      std::vector<std::size_t> best;
      for (const auto& layer : ch)
        best.push_back(std::size_t(
            std::max_element(layer.begin(), layer.end(),
                             [](const auto& x, const auto& y) { return x.logp < y.logp; }) -
            layer.begin()));
      const auto start = search::detail::repair_to_budget(ch, best, costs, b, "test");
      const double start_cost = search::detail::choices_cost(ch, start, costs, kind);
      const auto fill = search::detail::fill_budget_exact(ch, start, costs, b, slack);
      INFO("kind " << to_string(kind) << " trial " << trial << " budget " << b.describe()
                   << " floor " << fill.lower);
      CHECK(fill.proven_optimal);
      const double cost = search::detail::choices_cost(ch, fill.chosen, costs, kind);
      CHECK(cost <= b.value * (1 + 1e-9));
      CHECK(cost >= start_cost * (1 - 1e-12));
      CHECK(cost >= fill.lower * (1 - 1e-9));
      // brute force: the best log-probability within the window, and (if the floor was lowered
      // below (1 - slack) T) that the window of half the slack held no configuration at all
      const double s_used = 1 - fill.lower / b.value;
      const double tight = std::max(start_cost, (1 - s_used / 2) * b.value);
      const bool widened =
          fill.lower < (1 - slack) * b.value * (1 - 1e-12) && fill.lower > start_cost * (1 + 1e-12);
      double best_lp = -1e300;
      bool tight_feasible = false;
      for_all_configs(ch, [&](const std::vector<std::size_t>& k) {
        const double c = search::detail::choices_cost(ch, k, costs, kind);
        if (c > b.value * (1 + 1e-9)) return;
        if (c >= fill.lower * (1 - 1e-9)) best_lp = std::max(best_lp, logp_of(ch, k));
        if (c >= tight * (1 - 1e-9)) tight_feasible = true;
      });
      CHECK(logp_of(ch, fill.chosen) == doctest::Approx(best_lp).epsilon(1e-12));
      if (widened) CHECK_FALSE(tight_feasible);
      if (fill.lower > start_cost * (1 + 1e-12))
        CHECK(fill.lower <= (1 - slack) * b.value * (1 + 1e-12));
      // the greedy fill: within budget, never below the start, and either at the floor or
      // with no single upgrade left that fits
      const auto g = search::detail::fill_budget_greedy(ch, start, costs, b, slack);
      const double gc = search::detail::choices_cost(ch, g, costs, kind);
      CHECK(gc <= b.value * (1 + 1e-9));
      CHECK(gc >= start_cost * (1 - 1e-12));
      if (gc < (1 - slack) * b.value)
        for (std::size_t l = 0; l < ch.size(); ++l)
          for (std::size_t k = 0; k < ch[l].size(); ++k) {
            const double added =
                search::detail::unit_cost(costs[l], kind, ch[l][k].w, ch[l][k].a) -
                search::detail::unit_cost(costs[l], kind, ch[l][g[l]].w, ch[l][g[l]].a);
            if (added > 0) CHECK(gc + added > b.value * (1 + 1e-9));
          }
    }
  }
}

TEST_CASE("ebs derive fills the budget: within it, no less than argmax, the exact optimum") {
  const auto costs = tiny_costs();
  std::mt19937 rng(77);
  for (int trial = 0; trial < 12; ++trial) {
    std::vector<bit_config> cfg;
    std::vector<std::unique_ptr<tiny_net>> nets;
    std::vector<std::unique_ptr<ebs_policy>> pols;
    const float spread = trial % 2 ? 2.0f : 0.05f;  // peaked or near-uniform strengths
    for (ebs_derive mode : {ebs_derive::argmax, ebs_derive::fill_greedy, ebs_derive::fill_exact}) {
      ebs_options o;
      o.derive = mode;
      nets.push_back(std::make_unique<tiny_net>(9));
      pols.push_back(std::make_unique<ebs_policy>(o));
      nn::attach_policy(*nets.back(), *pols.back());
      pols.back()->set_layer_costs(costs);
      randomize(pols.back()->architecture_parameters(), 500 + std::uint32_t(trial), -spread,
                spread);
    }
    const double least = budget::bitops(1).cost_of(costs, bit_config::uniform(3, 1, 1));
    const double w4 = budget::bitops(1).cost_of(costs, bit_config::uniform(3, 4, 4));
    const budget b =
        budget::bitops(least + (w4 - least) * std::uniform_real_distribution<double>(0, 1)(rng));
    for (std::size_t m = 0; m < 3; ++m) {
      search_context ctx = make_context(*nets[m]);
      std::ostringstream log;
      ctx.log = &log;
      cfg.push_back(pols[m]->derive(ctx, b));
      REQUIRE(b.admits(costs, cfg.back()));
      // the fills report the argmax and the filled config with their share of the budget
      CHECK((log.str().find("filled (" + std::string(m == 1 ? "greedy" : "exact")) !=
             std::string::npos) == (m > 0));
      if (m > 0) CHECK(log.str().find(cfg.back().to_string()) != std::string::npos);
    }
    INFO("trial " << trial << " " << b.describe() << " argmax " << cfg[0].to_string() << " greedy "
                  << cfg[1].to_string() << " exact " << cfg[2].to_string());
    const double c_argmax = b.cost_of(costs, cfg[0]);
    CHECK(b.cost_of(costs, cfg[1]) >= c_argmax);
    CHECK(b.cost_of(costs, cfg[2]) >= c_argmax);
    // exact: no configuration in [max(argmax cost, 0.98 T), T] is more probable (brute force
    // over all 25^3 configs with the policy's own strengths)
    const auto arch = pols[2]->architecture_parameters();
    const int bits[] = {1, 2, 3, 4, 8};
    std::vector<std::vector<double>> lw, la;
    for (std::size_t l = 0; l < costs.size(); ++l) {
      lw.push_back({}), la.push_back({});
      const auto pw = softmax_rows({arch[2 * l]}), pa = softmax_rows({arch[2 * l + 1]});
      for (double p : pw[0]) lw.back().push_back(std::log(p));
      for (double p : pa[0]) la.back().push_back(std::log(p));
    }
    auto lp_of = [&](const bit_config& c) {
      double v = 0;
      for (std::size_t l = 0; l < costs.size(); ++l)
        v += lw[l][std::size_t(std::find(bits, bits + 5, c.w_bits[l]) - bits)] +
             la[l][std::size_t(std::find(bits, bits + 5, c.a_bits[l]) - bits)];
      return v;
    };
    const double floor = std::max(c_argmax, 0.98 * b.value);
    const double c_exact = b.cost_of(costs, cfg[2]);
    if (c_exact >= floor * (1 - 1e-9)) {
      double best = -1e300;
      for (int i = 0; i < 15625; ++i) {
        bit_config c;
        for (int l = 0, r = i; l < 3; ++l, r /= 25) {
          c.w_bits.push_back(bits[(r % 25) / 5]);
          c.a_bits.push_back(bits[r % 5]);
        }
        const double cc = b.cost_of(costs, c);
        if (cc <= b.value * (1 + 1e-9) && cc >= floor * (1 - 1e-9)) best = std::max(best, lp_of(c));
      }
      CHECK(lp_of(cfg[2]) == doctest::Approx(best).epsilon(1e-6));
    }
  }
}

TEST_CASE("ebs derive at a budget of exactly the all-minimum cost, every mode and kind") {
  const auto costs = tiny_costs();
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits})
    for (ebs_derive mode : {ebs_derive::argmax, ebs_derive::fill_greedy, ebs_derive::fill_exact}) {
      tiny_net net(9);
      ebs_options o;
      o.derive = mode;
      ebs_policy pol(o);
      nn::attach_policy(net, pol);
      pol.set_layer_costs(costs);
      randomize(pol.architecture_parameters(), 11, -2.0f, 2.0f);
      const budget b = budget::like_uniform(kind, costs, 1, 1);
      search_context ctx = make_context(net);
      const bit_config c = pol.derive(ctx, b);
      CHECK(b.admits(costs, c));
      CHECK(c.w_bits == std::vector<int>(3, 1));
      if (kind == budget_kind::bitops) CHECK(c.a_bits == std::vector<int>(3, 1));
    }
}

TEST_CASE("ebs fill options: bad values raise value_error") {
  for (double slack : {0.0, -0.1, 1.5, std::nan("")}) {
    ebs_options o;
    o.fill_slack = slack;
    CHECK_THROWS_AS(ebs_policy{o}, value_error);
  }
  ebs_options o;
  o.fill_max_nodes = 0;
  CHECK_THROWS_AS(ebs_policy{o}, value_error);
}

TEST_CASE("fracbits starts its lambdas at the budget's uniform bit-width + 0.5") {
  const auto costs = tiny_costs();
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits}) {
    for (int bits : {2, 3, 5}) {
      tiny_net net(2);
      fracbits_policy pol;
      nn::attach_policy(net, pol);
      pol.set_layer_costs(costs);
      const budget b = budget::like_uniform(kind, costs, bits, bits);
      (void)pol.search_loss(ad::constant(ftensor({1}, 0.0f)), b);
      for (const auto& p : pol.architecture_parameters())
        for (float v : p.value()) CHECK(v == doctest::Approx(bits + 0.5));
      // only the first call initialises
      pol.architecture_parameters()[0].value()[0] = 4.25f;
      (void)pol.search_loss(ad::constant(ftensor({1}, 0.0f)), b);
      CHECK(pol.architecture_parameters()[0].value()[0] == 4.25f);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// FracBits: the offset bisection

TEST_CASE("fracbits bisection lands within 1% of an attainable target, and never above") {
  // ResNet-18's 21 layer costs; the policy's state lives on 21 one-in one-out layers.
  const auto desc = resnet18();
  nn::sequential net;
  for (std::size_t i = 0; i < desc.size(); ++i)
    net.add(std::make_shared<nn::quantized_linear>(1, 1));
  std::mt19937 rng(77);
  for (int trial = 0; trial < 20; ++trial) {
    fracbits_policy pol;
    nn::attach_policy(net, pol);
    pol.set_layer_costs(desc.layers);
    randomize(pol.architecture_parameters(), 1000 + std::uint32_t(trial), 1.0f, 8.0f);
    const budget kind_probe = budget::bitops(1.0);
    // Reference: every configuration round(lambda + o) takes as o grows. Rounding changes
    // only where some lambda + o crosses k + 1/2, so evaluating between consecutive crossings
    // gives the whole chain.
    std::vector<double> cuts{-9.0, 9.0};
    for (std::size_t i = 0; i < desc.size(); ++i) {
      const auto arch = pol.architecture_parameters();
      for (const var* lam : {&arch[2 * i], &arch[2 * i + 1]})
        for (int k = 0; k <= 9; ++k) cuts.push_back(k + 0.5 - double(lam->value()[0]));
    }
    std::sort(cuts.begin(), cuts.end());
    std::vector<double> chain;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i)
      if (cuts[i + 1] > cuts[i])
        chain.push_back(
            kind_probe.cost_of(desc.layers, pol.rounded(0.5 * (cuts[i] + cuts[i + 1]))));
    // An attainable target: a chain cost plus 0.5% (so the 1% band contains it).
    std::uniform_int_distribution<std::size_t> pick(0, chain.size() - 1);
    const double target = chain[pick(rng)] * 1.005;
    const budget bud = budget::bitops(target);
    pol.hard_assign(bud);
    const auto& r = pol.last_bisection();
    INFO("trial " << trial << " target " << target << " cost " << r.cost);
    CHECK(r.within_tolerance);
    CHECK(r.cost <= target);
    CHECK(r.cost >= 0.99 * target);
    CHECK(bud.admits(desc.layers, *pol.assigned_config()));
    CHECK(bud.cost_of(desc.layers, *pol.assigned_config()) == doctest::Approx(r.cost));
    // Any target: the result is the largest chain cost within budget.
    const double any = chain.front() + (chain.back() - chain.front()) *
                                           std::uniform_real_distribution<double>(0, 1)(rng);
    pol.hard_assign(budget::bitops(any));
    double best = 0;
    for (double c : chain)
      if (c <= any) best = std::max(best, c);
    CHECK(pol.last_bisection().cost <= any);
    if (!pol.last_bisection().within_tolerance)
      CHECK(pol.last_bisection().cost == doctest::Approx(best).epsilon(1e-12));
  }
}

// ---------------------------------------------------------------------------------------------
// DNAS reproducibility

TEST_CASE("dnas with a fixed seed is reproducible") {
  const budget bud = budget::like_uniform(budget_kind::bitops, tiny_costs(), 3, 3);
  auto run = [&](std::uint64_t seed) {
    tiny_net net(6);
    dnas_options o;
    o.seed = seed;
    o.samples = 6;
    dnas_policy pol(o);
    nn::attach_policy(net, pol);
    search_context ctx = make_context(net, seed, 2);
    search_steps(net, pol, bud, ctx, 2, true);
    std::vector<float> logits;
    for (auto& p : pol.architecture_parameters())
      for (float v : p.value()) logits.push_back(v);
    return std::pair{pol.derive(ctx, bud), logits};
  };
  const auto a = run(11), b = run(11), c = run(12);
  CHECK(a.first == b.first);
  CHECK(a.second == b.second);
  CHECK(a.second != c.second);
}

TEST_CASE("dnas derive copies the chosen branch weights into the layers") {
  tiny_net net(8);
  dnas_options o;
  o.choice = dnas_choice::argmax;
  o.fill_budget = false;
  dnas_policy pol(o);
  nn::attach_policy(net, pol);
  auto params = pol.parameters();
  randomize(params, 21, -1.0f, 1.0f);  // make every branch copy different
  search_context ctx = make_context(net);
  const budget bud = budget::like_uniform(budget_kind::bitops, tiny_costs(), 8, 8);
  net(ad::constant(make_batch(2, 1).images));
  // logits favouring weight candidate 2 (3 bits) everywhere
  for (std::size_t i = 0; i < pol.architecture_parameters().size(); i += 2)
    pol.architecture_parameters()[i].value()[2] = 5.0f;
  const bit_config cfg = pol.derive(ctx, bud);
  for (int w : cfg.w_bits) CHECK(w == 3);
  // parameters(): per layer 5 weight copies then 5 alphas
  CHECK(net.c1->weight.value().span()[0] == params[2].value()[0]);
  CHECK(net.c2->weight.value().span()[0] == params[10 + 2].value()[0]);
}

TEST_CASE("dnas derive fills the budget the argmax left, and copies the filled branches") {
  for (double frac : {0.3, 0.6, 0.9}) {
    CAPTURE(frac);
    tiny_net net(9);
    dnas_options o;
    o.choice = dnas_choice::argmax;
    dnas_policy pol(o);
    nn::attach_policy(net, pol);
    auto params = pol.parameters();
    randomize(params, 22, -1.0f, 1.0f);
    randomize(pol.architecture_parameters(), 23, -1.0f, 1.0f);
    for (std::size_t i = 0; i < pol.architecture_parameters().size(); ++i)
      pol.architecture_parameters()[i].value()[0] += 4.0f;  // argmax: 1 bit everywhere
    search_context ctx = make_context(net);
    const double lo = budget::like_uniform(budget_kind::bitops, tiny_costs(), 1, 1).value;
    const double hi = budget::like_uniform(budget_kind::bitops, tiny_costs(), 8, 8).value;
    const budget bud{budget_kind::bitops, lo + frac * (hi - lo)};
    net(ad::constant(make_batch(2, 1).images));
    const bit_config cfg = pol.derive(ctx, bud);
    CHECK(bud.admits(tiny_costs(), cfg));
    const double used = bud.cost_of(tiny_costs(), cfg) / bud.value;
    // argmax alone (all W1A1) is at lo / bud.value; the fill gets within its 2% window or,
    // when no config lies in it, at least above the argmax.
    CHECK(used > lo / bud.value);
    CHECK(used >= 0.9);
    // the weights copied are the chosen branches' (per layer 5 weight copies then 5 alphas)
    const std::vector<int> wb{1, 2, 3, 4, 8};
    const auto k1 = std::size_t(std::find(wb.begin(), wb.end(), cfg.w_bits[0]) - wb.begin());
    CHECK(net.c1->weight.value().span()[0] == params[k1].value()[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST_CASE("bad candidate sets are rejected") {
  dnas_options d;
  d.w_bits = {2, 9};
  CHECK_THROWS_AS(dnas_policy{d}, bits_error);
  d.w_bits = {0, 2};
  CHECK_THROWS_AS(dnas_policy{d}, bits_error);
  d.w_bits = {};
  CHECK_THROWS_AS(dnas_policy{d}, value_error);
  dnas_options p;
  p.pairs = {{2, 2}, {9, 2}};
  CHECK_THROWS_AS(dnas_policy{p}, bits_error);
  ebs_options e;
  e.a_bits = {};
  CHECK_THROWS_AS(ebs_policy{e}, value_error);
  e.a_bits = {1, 16};
  CHECK_THROWS_AS(ebs_policy{e}, bits_error);
  fracbits_options f;
  f.max_bits = 9;
  CHECK_THROWS_AS(fracbits_policy{f}, bits_error);
  f.max_bits = 8;
  f.min_bits = 0;
  CHECK_THROWS_AS(fracbits_policy{f}, bits_error);
  f.min_bits = 2;
  f.init_bits = 1.5;
  CHECK_THROWS_AS(fracbits_policy{f}, bits_error);
  try {
    ebs_options bad;
    bad.w_bits = {3, 12};
    ebs_policy pol(bad);
    FAIL("no throw");
  } catch (const bits_error& err) {
    CHECK(std::string(err.what()).find("12") != std::string::npos);
    CHECK(std::string(err.what()).find("1..8") != std::string::npos);
  }
}

TEST_CASE("a budget below the all-minimum cost raises budget_error naming the smallest value") {
  const auto costs = tiny_costs();
  auto expect = [&](auto&& f, int min_w, int min_a, budget_kind kind) {
    const budget full = budget::like_uniform(kind, costs, min_w, min_a);
    const budget tight{kind, full.value * 0.9};
    try {
      f(tight);
      FAIL("no budget_error");
    } catch (const budget_error& err) {
      INFO(err.what());
      CHECK(std::string(err.what()).find(search::detail::figure(full.value)) != std::string::npos);
    }
  };
  tiny_net net(1);
  search_context ctx = make_context(net);
  const batch b = make_batch(4, 1);
  for (budget_kind kind : {budget_kind::bitops, budget_kind::weight_bits}) {
    {
      dnas_options o;
      o.w_bits = {2, 4};
      o.a_bits = {3, 8};
      dnas_policy pol(o);
      nn::attach_policy(net, pol);
      expect([&](const budget& bb) { pol.search_loss(task_loss(net, b), bb); }, 2, 3, kind);
      expect([&](const budget& bb) { pol.derive(ctx, bb); }, 2, 3, kind);
    }
    {
      ebs_policy pol;  // minimum 1 / 1
      nn::attach_policy(net, pol);
      expect([&](const budget& bb) { pol.search_loss(task_loss(net, b), bb); }, 1, 1, kind);
      expect([&](const budget& bb) { pol.derive(ctx, bb); }, 1, 1, kind);
    }
    {
      fracbits_options o;
      o.min_bits = 2;
      o.init_bits = 3.5;
      fracbits_policy pol(o);
      nn::attach_policy(net, pol);
      expect([&](const budget& bb) { pol.search_loss(task_loss(net, b), bb); }, 2, 2, kind);
      expect([&](const budget& bb) { pol.derive(ctx, bb); }, 2, 2, kind);
    }
  }
}

TEST_CASE("policies used before attaching or with mismatched costs raise typed errors") {
  ebs_policy e;
  CHECK_THROWS_AS(e.expected_cost(), value_error);
  tiny_net net(1);
  nn::attach_policy(net, e);
  CHECK_THROWS_AS(e.set_layer_costs({make_linear("x", 2, 2)}), shape_error);
  dnas_policy d;
  nn::attach_policy(net, d);
  bit_config bad = bit_config::uniform(3, 5, 5);  // 5 is not a candidate by default
  CHECK_THROWS_AS(d.force_config(bad), bits_error);
}
