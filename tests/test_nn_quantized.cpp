// Quantized layers and the precision-policy hook: full precision without a policy (equal to
// the plain layers), the policy's quantized tensors reach the float op, layer indexing,
// recorded shapes, gradients through the policy, and attach errors.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "mixq/nn.hpp"

using namespace mixq;
using namespace mixq::nn;
namespace ad = mixq::autodiff;

namespace {
ad::ftensor randn(shape_t s, std::mt19937& rng) {
  ad::ftensor t(std::move(s));
  std::normal_distribution<float> d;
  for (auto& v : t) v = d(rng);
  return t;
}

float max_abs_diff(const ad::ftensor& a, const ad::ftensor& b) {
  REQUIRE(a.shape() == b.shape());
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}

// Scales layer i's weights by i + 2 and its inputs by 0.5; records the calls.
struct scaling_policy : precision_policy {
  std::vector<std::size_t> weight_calls, activation_calls;
  std::size_t attached = 0;
  var quantize_weights(std::size_t layer, const var& w) override {
    weight_calls.push_back(layer);
    return ad::mul(w, ad::constant(ad::ftensor({1}, float(layer + 2))));
  }
  var quantize_activations(std::size_t layer, const var& x) override {
    activation_calls.push_back(layer);
    return ad::mul(x, ad::constant(ad::ftensor({1}, 0.5f)));
  }
  void on_attach(std::span<quantized_layer* const> layers) override { attached = layers.size(); }
};

std::shared_ptr<sequential> tiny_model(std::mt19937& rng) {
  auto net = std::make_shared<sequential>();
  net->add(std::make_shared<quantized_conv2d>(2, 4, 3, 1, 1, 1, true, rng));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<quantized_conv2d>(4, 4, 3, 2, 1, 4, false, rng));
  net->add(std::make_shared<flatten>());
  net->add(std::make_shared<quantized_linear>(4 * 3 * 3, 3, true, rng));
  return net;
}
}  // namespace

TEST_CASE("quantized layers without a policy equal the plain layers") {
  std::mt19937 rng(1);
  quantized_conv2d q(3, 5, 3, 2, 1, 1, true, rng);
  conv2d c(3, 5, 3, 2, 1, 1, true, rng);
  c.weight.value() = q.weight.value();
  q.bias.value() = randn({5}, rng);
  c.bias.value() = q.bias.value();
  const var x = ad::constant(randn({2, 3, 7, 6}, rng));
  CHECK(max_abs_diff(q(x).value(), c(x).value()) == 0.0f);
  CHECK(q.kind() == quantized_kind::conv);
  CHECK(q.input_shape() == shape_t{2, 3, 7, 6});
  CHECK(q.output_shape() == shape_t{2, 5, 4, 3});

  quantized_linear ql(6, 2, true, rng);
  linear l(6, 2, true, rng);
  l.weight.value() = ql.weight.value();
  const var v = ad::constant(randn({4, 6}, rng));
  CHECK(max_abs_diff(ql(v).value(), l(v).value()) == 0.0f);
  CHECK(ql.kind() == quantized_kind::linear);
  CHECK(ql.weight_params() == 12);

  quantized_conv2d dw(4, 4, 3, 1, 1, 4, false, rng);
  CHECK(dw.kind() == quantized_kind::depthwise_conv);
}

TEST_CASE("an attached policy quantizes weights and inputs of each layer in order") {
  std::mt19937 rng(2);
  auto net = tiny_model(rng);
  const var x = ad::constant(randn({2, 2, 6, 6}, rng));
  const auto layers = quantized_layers(*net);
  REQUIRE(layers.size() == 3);

  scaling_policy p;
  attach_policy(*net, p);
  CHECK(p.attached == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(layers[i]->index() == i);
    CHECK(layers[i]->policy() == &p);
  }
  const var y = (*net)(x);
  CHECK(p.weight_calls == std::vector<std::size_t>{0, 1, 2});
  CHECK(p.activation_calls == std::vector<std::size_t>{0, 1, 2});

  // The same computation by hand with the plain ops.
  auto* c0 = layers[0];
  auto* c1 = layers[1];
  auto* l2 = layers[2];
  auto half = [](const var& v) { return ad::mul(v, ad::constant(ad::ftensor({1}, 0.5f))); };
  auto scale = [](const var& v, float s) { return ad::mul(v, ad::constant(ad::ftensor({1}, s))); };
  var h = ad::conv2d(half(x), scale(c0->weight, 2), c0->bias, 1, 1, 1);
  h = ad::relu(h);
  h = ad::conv2d(half(h), scale(c1->weight, 3), var(), 2, 1, 4);
  h = ad::flatten(h);
  h = ad::linear(half(h), scale(l2->weight, 4), l2->bias);
  CHECK(max_abs_diff(y.value(), h.value()) < 1e-5f);

  // Gradients reach the float master weights through the policy.
  net->zero_grad();
  ad::backward(ad::sum(y));
  for (auto* l : layers) {
    float g = 0;
    for (float v : l->weight.grad()) g += std::abs(v);
    CHECK(g > 0.0f);
  }

  detach_policy(*net);
  for (auto* l : layers) CHECK(l->policy() == nullptr);
  const std::size_t calls = p.weight_calls.size();
  (void)(*net)(x);
  CHECK(p.weight_calls.size() == calls);
}

TEST_CASE("attach_policy rejects a model without quantized layers") {
  std::mt19937 rng(3);
  sequential net;
  net.add(std::make_shared<conv2d>(1, 2, 3, 1, 0, 1, false, rng));
  scaling_policy p;
  CHECK_THROWS_AS(attach_policy(net, p), shape_error);
  CHECK_THROWS_AS(quantized_conv2d(3, 4, 3, 1, 1, 2), shape_error);
  CHECK_THROWS_AS(quantized_conv2d(3, 3, 0), shape_error);
}
