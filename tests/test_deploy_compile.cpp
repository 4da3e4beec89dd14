// deploy::compile against the fake-quant model it comes from: the demo CNN and a
// flatten/pool/standalone-batch-norm network under random mixed configurations and weight
// quantizers (PACT and LSQ activations) give the same predictions and close logits; input
// encodings agree bit for bit with quant::pact_codes / lsq_codes; compiled models survive
// save/load and their files stay within 2% of the payload; unsupported models and
// quantizers are rejected with typed errors.
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

nn::fixed_policy_options lsq_options() {
  nn::fixed_policy_options o;
  o.weights = nn::weight_quantizer::lsq;
  o.activations = nn::activation_quantizer::lsq;
  return o;
}

// A demo CNN of `width` attached to a fixed_policy of `cfg` and `opt` in a trained-looking
// state. LSQ steps as training sets them: weight steps from the weights at attach, activation
// steps from a training batch, then scaled by a random factor in [0.6, 1.6].
std::shared_ptr<nn::sequential> demo_model(std::size_t width, const quant::bit_config& cfg,
                                           const nn::fixed_policy_options& opt,
                                           std::unique_ptr<nn::fixed_policy>& policy,
                                           std::mt19937& rng) {
  auto net = nn::demo_cnn(10, width, rng);
  policy = std::make_unique<nn::fixed_policy>(cfg, opt);
  if (opt.activations == nn::activation_quantizer::lsq) {
    randomise_state(*net, *policy, rng);  // not attached yet: the model's state only
    nn::attach_policy(*net, *policy);
    net->train();
    {
      ad::no_grad ng;
      (void)(*net)(ad::constant(random_tensor({4, 1, 28, 28}, rng, 0.0f, 1.0f)));
    }
    for (auto& v : policy->parameters())
      for (auto& x : v.value()) x *= std::uniform_real_distribution<float>(0.6f, 1.6f)(rng);
  } else {
    nn::attach_policy(*net, *policy);
    randomise_state(*net, *policy, rng);
  }
  net->eval();
  return net;
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

TEST_CASE("compiled demo CNN with LSQ weights and activations agrees with its simulation") {
  std::mt19937 rng(31);
  const ad::ftensor images = random_tensor({16, 1, 28, 28}, rng, 0.0f, 1.0f);
  const std::vector<quant::bit_config> configs{
      quant::bit_config::uniform(6, 2, 2), quant::bit_config::uniform(6, 3, 1),
      quant::bit_config::uniform(6, 8, 8),
      quant::bit_config{{4, 1, 2, 1, 2, 2}, {8, 1, 2, 1, 2, 2}}, random_config(6, rng)};
  for (const auto& cfg : configs) {
    CAPTURE(cfg.to_string());
    std::unique_ptr<nn::fixed_policy> policy;
    auto net = demo_model(1, cfg, lsq_options(), policy, rng);
    auto im = deploy::compile(*net, *policy, {1, 28, 28});
    std::size_t q = 0;
    for (const auto& l : im.layers())
      if (l.kind == deploy::op_kind::quantized) {
        CHECK(l.input.grid.kind == quant::activation_grid_kind::step);
        CHECK(l.input.grid == policy->input_grid(q));
        CHECK(l.input.bits == cfg.a_bits[q++]);
      }
    CHECK(q == 6);
    // The fast path and the reference path against the fake-quant model.
    ad::ftensor want;
    {
      ad::no_grad ng;
      want = (*net)(ad::constant(images)).value();
    }
    for (const auto& got : {im.run(images), im.run_reference(images)}) {
      const auto a = compare(want, got);
      CAPTURE(a.max_abs_diff);
      CAPTURE(a.max_abs_logit);
      CHECK(a.same_prediction == a.samples);
      CHECK(a.max_abs_diff <= 1e-3 * (1.0 + a.max_abs_logit));
    }
    // The file round trip keeps the grids and the outputs bit for bit.
    const auto back = deploy::deserialize(deploy::serialize(im));
    for (std::size_t i = 0; i < im.layers().size(); ++i)
      CHECK(back.layers()[i].input.grid == im.layers()[i].input.grid);
    auto copy = back;
    const auto y0 = im.run(images), y1 = copy.run(images);
    for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
  }
}

TEST_CASE("input encodings agree bit for bit with quant::lsq_codes and pact_codes, ties too") {
  std::mt19937 rng(32);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int bits = 1; bits <= 8; ++bits)
    for (int trial = 0; trial < 6; ++trial) {
      const float L = float((1 << bits) - 1);
      const float step = std::exp(8.0f * u(rng) - 6.0f);  // about 0.0025 .. 7.4
      const float alpha = step * L;
      // Random values over and around the grid, exact ties (k + 1/2) step and their float
      // neighbours, grid points, the ends, signed zeros and infinities.
      std::vector<float> xs;
      for (int i = 0; i < 400; ++i) xs.push_back((1.4f * u(rng) - 0.2f) * alpha);
      for (int k = -2; k <= int(L) + 1; ++k) {
        const float tie = (float(k) + 0.5f) * step, on = float(k) * step;
        for (float v : {tie, std::nextafter(tie, -INFINITY), std::nextafter(tie, INFINITY), on})
          xs.push_back(v);
      }
      for (float v : {0.0f, -0.0f, alpha, -alpha, 1e30f, -1e30f, INFINITY, -INFINITY})
        xs.push_back(v);
      ad::ftensor x({xs.size()});
      std::copy(xs.begin(), xs.end(), x.begin());
      CAPTURE(bits);
      CAPTURE(step);
      const deploy::activation_encoding lsq{bits, quant::activation_grid::step(step)};
      const deploy::activation_encoding pact{bits, quant::activation_grid::pact(alpha)};
      const auto lsq_want = quant::lsq_codes(x, ad::ftensor({1}, step), bits, false);
      const auto pact_want = quant::pact_codes(x, alpha, bits, false);
      CHECK(lsq.scale() == lsq_want.scale[0]);
      CHECK(pact.scale() == pact_want.scale[0]);
      std::vector<std::uint8_t> lsq_fast(xs.size()), pact_fast(xs.size());
      lsq.encode(xs.data(), xs.size(), lsq_fast.data());  // the fast path's vector loop
      pact.encode(xs.data(), xs.size(), pact_fast.data());
      for (std::size_t i = 0; i < xs.size(); ++i) {
        CAPTURE(xs[i]);
        REQUIRE(int(lsq.code(xs[i])) == lsq_want.codes[i]);
        REQUIRE(int(lsq_fast[i]) == lsq_want.codes[i]);
        REQUIRE(int(pact.code(xs[i])) == pact_want.codes[i]);
        REQUIRE(int(pact_fast[i]) == pact_want.codes[i]);
      }
    }
}

