// deploy::compile over deployable_policy: a BMPQ-quantized demo CNN (mixed weight bits from
// BMPQ's own allocation, one-sided EMA activation ranges) compiles to an integer model that
// gives the same predictions as its fake-quant forward; BMPQ's weight codes dequantise to the
// weights its forward uses; inputs BMPQ cannot deploy (signed or unmeasured ranges) and
// layers attached to another policy are rejected with typed errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "deploy_test_util.hpp"
#include "mixq/deploy.hpp"
#include "mixq/nn.hpp"
#include "mixq/nn/demo_cnn.hpp"
#include "mixq/search/bmpq_policy.hpp"
#include "mixq/search/trace.hpp"
#include "test_util.hpp"

using namespace mixq;
namespace ad = mixq::autodiff;
using mixq::test::compare;
using mixq::test::random_tensor;

static_assert(deploy::deployable_policy<nn::fixed_policy>);
static_assert(deploy::deployable_policy<search::bmpq_policy>);

namespace {

// Random images in [lo, hi] with random labels, as BMPQ's probe batches.
struct random_batches {
  std::vector<search::batch> batches;
  random_batches(std::size_t count, std::size_t n, std::mt19937& rng, float lo, float hi) {
    for (std::size_t b = 0; b < count; ++b) {
      search::batch bt{random_tensor({n, 1, 28, 28}, rng, lo, hi), {}};
      for (std::size_t i = 0; i < n; ++i) bt.labels.push_back(int(rng() % 10));
      batches.push_back(std::move(bt));
    }
  }
};

search::search_context context_of(nn::module& m, const random_batches& d) {
  return {m,
          search::trace_costs(m, {1, 1, 28, 28}).layers,
          [&d] { return d.batches.size(); },
          [&d](std::size_t i) { return d.batches.at(i); },
          [&d] { return d.batches.size(); },
          [&d](std::size_t i) { return d.batches.at(i); },
          3,
          nullptr};
}

// Batch-norm statistics and affine parameters away from identity (a trained-looking state).
void randomise_batch_norms(nn::module& m, std::mt19937& rng) {
  for (auto& [name, v] : m.named_parameters())
    if (v.value().shape().size() == 1)
      for (auto& x : v.value()) x = std::uniform_real_distribution<float>(-0.3f, 1.5f)(rng);
  for (auto& [name, v] : m.named_buffers())
    for (auto& x : v.value())
      x = name.find("var") != std::string::npos
              ? std::uniform_real_distribution<float>(0.05f, 2.0f)(rng)
              : std::uniform_real_distribution<float>(-0.5f, 0.5f)(rng);
}

// A demo CNN with BMPQ attached and allocated under a weight-bit budget like uniform w4
// (with EMA-range activations) or w2 with 1-bit candidates (LSQ activations, BMPQ's default),
// activations at `a_bits`; the probe batches (training mode) measure the activation ranges.
struct bmpq_model {
  std::shared_ptr<nn::sequential> net;
  search::bmpq_policy policy;
  random_batches data;

  bmpq_model(std::mt19937& rng, int a_bits, float input_lo,
             search::bmpq_activation_quantizer acts = search::bmpq_activation_quantizer::ema_range)
      : net(nn::demo_cnn(10, 1, rng)),
        policy(options(a_bits, acts)),
        data(2, 8, rng, input_lo, 1.0f) {
    auto ctx = context_of(*net, data);
    const auto b = search::budget::like_uniform(
        search::budget_kind::weight_bits, ctx.costs,
        acts == search::bmpq_activation_quantizer::lsq ? 2 : 4, a_bits);
    policy.allocate(ctx, b);
    randomise_batch_norms(*net, rng);
  }
  static search::bmpq_options options(
      int a_bits,
      search::bmpq_activation_quantizer acts = search::bmpq_activation_quantizer::ema_range) {
    search::bmpq_options o;
    o.space.candidates = {2, 3, 4, 6, 8};
    if (acts == search::bmpq_activation_quantizer::lsq)
      o.space.candidates.insert(o.space.candidates.begin(), 1);
    o.space.a_bits = a_bits;
    o.probe_batches = 2;
    o.activations = acts;
    return o;
  }
};

}  // namespace

