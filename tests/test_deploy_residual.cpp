// Residual blocks end to end: nn::quantized_residual_block (identity and downsampling
// shortcuts) compiled to save / load / residual_add ops agrees with its fake-quant simulation
// under random mixed configurations (fast and reference paths), survives save/load
// bit-identically, marks conv1 and the downsampling conv as sharing an input in trace_costs;
// model files of format version 1 still load, and residual ops in them are refused.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "deploy_test_util.hpp"
#include "mixq/deploy.hpp"
#include "mixq/nn.hpp"
#include "mixq/nn/quantized_residual.hpp"
#include "mixq/search/trace.hpp"
#include "test_util.hpp"

using namespace mixq;
namespace ad = mixq::autodiff;
namespace fs = std::filesystem;
using mixq::test::compare;
using mixq::test::random_tensor;
using mixq::test::randomise_state;

namespace {

// conv 1->8, BN, ReLU; block 8->8 (identity shortcut); block 8->16 stride 2 (downsampling);
// global average pool; FC 16->10. Seven quantized layers.
std::shared_ptr<nn::sequential> small_resnet(std::mt19937& rng) {
  auto net = std::make_shared<nn::sequential>();
  net->add(std::make_shared<nn::quantized_conv2d>(1, 8, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<nn::batch_norm2d>(8));
  net->add(std::make_shared<nn::relu>());
  net->add(std::make_shared<nn::quantized_residual_block>(8, 8, 1, rng));
  net->add(std::make_shared<nn::quantized_residual_block>(8, 16, 2, rng));
  net->add(std::make_shared<nn::global_avg_pool2d>());
  net->add(std::make_shared<nn::quantized_linear>(16, 10, true, rng));
  return net;
}

struct temp_dir {
  fs::path path =
      fs::temp_directory_path() / ("mixq_residual_test_" + std::to_string(std::random_device{}()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void fix_checksum(std::vector<std::uint8_t>& b) {
  const auto sum = deploy::detail::fnv1a(std::span(b).first(b.size() - 8));
  for (int i = 0; i < 8; ++i) b[b.size() - 8 + std::size_t(i)] = std::uint8_t(sum >> (8 * i));
}

}  // namespace

TEST_CASE("quantized residual blocks compile to an integer model that agrees with the simulation") {
  std::mt19937 rng(31);
  const ad::ftensor images = random_tensor({12, 1, 12, 12}, rng, 0.0f, 2.0f);
  for (nn::weight_quantizer wq :
       {nn::weight_quantizer::dorefa, nn::weight_quantizer::uniform_symmetric}) {
    for (int trial = 0; trial < 5; ++trial) {
      auto net = small_resnet(rng);
      REQUIRE(nn::quantized_layers(*net).size() == 7);
      quant::bit_config cfg;
      std::uniform_int_distribution<int> bits(1, 8);
      for (int i = 0; i < 7; ++i)
        cfg.w_bits.push_back(trial == 0 ? 2 : bits(rng)),
            cfg.a_bits.push_back(trial == 0 ? 2 : bits(rng));
      CAPTURE(cfg.to_string());
      nn::fixed_policy_options opt;
      opt.weights = wq;
      nn::fixed_policy policy(cfg, opt);
      nn::attach_policy(*net, policy);
      randomise_state(*net, policy, rng);
      net->eval();
      ad::ftensor want;
      {
        ad::no_grad ng;
        want = (*net)(ad::constant(images)).value();
      }
      auto im = deploy::compile(*net, policy, {1, 12, 12});
      // The blocks became save / load / residual_add ops.
      std::size_t saves = 0, loads = 0, adds = 0;
      for (const auto& l : im.layers()) {
        saves += l.kind == deploy::op_kind::save;
        loads += l.kind == deploy::op_kind::load;
        adds += l.kind == deploy::op_kind::residual_add;
      }
      CHECK(saves == 3);
      CHECK(loads == 1);
      CHECK(adds == 2);
      for (int path = 0; path < 2; ++path) {
        CAPTURE(path);
        const auto got = path == 0 ? im.run(images) : im.run_reference(images);
        const auto a = compare(want, got);
        CAPTURE(a.max_abs_diff);
        CAPTURE(a.max_abs_logit);
        CHECK(a.same_prediction == a.samples);
        CHECK(a.max_abs_diff <= 1e-3 * (1.0 + a.max_abs_logit));
      }
    }
  }
}

TEST_CASE("a compiled residual model saved and loaded gives identical outputs") {
  std::mt19937 rng(32);
  auto net = small_resnet(rng);
  nn::fixed_policy policy(quant::bit_config{{4, 2, 1, 2, 2, 3, 8}, {8, 2, 2, 1, 2, 2, 4}});
  nn::attach_policy(*net, policy);
  randomise_state(*net, policy, rng);
  net->eval();
  auto im = deploy::compile(*net, policy, {1, 12, 12});
  temp_dir dir;
  const auto path = dir.path / "res.mixq";
  deploy::save(im, path);
  auto back = deploy::load(path);
  REQUIRE(back.layers().size() == im.layers().size());
  for (std::size_t i = 0; i < im.layers().size(); ++i) {
    CHECK(back.layers()[i].kind == im.layers()[i].kind);
    CHECK(back.layers()[i].slot() == im.layers()[i].slot());
  }
  const auto x = random_tensor({5, 1, 12, 12}, rng, 0.0f, 2.0f);
  const auto y0 = im.run(x), y1 = back.run(x);
  for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
}

TEST_CASE("trace_costs marks conv1 and the downsampling conv of a block as sharing an input") {
  std::mt19937 rng(33);
  auto net = small_resnet(rng);
  const auto d = search::trace_costs(*net, {1, 1, 12, 12});
  REQUIRE(d.layers.size() == 7);
  // Layers: conv, block1.conv1, block1.conv2, block2.conv1, block2.conv2, block2.down_conv, fc.
  REQUIRE(d.shared_input_groups.size() == 1);
  CHECK(d.shared_input_groups[0] == std::vector<std::size_t>{3, 5});
  CHECK(d.layers[5].kernel == 1);
}

TEST_CASE("model file versions: version 1 loads, residual ops need version 2") {
  std::mt19937 rng(34);
  auto conv = deploy::layer::of_kind(deploy::op_kind::quantized, "q");
  conv.window = 3, conv.padding = 1, conv.in_channels = 2, conv.out_channels = 2;
  conv.weight_type = {2, true};
  conv.weight_codes.assign(2 * 9 * 2, 1);
  conv.weight_scale = {0.5f}, conv.weight_zero_point = {0.0f};
  conv.mul = {1.0f, 1.0f}, conv.add = {0.0f, 0.0f};
  conv.input = {2, quant::activation_grid::pact(2.0f)};
  const deploy::integer_model plain({conv, deploy::layer::of_kind(deploy::op_kind::relu)});
  auto v1 = deploy::detail::serialize_v2(plain);
  v1[8] = 1;  // version field
  fix_checksum(v1);
  const auto x = random_tensor({2, 2, 5, 5}, rng, 0.0f, 2.0f);
  auto loaded = deploy::deserialize(v1);
  auto copy = plain;
  const auto y0 = copy.run(x), y1 = loaded.run(x);
  for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);

  const deploy::integer_model res({deploy::layer::slot_op(deploy::op_kind::save, 0), conv,
                                   deploy::layer::slot_op(deploy::op_kind::residual_add, 0)});
  auto r1 = deploy::detail::serialize_v2(res);
  r1[8] = 1;
  fix_checksum(r1);
  try {
    (void)deploy::deserialize(r1);
    FAIL("expected format_error");
  } catch (const format_error& e) {
    CHECK(std::string(e.what()).find("unknown kind 8") != std::string::npos);
  }
  // A read of a slot nothing saved: value_error from the model, format_error from a file.
  const std::vector<deploy::layer> bad{conv, deploy::layer::slot_op(deploy::op_kind::load, 0)};
  CHECK_THROWS_AS(deploy::integer_model{bad}, value_error);
  const std::vector<deploy::layer> far{deploy::layer::slot_op(deploy::op_kind::save, 500)};
  CHECK_THROWS_AS(deploy::integer_model{far}, value_error);
  // Any slot below the limit works once saved.
  deploy::integer_model res3({deploy::layer::slot_op(deploy::op_kind::save, 0), conv,
                              deploy::layer::slot_op(deploy::op_kind::save, 3),
                              deploy::layer::slot_op(deploy::op_kind::residual_add, 3)});
  auto r3 = deploy::serialize(res3);
  CHECK_NOTHROW((void)deploy::deserialize(r3));
  // Shapes: adding a slot of another shape is a shape_error at run time.
  auto down = conv;
  down.stride = 2;
  deploy::integer_model mismatch({deploy::layer::slot_op(deploy::op_kind::save, 0), down,
                                  deploy::layer::slot_op(deploy::op_kind::residual_add, 0)});
  CHECK_THROWS_AS(mismatch.run(x), shape_error);
  CHECK_THROWS_AS(mismatch.run_reference(x), shape_error);
}
