// fixed_policy on models of quantized_conv2d / quantized_linear: outputs equal the manual
// fake-quant computation, weight codes dequantise to the weights the forward pass uses,
// training through the policy lowers the loss and trains the PACT alphas, and bad configs
// raise typed errors.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "mixq/nn.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "test_util.hpp"

using namespace mixq;
using namespace mixq::nn;
namespace ad = mixq::autodiff;
using mixq::test::random_tensor;

namespace {

struct tiny_net {
  std::shared_ptr<sequential> net = std::make_shared<sequential>();
  std::shared_ptr<quantized_conv2d> c1, c2;
  std::shared_ptr<quantized_linear> fc;
  explicit tiny_net(std::mt19937& rng) {
    c1 = net->add(std::make_shared<quantized_conv2d>(1, 4, 3, 1, 1, 1, true, rng));
    net->add(std::make_shared<relu>());
    c2 = net->add(std::make_shared<quantized_conv2d>(4, 6, 3, 2, 1, 1, false, rng));
    net->add(std::make_shared<relu>());
    net->add(std::make_shared<flatten>());
    fc = net->add(std::make_shared<quantized_linear>(6 * 4 * 4, 3, true, rng));
  }
};
}  // namespace

TEST_CASE("fixed_policy: forward equals the manual fake-quant computation") {
  std::mt19937 rng(1);
  tiny_net m(rng);
  const quant::bit_config cfg{{2, 4, 8}, {8, 3, 2}};
  fixed_policy_options opt;
  opt.two_sided_layers = {0};  // the input image here is in [-1, 1]
  fixed_policy policy(cfg, opt);
  attach_policy(*m.net, policy);
  CHECK(policy.parameters().size() == 3);
  const ad::ftensor x = random_tensor({2, 1, 8, 8}, rng, -1.5f, 1.5f);
  const var y = (*m.net)(ad::constant(x));

  ad::no_grad ng;
  const quant::pact_options two{true, quant::pact_alpha_gradient::residual};
  var h = quant::pact(ad::constant(x), policy.alpha(0), 8, two);
  h = ad::conv2d(h, quant::dorefa_weights(m.c1->weight, 2), m.c1->bias, 1, 1);
  h = ad::relu(h);
  h = quant::pact(h, policy.alpha(1), 3);
  h = ad::relu(ad::conv2d(h, quant::dorefa_weights(m.c2->weight, 4), var(), 2, 1));
  h = quant::pact(ad::flatten(h), policy.alpha(2), 2);
  h = ad::linear(h, quant::dorefa_weights(m.fc->weight, 8), m.fc->bias);
  REQUIRE(h.shape() == y.shape());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y.value()[i] == h.value()[i]);
  CHECK(policy.alpha(0).value()[0] == 8.0f);   // conv init
  CHECK(policy.alpha(2).value()[0] == 10.0f);  // linear init

  // The deployable codes reproduce the weights the forward pass used, bit for bit.
  const quantized_layer* layers[] = {m.c1.get(), m.c2.get(), m.fc.get()};
  for (std::size_t i = 0; i < 3; ++i) {
    const quant::code_tensor c = policy.weight_codes(i);
    c.validate();
    CHECK(c.type.bits == cfg.w_bits[i]);
    const var wq = quant::dorefa_weights(layers[i]->weight, cfg.w_bits[i]);
    const ad::ftensor d = c.dequantize();
    for (std::size_t k = 0; k < d.size(); ++k) CHECK(d[k] == wq.value()[k]);
  }
  const quant::code_tensor a0 = policy.activation_codes(0, x);
  const var xq = quant::pact(ad::constant(x), policy.alpha(0), 8, two);
  const ad::ftensor d0 = a0.dequantize();
  for (std::size_t k = 0; k < d0.size(); ++k) CHECK(d0[k] == xq.value()[k]);
  CHECK_THROWS_AS(policy.weight_codes(3), shape_error);
}

TEST_CASE("fixed_policy: every weight/activation quantizer choice runs and its codes match") {
  for (const auto wq :
       {weight_quantizer::dorefa, weight_quantizer::uniform_symmetric, weight_quantizer::lsq})
    for (const auto aq : {activation_quantizer::pact, activation_quantizer::uniform_asymmetric,
                          activation_quantizer::lsq}) {
      std::mt19937 rng(2);
      tiny_net m(rng);
      fixed_policy_options opt;
      opt.weights = wq;
      opt.activations = aq;
      fixed_policy policy({{1, 3, 8}, {4, 2, 8}}, opt);
      attach_policy(*m.net, policy);
      const ad::ftensor x = random_tensor({2, 1, 8, 8}, rng, 0.0f, 1.0f);
      const var y = (*m.net)(ad::constant(x));
      const ad::ftensor r = random_tensor(y.shape(), rng, -1, 1);
      ad::backward(y, &r);
      // Every quantizer parameter gets a gradient, except the LSQ step of the 1-bit layer 0
      // (1-bit LSQ weights fall back to the mean-|w| sign quantizer).
      const auto ps = policy.parameters();
      const std::size_t unused = wq == weight_quantizer::lsq ? 1 : 0;
      std::size_t with_grad = 0;
      for (auto& p : ps) with_grad += p.has_grad();
      CHECK(with_grad + unused == ps.size());
      const quantized_layer* layers[] = {m.c1.get(), m.c2.get(), m.fc.get()};
      for (std::size_t i = 0; i < 3; ++i) {
        const ad::ftensor d = policy.weight_codes(i).dequantize();
        const var w = policy.quantize_weights(i, layers[i]->weight);
        for (std::size_t k = 0; k < d.size(); ++k) CHECK(d[k] == w.value()[k]);
      }
      const ad::ftensor a = policy.activation_codes(0, x).dequantize();
      const var xq = policy.quantize_activations(0, ad::constant(x));
      for (std::size_t k = 0; k < a.size(); ++k) CHECK(a[k] == xq.value()[k]);
    }
}

