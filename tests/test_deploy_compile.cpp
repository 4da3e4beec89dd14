// deploy::compile against the fake-quant model it comes from: the demo CNN and a
// flatten/pool/standalone-batch-norm network under random mixed configurations and weight
// quantizers give the same predictions and close logits; compiled models survive save/load;
// unsupported models and quantizers are rejected with typed errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "deploy_test_util.hpp"
#include "mixq/deploy.hpp"
#include "mixq/nn.hpp"
#include "mixq/nn/demo_cnn.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "test_util.hpp"

using namespace mixq;
namespace ad = mixq::autodiff;
namespace fs = std::filesystem;
using mixq::test::compare;
using mixq::test::random_tensor;
using mixq::test::randomise_state;

namespace {

quant::bit_config random_config(std::size_t layers, std::mt19937& rng) {
  std::uniform_int_distribution<int> bits(1, 8);
  quant::bit_config c;
  for (std::size_t i = 0; i < layers; ++i)
    c.w_bits.push_back(bits(rng)), c.a_bits.push_back(bits(rng));
  return c;
}

}  // namespace

TEST_CASE("compiled demo CNN agrees with its fake-quant simulation") {
  std::mt19937 rng(21);
  const ad::ftensor images = random_tensor({16, 1, 28, 28}, rng, 0.0f, 1.0f);
  for (nn::weight_quantizer wq :
       {nn::weight_quantizer::dorefa, nn::weight_quantizer::uniform_symmetric}) {
    for (int trial = 0; trial < 6; ++trial) {
      auto net = nn::demo_cnn(10, 1, rng);
      auto cfg = trial == 0   ? quant::bit_config::uniform(6, 2, 2)
                 : trial == 1 ? quant::bit_config::uniform(6, 8, 8)
                              : random_config(6, rng);
      CAPTURE(cfg.to_string());
      nn::fixed_policy_options opt;
      opt.weights = wq;
      nn::fixed_policy policy(cfg, opt);
      nn::attach_policy(*net, policy);
      randomise_state(*net, policy, rng);
      auto im = deploy::compile(*net, policy, {1, 28, 28});
      const auto a = compare(*net, im, images);
      CAPTURE(a.max_abs_diff);
      CAPTURE(a.max_abs_logit);
      CHECK(a.same_prediction == a.samples);
      CHECK(a.max_abs_diff <= 1e-3 * (1.0 + a.max_abs_logit));
      // Six quantized layers reported with their bits.
      std::size_t quantized = 0;
      for (const auto& r : im.report())
        if (r.kind == deploy::op_kind::quantized) {
          CHECK(r.w_bits == cfg.w_bits[quantized]);
          CHECK(r.a_bits == cfg.a_bits[quantized]);
          ++quantized;
        }
      CHECK(quantized == 6);
    }
  }
}

TEST_CASE("compile handles flatten column order, pools and a standalone batch norm") {
  std::mt19937 rng(22);
  auto net = std::make_shared<nn::sequential>();
  net->add(std::make_shared<nn::batch_norm2d>(2));
  net->add(std::make_shared<nn::quantized_conv2d>(2, 6, 3, 1, 1, 1, true, rng));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::max_pool2d>(2));
  auto inner = std::make_shared<nn::sequential>();
  inner->add(std::make_shared<nn::quantized_conv2d>(6, 6, 3, 1, 1, 3, false, rng));
  inner->add(std::make_shared<nn::batch_norm2d>(6));
  inner->add(std::make_shared<nn::relu>());
  inner->add(std::make_shared<nn::avg_pool2d>(3, 1, 1));
  net->add(inner);
  net->add(std::make_shared<nn::flatten>());
  net->add(std::make_shared<nn::quantized_linear>(6 * 5 * 4, 7, true, rng));
  for (int trial = 0; trial < 5; ++trial) {
    auto cfg = random_config(3, rng);
    CAPTURE(cfg.to_string());
    nn::fixed_policy policy(cfg);
    nn::attach_policy(*net, policy);
    randomise_state(*net, policy, rng);
    auto im = deploy::compile(*net, policy, {2, 10, 8});
    const auto a = compare(*net, im, random_tensor({5, 2, 10, 8}, rng, -0.5f, 1.5f));
    CHECK(a.same_prediction == a.samples);
    CHECK(a.max_abs_diff <= 1e-3 * (1.0 + a.max_abs_logit));
  }
}

TEST_CASE("a compiled model saved and loaded gives identical outputs; file size") {
  std::mt19937 rng(23);
  auto net = nn::demo_cnn(10, 2, rng);
  nn::fixed_policy policy(quant::bit_config::uniform(6, 4, 4));
  nn::attach_policy(*net, policy);
  randomise_state(*net, policy, rng);
  auto im = deploy::compile(*net, policy, {1, 28, 28});
  const auto path = fs::temp_directory_path() / ("mixq_compile_" + std::to_string(rng()) + ".mixq");
  deploy::save(im, path);
  auto back = deploy::load(path);
  const auto size = fs::file_size(path);
  fs::remove(path);
  const ad::ftensor x = random_tensor({4, 1, 28, 28}, rng, 0.0f, 1.0f);
  const auto y0 = im.run(x), y1 = back.run(x);
  for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
  MESSAGE("file ", size, " bytes, payload ", im.payload_bytes(), " bytes");
  CHECK(double(size) <= 1.02 * double(im.payload_bytes()));
}

TEST_CASE("compile rejects what integer models cannot run") {
  std::mt19937 rng(24);
  {
    auto net = std::make_shared<nn::sequential>();
    net->add(std::make_shared<nn::quantized_conv2d>(1, 2, 3, 1, 1, 1, false, rng));
    net->add(std::make_shared<nn::conv2d>(2, 2, 3, 1, 1, 1, false, rng));  // a float conv
    nn::fixed_policy p(quant::bit_config::uniform(1, 2, 2));
    nn::attach_policy(*net, p);
    CHECK_THROWS_AS(deploy::compile(*net, p, {1, 8, 8}), value_error);
  }
  {
    auto net = nn::demo_cnn(10, 1, rng);
    nn::fixed_policy p(quant::bit_config::uniform(6, 2, 2));
    CHECK_THROWS_AS(deploy::compile(*net, p, {1, 28, 28}), value_error);  // not attached
    nn::attach_policy(*net, p);
    CHECK_THROWS_AS(deploy::compile(*net, p, {28, 28}), shape_error);
    CHECK_THROWS_AS(deploy::compile(*net, p, {3, 28, 28}), shape_error);  // 3 channels
    nn::fixed_policy_options two;
    two.two_sided_layers = {0};
    nn::fixed_policy p2(quant::bit_config::uniform(6, 2, 2), two);
    nn::attach_policy(*net, p2);
    CHECK_THROWS_AS(deploy::compile(*net, p2, {1, 28, 28}), value_error);
  }
}