TEST_CASE("bmpq weight codes dequantise to the weights of its eval forward") {
  std::mt19937 rng(31);
  bmpq_model m(rng, 4, 0.0f);
  const auto layers = nn::quantized_layers(*m.net);
  REQUIRE(m.policy.layers() == layers.size());
  ad::no_grad ng;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CAPTURE(i);
    const auto codes = m.policy.weight_codes(i);
    codes.validate();
    CHECK(codes.type == bitwidth{m.policy.config().w_bits[i], true});
    CHECK(codes.scale.size() == 1);
    CHECK(codes.zero_point[0] == 0.0f);
    const ad::ftensor want = m.policy.quantize_weights(i, layers[i]->weight).value();
    const tensor<float> got = codes.dequantize();
    REQUIRE(got.shape() == want.shape());
    std::size_t differ = 0;
    for (std::size_t j = 0; j < got.size(); ++j) differ += got[j] != want[j];
    CHECK(differ == 0);
    // The largest magnitude reaches the top code.
    const int levels = (1 << (codes.type.bits - 1)) - 1;
    int top = 0;
    for (int c : codes.codes) top = std::max(top, std::abs(c));
    CHECK(top == levels);
  }
  // An all-zero weight tensor: all codes 0, a valid scale.
  for (auto& v : layers[0]->weight.value()) v = 0.0f;
  const auto zero = m.policy.weight_codes(0);
  zero.validate();
  CHECK(std::all_of(zero.codes.begin(), zero.codes.end(), [](int c) { return c == 0; }));
  CHECK_THROWS_AS(m.policy.weight_codes(layers.size()), shape_error);
  CHECK_THROWS_AS(m.policy.clip_value(layers.size()), shape_error);
}

TEST_CASE("compiled BMPQ demo CNN agrees with its fake-quant forward") {
  std::mt19937 rng(32);
  using acts = search::bmpq_activation_quantizer;
  for (acts kind : {acts::ema_range, acts::lsq})
    for (int a_bits : {1, 2, 3, 4, 8}) {
      if (kind == acts::ema_range && a_bits == 1) continue;  // one-bit EMA grids: not BMPQ's use
      CAPTURE(a_bits);
      CAPTURE(int(kind));
      bmpq_model m(rng, a_bits, 0.0f, kind);
      CAPTURE(m.policy.config().to_string());
      if (kind == acts::lsq)  // a w2-like budget with 1-bit candidates: binary layers deploy too
        CHECK(std::count(m.policy.config().w_bits.begin(), m.policy.config().w_bits.end(), 1) > 0);
      for (std::size_t i = 0; i < m.policy.layers(); ++i) {
        CHECK(deploy_input_problem(m.policy, i).empty());
        CHECK(m.policy.clip_value(i) > 0.0f);
      }
      auto im = deploy::compile(*m.net, m.policy, {1, 28, 28});
      const ad::ftensor images = random_tensor({24, 1, 28, 28}, rng, 0.0f, 1.0f);
      const auto a = compare(*m.net, im, images);
      CAPTURE(a.max_abs_diff);
      CAPTURE(a.max_abs_logit);
      CHECK(a.same_prediction == a.samples);
      CHECK(a.max_abs_diff <= 1e-3 * (1.0 + a.max_abs_logit));
      // Every quantized layer runs at BMPQ's bits, with signed weights.
      std::size_t q = 0;
      for (const auto& l : im.layers())
        if (l.kind == deploy::op_kind::quantized) {
          CHECK(l.weight_type == m.policy.weight_codes(q).type);
          CHECK(l.weight_type.bits == m.policy.config().w_bits[q]);
          CHECK(l.input.bits == m.policy.config().a_bits[q]);
          CHECK(l.input.grid == (kind == acts::lsq
                                     ? quant::activation_grid::step(m.policy.activation_step(q))
                                     : quant::activation_grid::pact(m.policy.clip_value(q))));
          ++q;
        }
      CHECK(q == m.policy.layers());
      // Through a file and back: bit-identical outputs.
      const auto path =
          std::filesystem::temp_directory_path() /
          ("mixq-test-bmpq-" + std::to_string(a_bits) + "-" + std::to_string(int(kind)) + ".mixq");
      deploy::save(im, path);
      auto back = deploy::load(path);
      std::filesystem::remove(path);
      const auto x = im.run(images), y = back.run(images);
      REQUIRE(x.size() == y.size());
      CHECK(std::equal(x.begin(), x.end(), y.begin()));
    }
}

