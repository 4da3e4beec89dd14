// trace_costs on real models: the demo CNN against layer costs computed from its definition,
// and ResNet-18 / MobileNetV2 built from quantized layers against the built-in descriptors
// (per-layer params, MACs, output sizes; torchvision parameter totals of algorithms.md §9.1).
#include <doctest/doctest.h>

#include <array>
#include <memory>
#include <random>

#include "mixq/nn.hpp"
#include "mixq/nn/demo_cnn.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "mixq/search/model_zoo.hpp"
#include "mixq/search/trace.hpp"

using namespace mixq;
using namespace mixq::nn;
using mixq::search::layer_cost;
namespace ad = mixq::autodiff;

namespace {

// ResNet basic block from quantized convs; registration order conv1, bn1, conv2, bn2,
// down_conv, down_bn (the descriptor's layer order).
class q_basic_block : public module {
 public:
  q_basic_block(std::size_t in, std::size_t out, std::size_t stride, std::mt19937& rng) {
    conv1 = register_module(
        "conv1", std::make_shared<quantized_conv2d>(in, out, 3, stride, 1, 1, false, rng));
    bn1 = register_module("bn1", std::make_shared<batch_norm2d>(out));
    conv2 = register_module("conv2",
                            std::make_shared<quantized_conv2d>(out, out, 3, 1, 1, 1, false, rng));
    bn2 = register_module("bn2", std::make_shared<batch_norm2d>(out));
    if (stride != 1 || in != out) {
      down = register_module(
          "downsample", std::make_shared<quantized_conv2d>(in, out, 1, stride, 0, 1, false, rng));
      down_bn = register_module("downsample_bn", std::make_shared<batch_norm2d>(out));
    }
  }
  var forward(const var& x) override {
    var h = ad::relu((*bn1)((*conv1)(x)));
    h = (*bn2)((*conv2)(h));
    return ad::relu(ad::add(h, down ? (*down_bn)((*down)(x)) : x));
  }
  std::shared_ptr<quantized_conv2d> conv1, conv2, down;
  std::shared_ptr<batch_norm2d> bn1, bn2, down_bn;
};

std::shared_ptr<sequential> q_resnet18(std::mt19937& rng) {
  auto net = std::make_shared<sequential>();
  net->add(std::make_shared<quantized_conv2d>(3, 64, 7, 2, 3, 1, false, rng));
  net->add(std::make_shared<batch_norm2d>(64));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<max_pool2d>(3, 2, 1));
  std::size_t in = 64;
  for (std::size_t stage = 0; stage < 4; ++stage)
    for (std::size_t b = 0; b < 2; ++b) {
      const std::size_t out = 64u << stage, stride = stage > 0 && b == 0 ? 2 : 1;
      net->add(std::make_shared<q_basic_block>(in, out, stride, rng));
      in = out;
    }
  net->add(std::make_shared<global_avg_pool2d>());
  net->add(std::make_shared<quantized_linear>(512, 1000, true, rng));
  return net;
}

class q_inverted_residual : public module {
 public:
  q_inverted_residual(std::size_t in, std::size_t out, std::size_t stride, std::size_t t,
                      std::mt19937& rng)
      : residual_(stride == 1 && in == out) {
    const std::size_t hidden = in * t;
    if (t != 1) add_conv(in, hidden, 1, 1, 1, true, rng);
    add_conv(hidden, hidden, 3, stride, hidden, true, rng);
    add_conv(hidden, out, 1, 1, 1, false, rng);
  }
  var forward(const var& x) override {
    var h = x;
    for (auto& p : parts_) h = (*p)(h);
    return residual_ ? ad::add(h, x) : h;
  }

 private:
  void add_conv(std::size_t in, std::size_t out, std::size_t k, std::size_t stride,
                std::size_t groups, bool act, std::mt19937& rng) {
    auto s = std::make_shared<sequential>();
    s->add(std::make_shared<quantized_conv2d>(in, out, k, stride, k / 2, groups, false, rng));
    s->add(std::make_shared<batch_norm2d>(out));
    if (act) s->add(std::make_shared<relu>());
    parts_.push_back(register_module(std::to_string(parts_.size()), s));
  }
  bool residual_;
  std::vector<std::shared_ptr<sequential>> parts_;
};