TEST_CASE("fixed_policy: training through the policy lowers the loss and moves the alphas") {
  std::mt19937 rng(3);
  tiny_net m(rng);
  fixed_policy policy(quant::bit_config::uniform(3, 4, 4));
  attach_policy(*m.net, policy);
  // A learnable task: the label is the quadrant (of 3 classes) with the most mass.
  const std::size_t n = 48;
  ad::ftensor x({n, 1, 8, 8});
  std::vector<int> labels(n);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (std::size_t s = 0; s < n; ++s) {
    labels[s] = int(s % 3);
    for (std::size_t i = 0; i < 64; ++i) {
      const std::size_t row = i / 8;
      const bool hot = (labels[s] == 0 && row < 3) || (labels[s] == 1 && row >= 5) ||
                       (labels[s] == 2 && row >= 3 && row < 5);
      x[s * 64 + i] = u(rng) * 0.5f + (hot ? 0.8f : 0.0f);
    }
  }
  std::vector<var> params = m.net->parameters();
  for (auto& p : policy.parameters()) params.push_back(p);
  adam opt({{params, 0.01f}});
  auto loss_now = [&] {
    ad::no_grad ng;
    return ad::cross_entropy((*m.net)(ad::constant(x)), labels).item();
  };
  const float before = loss_now();
  const float alpha_before = policy.alpha(1).value()[0];
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    const var loss = ad::cross_entropy((*m.net)(ad::constant(x)), labels);
    ad::backward(loss);
    opt.step();
  }
  const float after = loss_now();
  CHECK(after < 0.5f * before);
  CHECK(policy.alpha(1).value()[0] != alpha_before);
}

TEST_CASE("fixed_policy: an alpha trained below zero is floored at min_alpha, gets no gradient") {
  std::mt19937 rng(5);
  tiny_net m(rng);
  fixed_policy_options opt;
  opt.min_alpha = 0.25f;
  fixed_policy policy(quant::bit_config::uniform(3, 2, 1), opt);
  attach_policy(*m.net, policy);
  const ad::ftensor x = random_tensor({2, 1, 8, 8}, rng, -1.0f, 1.0f);
  const ad::ftensor h = random_tensor({2, 4, 8, 8}, rng, -0.5f, 1.0f);
  policy.alpha(1).value()[0] = -0.5f;  // as an optimizer step might leave it
  CHECK(policy.clip_value(1) == 0.25f);
  // The forward quantizes layer 1's input exactly as PACT with alpha = min_alpha.
  const var xq = policy.quantize_activations(1, ad::constant(h));
  const ad::ftensor want = quant::pact_codes(h, 0.25f, 1).dequantize();
  REQUIRE(xq.value().size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(xq.value()[i] == want[i]);
  // The codes used for deployment agree, and the whole model still runs and back-propagates.
  const auto codes = policy.activation_codes(1, h);
  CHECK(codes.scale.at(0) == doctest::Approx(0.25f));
  const var out = ad::sum((*m.net)(ad::constant(x)));
  ad::backward(out);
  CHECK((!policy.alpha(1).has_grad() || policy.alpha(1).grad()[0] == 0.0f));
  REQUIRE(policy.alpha(0).has_grad());  // an alpha above the floor does get one
  CHECK(std::isfinite(out.item()));
}

TEST_CASE("fixed_policy: typed errors for bad configs") {
  std::mt19937 rng(4);
  tiny_net m(rng);
  fixed_policy too_short(quant::bit_config::uniform(2, 4, 4));
  CHECK_THROWS_AS(attach_policy(*m.net, too_short), shape_error);
  CHECK_THROWS_AS(fixed_policy(quant::bit_config{{4, 9, 4}, {4, 4, 4}}), bits_error);
  CHECK_THROWS_AS(fixed_policy(quant::bit_config{{4, 4, 4}, {0, 4, 4}}), bits_error);
  CHECK_THROWS_AS(fixed_policy(quant::bit_config{{4, 4, 4}, {4, 4}}), shape_error);
  fixed_policy_options bad_alpha;
  bad_alpha.conv_alpha = 0.0f;
  CHECK_THROWS_AS(fixed_policy(quant::bit_config::uniform(3, 4, 4), bad_alpha), value_error);
  fixed_policy_options bad_layer;
  bad_layer.two_sided_layers = {7};
  fixed_policy p(quant::bit_config::uniform(3, 4, 4), bad_layer);
  CHECK_THROWS_AS(attach_policy(*m.net, p), shape_error);
  fixed_policy_options bad_floor;
  bad_floor.min_alpha = 0.0f;
  CHECK_THROWS_AS(fixed_policy(quant::bit_config::uniform(3, 4, 4), bad_floor), value_error);
  try {
    fixed_policy(quant::bit_config{{4, 4, 4}, {4, 4}});
  } catch (const shape_error& e) {
    CHECK(std::string(e.what()).find("expected") != std::string::npos);
  }
}