TEST_CASE("compile rejects BMPQ inputs it cannot encode") {
  std::mt19937 rng(33);
  SUBCASE("a signed LSQ grid") {
    bmpq_model m(rng, 4, -1.0f, search::bmpq_activation_quantizer::lsq);
    CHECK(deploy_input_problem(m.policy, 0).find("signed LSQ activation grid") !=
          std::string::npos);
    CHECK(deploy_input_problem(m.policy, 1).empty());  // after a ReLU
    CHECK_THROWS_AS((void)deploy::compile(*m.net, m.policy, {1, 28, 28}), value_error);
  }
  SUBCASE("a signed input range (two-sided grid)") {
    bmpq_model m(rng, 4, -1.0f);  // images in [-1, 1]: the first layer sees negative inputs
    const auto why = deploy_input_problem(m.policy, 0);
    CHECK(why.find("signed activation range") != std::string::npos);
    try {
      (void)deploy::compile(*m.net, m.policy, {1, 28, 28});
      FAIL("compile accepted a signed BMPQ input");
    } catch (const value_error& e) {
      CHECK(std::string(e.what()).find("signed activation range") != std::string::npos);
    }
  }
  SUBCASE("a range never measured") {
    auto net = nn::demo_cnn(10, 1, rng);
    search::bmpq_policy p(bmpq_model::options(4));
    nn::attach_policy(*net, p);
    CHECK(deploy_input_problem(p, 0).find("no measured activation range") != std::string::npos);
    CHECK_THROWS_AS((void)deploy::compile(*net, p, {1, 28, 28}), value_error);
  }
  SUBCASE("layers attached to another policy") {
    bmpq_model m(rng, 4, 0.0f);
    search::bmpq_policy other(bmpq_model::options(4));
    auto net2 = nn::demo_cnn(10, 1, rng);
    nn::attach_policy(*net2, other);  // `other` has layers but the model runs m.policy
    try {
      (void)deploy::compile(*m.net, other, {1, 28, 28});
      FAIL("compile accepted a model not attached to the policy");
    } catch (const value_error& e) {
      CHECK(std::string(e.what()).find("not attached to the given policy") != std::string::npos);
    }
  }
}

TEST_CASE("compile rejects a model attached to another fixed_policy") {
  std::mt19937 rng(34);
  auto net = nn::demo_cnn(10, 1, rng);
  auto cfg = quant::bit_config::uniform(6, 4, 4);
  nn::fixed_policy used(cfg), other(cfg);
  auto net2 = nn::demo_cnn(10, 1, rng);
  nn::attach_policy(*net2, other);
  nn::attach_policy(*net, used);
  CHECK_NOTHROW((void)deploy::compile(*net, used, {1, 28, 28}));
  try {
    (void)deploy::compile(*net, other, {1, 28, 28});
    FAIL("compile accepted a model not attached to the policy");
  } catch (const value_error& e) {
    CHECK(std::string(e.what()).find("not attached to the given policy") != std::string::npos);
  }
}