TEST_CASE("fixed_policy input grids give the codes of its own activation quantizer") {
  std::mt19937 rng(33);
  for (auto aq : {nn::activation_quantizer::pact, nn::activation_quantizer::lsq}) {
    nn::fixed_policy_options opt;
    opt.activations = aq;
    std::unique_ptr<nn::fixed_policy> policy;
    const quant::bit_config cfg{{2, 3, 4, 2, 8, 1}, {1, 2, 3, 4, 8, 2}};
    auto net = demo_model(1, cfg, opt, policy, rng);
    for (std::size_t i = 0; i < 6; ++i) {
      const quant::activation_grid g = policy->input_grid(i);
      CHECK(g.kind == (aq == nn::activation_quantizer::lsq ? quant::activation_grid_kind::step
                                                           : quant::activation_grid_kind::pact));
      const deploy::activation_encoding enc{cfg.a_bits[i], g};
      ad::ftensor x = random_tensor(
          {64, 8}, rng, -1.0f, 4.0f * g.scale(cfg.a_bits[i]) * float((1 << cfg.a_bits[i]) - 1));
      for (int k = 0; k < 8; ++k) x[std::size_t(k)] = (float(k) + 0.5f) * enc.scale();  // ties
      const auto want = policy->activation_codes(i, x);
      CHECK(want.scale[0] == enc.scale());
      for (std::size_t j = 0; j < x.size(); ++j) REQUIRE(int(enc.code(x[j])) == want.codes[j]);
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
  const ad::ftensor x = random_tensor({4, 1, 28, 28}, rng, 0.0f, 1.0f);
  const std::vector<quant::bit_config> configs{
      quant::bit_config::uniform(6, 2, 2), quant::bit_config::uniform(6, 3, 3),
      quant::bit_config{{4, 1, 2, 1, 2, 2}, {8, 1, 2, 1, 2, 2}}};
  for (std::size_t width : {1, 2})
    for (const auto& cfg : configs)
      for (bool lsq : {false, true}) {
        nn::fixed_policy_options opt;
        if (lsq)
          opt = lsq_options();
        else
          opt.weights = nn::weight_quantizer::uniform_symmetric;  // per-channel scales
        std::unique_ptr<nn::fixed_policy> policy;
        auto net = demo_model(width, cfg, opt, policy, rng);
        auto im = deploy::compile(*net, *policy, {1, 28, 28});
        const auto path =
            fs::temp_directory_path() / ("mixq_compile_" + std::to_string(rng()) + ".mixq");
        deploy::save(im, path);
        auto back = deploy::load(path);
        const auto size = fs::file_size(path);
        fs::remove(path);
        const auto y0 = im.run(x), y1 = back.run(x);
        for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
        const double payload = double(im.payload_bytes());
        std::string line = detail::cat(
            "width ", width, " ", cfg.to_string(), lsq ? " LSQ" : " PACT", ": file ", size,
            " bytes, payload ", payload, " (+", 100.0 * (double(size) / payload - 1.0), "%)");
        if (!lsq) {  // the version 2 writer's size, for comparison
          const auto v2 = deploy::detail::serialize_v2(im).size();
          line +=
              detail::cat("; version 2: ", v2, " (+", 100.0 * (double(v2) / payload - 1.0), "%)");
        }
        MESSAGE(line);
        CHECK(double(size) <= 1.02 * double(im.payload_bytes()));
      }
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
  // Two-sided LSQ inputs (a signed grid at 2+ bits; at 1 bit too, as every two-sided layer)
  // and the dynamic uniform quantizer are refused with a message naming the layer.
  auto message = [](nn::module& net, const nn::fixed_policy& p) {
    try {
      (void)deploy::compile(net, p, {1, 28, 28});
    } catch (const value_error& e) {
      return std::string(e.what());
    }
    return std::string("compiled");
  };
  for (int abits : {1, 2, 4}) {
    auto net = nn::demo_cnn(10, 1, rng);
    auto opt = lsq_options();
    opt.two_sided_layers = {2};
    nn::fixed_policy p(quant::bit_config::uniform(6, 2, abits), opt);
    nn::attach_policy(*net, p);
    const std::string m = message(*net, p);
    CAPTURE(m);
    CHECK(m.find("two-sided grid") != std::string::npos);
    CHECK(m.find("layer 6 ") != std::string::npos);  // the third quantized module
    CHECK_THROWS_AS((void)p.input_grid(2), value_error);
    CHECK_NOTHROW((void)p.input_grid(1));
  }
  {
    auto net = nn::demo_cnn(10, 1, rng);
    nn::fixed_policy_options opt;
    opt.activations = nn::activation_quantizer::uniform_asymmetric;
    nn::fixed_policy p(quant::bit_config::uniform(6, 2, 2), opt);
    nn::attach_policy(*net, p);
    CHECK(message(*net, p).find("dynamic asymmetric uniform") != std::string::npos);
    CHECK_THROWS_AS((void)p.input_grid(0), value_error);
  }
  {
    auto net = nn::demo_cnn(10, 1, rng);
    nn::fixed_policy_options opt;
    opt.pact.two_sided = true;  // every layer two-sided
    nn::fixed_policy p(quant::bit_config::uniform(6, 2, 2), opt);
    nn::attach_policy(*net, p);
    CHECK(message(*net, p).find("two-sided grid") != std::string::npos);
  }
}