std::shared_ptr<sequential> q_mobilenet_v2(std::mt19937& rng) {
  auto net = std::make_shared<sequential>();
  net->add(std::make_shared<quantized_conv2d>(3, 32, 3, 2, 1, 1, false, rng));
  net->add(std::make_shared<batch_norm2d>(32));
  net->add(std::make_shared<relu>());
  std::size_t in = 32;
  for (const auto& st : search::mobilenet_v2_stages)
    for (std::int64_t r = 0; r < st.repeats; ++r) {
      const auto out = std::size_t(st.channels);
      net->add(std::make_shared<q_inverted_residual>(in, out, r == 0 ? std::size_t(st.stride) : 1,
                                                     std::size_t(st.expand), rng));
      in = out;
    }
  net->add(std::make_shared<quantized_conv2d>(in, 1280, 1, 1, 0, 1, false, rng));
  net->add(std::make_shared<batch_norm2d>(1280));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<global_avg_pool2d>());
  net->add(std::make_shared<quantized_linear>(1280, 1000, true, rng));
  return net;
}

void check_same_layers(const search::model_desc& traced, const search::model_desc& ref) {
  REQUIRE(traced.size() == ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const layer_cost &a = traced.layers[i], &b = ref.layers[i];
    INFO("layer " << i << " " << a.name << " vs " << b.name);
    CHECK(a.kind == b.kind);
    CHECK(a.in_channels == b.in_channels);
    CHECK(a.out_channels == b.out_channels);
    CHECK(a.kernel == b.kernel);
    CHECK(a.stride == b.stride);
    CHECK(a.groups == b.groups);
    CHECK(a.out_h == b.out_h);
    CHECK(a.out_w == b.out_w);
    CHECK(a.params == b.params);
    CHECK(a.macs == b.macs);
    CHECK(a.bias_params == b.bias_params);
    CHECK(a.bn_params == b.bn_params);
  }
}

}  // namespace

TEST_CASE("trace_costs: the demo CNN matches the costs of its definition") {
  std::mt19937 rng(1);
  auto net = demo_cnn(10, 1, rng);
  const search::model_desc d = search::trace_costs(*net, {1, 1, 28, 28}, "demo_cnn");
  search::model_desc ref;
  ref.layers = {
      search::make_conv("c1", 1, 16, 3, 1, 1, 28),   search::make_conv("c2", 16, 32, 3, 2, 1, 28),
      search::make_conv("dw", 32, 32, 3, 1, 32, 14), search::make_conv("pw", 32, 64, 1, 1, 1, 14),
      search::make_conv("c5", 64, 64, 3, 2, 1, 14),  search::make_linear("fc", 64, 10)};
  check_same_layers(d, ref);
  CHECK(d.name == "demo_cnn");
  CHECK(d.layers[0].name == "0");
  CHECK(d.layers[5].name == "16");
  CHECK(d.layers[2].kind == search::layer_kind::depthwise_conv);
  // Totals under a convention follow from the traced table.
  const auto r = search::evaluate(d, quant::bit_config::uniform(6, 4, 4));
  CHECK(r.bitops == doctest::Approx(16.0 * double(ref.macs())));
  // Training mode is restored; batch-norm statistics are not touched by the eval trace.
  CHECK(net->is_training());
  for (auto& [name, b] : net->named_buffers())
    if (name.find("running_mean") != std::string::npos)
      for (float v : b.value()) CHECK(v == 0.0f);
}

TEST_CASE("trace_costs: the traced model with a fixed policy attached gives the same table") {
  std::mt19937 rng(2);
  auto net = demo_cnn(10, 1, rng);
  const auto plain = search::trace_costs(*net, {1, 1, 28, 28});
  fixed_policy policy(quant::bit_config::uniform(6, 2, 3));
  attach_policy(*net, policy);
  check_same_layers(search::trace_costs(*net, {1, 1, 28, 28}), plain);
}

TEST_CASE("trace_costs: ResNet-18 and MobileNetV2 from quantized layers match the descriptors") {
  std::mt19937 rng(3);
  {
    auto net = q_resnet18(rng);
    const auto d = search::trace_costs(*net, {1, 3, 32, 32});
    check_same_layers(d, search::resnet18(32));
    CHECK(d.total_params() == 11689512);  // torchvision's count, independent of the input size
  }
  {
    auto net = q_mobilenet_v2(rng);
    const auto d = search::trace_costs(*net, {1, 3, 32, 32});
    check_same_layers(d, search::mobilenet_v2(32));
    CHECK(d.total_params() == 3504872);
  }
}

TEST_CASE("trace_costs: typed errors") {
  sequential no_quant;
  no_quant.add(std::make_shared<relu>());
  CHECK_THROWS_AS(search::trace_costs(no_quant, {1, 4}), shape_error);
  auto net = demo_cnn();
  CHECK_THROWS_AS(search::trace_costs(*net, {}), shape_error);
  CHECK_THROWS_AS(search::trace_costs(*net, {1, 3, 28, 28}), shape_error);  // wrong channels
  CHECK(net->is_training());
  CHECK_THROWS_AS(demo_cnn(0), shape_error);
}
