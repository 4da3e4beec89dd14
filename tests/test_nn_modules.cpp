// nn modules, optimizers, schedules, parameter files and the training loop: naming and
// modes, optimizer updates against hand-written reference formulas, save/load round trips
// and damaged files, and a tiny net trained to 100% on a separable problem.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "mixq/nn.hpp"

using namespace mixq;
using namespace mixq::nn;
namespace ad = mixq::autodiff;
namespace fs = std::filesystem;

namespace {
std::shared_ptr<sequential> small_cnn(std::mt19937& rng) {
  auto net = std::make_shared<sequential>();
  net->add(std::make_shared<conv2d>(1, 4, 3, 1, 1, 1, true, rng));
  net->add(std::make_shared<batch_norm2d>(4));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<max_pool2d>(2));
  net->add(std::make_shared<residual_block>(4, 8, 2, rng));
  net->add(std::make_shared<global_avg_pool2d>());
  net->add(std::make_shared<linear>(8, 3, true, rng));
  return net;
}

ad::ftensor randn(shape_t s, std::mt19937& rng) {
  ad::ftensor t(std::move(s));
  std::normal_distribution<float> d;
  for (auto& v : t) v = d(rng);
  return t;
}

struct temp_file {
  std::string path =
      (fs::temp_directory_path() / ("mixq_nn_" + std::to_string(std::random_device{}()) + ".bin"))
          .string();
  ~temp_file() {
    std::error_code ec;
    fs::remove(path, ec);
    fs::remove(path + ".tmp", ec);
  }
};
}  // namespace

TEST_CASE("modules: names, modes, shapes, hooks") {
  std::mt19937 rng(1);
  auto net = small_cnn(rng);
  const auto params = net->named_parameters();
  std::vector<std::string> names;
  for (auto& [n, p] : params) names.push_back(n);
  CHECK(names.front() == "0.weight");
  CHECK(std::find(names.begin(), names.end(), "4.down_conv.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "6.bias") != names.end());
  const auto bufs = net->named_buffers();
  CHECK(bufs.size() == 2 * 4);  // four batch norms
  CHECK(bufs.front().first == "1.running_mean");
  const var y = (*net)(ad::constant(randn({2, 1, 8, 8}, rng)));
  CHECK(y.shape() == shape_t{2, 3});
  net->eval();
  CHECK_FALSE((*net)[4].is_training());
  net->train();
  CHECK((*net)[1].is_training());
  shape_t seen;
  (*net)[3].set_forward_hook([&](module&, const var&, const var& out) { seen = out.shape(); });
  (*net)(ad::constant(randn({2, 1, 8, 8}, rng)));
  CHECK(seen == shape_t{2, 4, 4, 4});
  // Backward reaches every parameter.
  net->zero_grad();
  ad::backward(ad::cross_entropy((*net)(ad::constant(randn({4, 1, 8, 8}, rng))),
                                 std::vector<int>{0, 1, 2, 0}));
  for (auto& [n, p] : params) {
    CAPTURE(n);
    float s = 0;
    for (float g : p.grad()) s += std::fabs(g);
    CHECK(s > 0);
  }
  CHECK_THROWS_AS(conv2d(3, 4, 3, 1, 0, 2), shape_error);
}

TEST_CASE("batch_norm2d: eval uses the running statistics") {
  std::mt19937 rng(2);
  batch_norm2d bn(3);
  const ad::ftensor x = randn({4, 3, 2, 2}, rng);
  bn(ad::constant(x));
  bn.eval();
  const var y = bn(ad::constant(x));
  for (std::size_t c = 0; c < 3; ++c) {
    const float m = bn.running_mean.value()[c], v = bn.running_var.value()[c];
    CHECK(y.value().at(1, c, 1, 0) ==
          doctest::Approx((x.at(1, c, 1, 0) - m) / std::sqrt(v + 1e-5f)).epsilon(1e-5));
  }
}

TEST_CASE("SGD and Adam updates follow their reference formulas") {
  std::mt19937 rng(3);
  const ad::ftensor w0 = randn({5}, rng);
  const std::vector<ad::ftensor> grads = {randn({5}, rng), randn({5}, rng), randn({5}, rng)};
  for (int nesterov = 0; nesterov < 2; ++nesterov) {
    var w = var::parameter(w0);
    var b = var::parameter(w0);
    sgd opt({{{w}, 0.1f, 0.9f, 0.01f, nesterov == 1}, {{b}, 0.05f, 0.0f, 0.0f, false}});
    std::vector<double> ref(w0.begin(), w0.end()), refb(ref), vel(5, 0.0);
    for (std::size_t t = 0; t < grads.size(); ++t) {
      opt.zero_grad();
      w.grad() = grads[t];
      b.grad() = grads[t];
      opt.set_lr_factor(t == 2 ? 0.5f : 1.0f);
      opt.step();
      const double f = t == 2 ? 0.5 : 1.0;
      for (std::size_t i = 0; i < 5; ++i) {
        const double g = grads[t][i] + 0.01 * ref[i];
        vel[i] = 0.9 * vel[i] + g;
        ref[i] -= 0.1 * f * (nesterov ? g + 0.9 * vel[i] : vel[i]);
        refb[i] -= 0.05 * f * grads[t][i];
        CHECK(w.value()[i] == doctest::Approx(ref[i]).epsilon(1e-5));
        CHECK(b.value()[i] == doctest::Approx(refb[i]).epsilon(1e-5));
      }
    }
  }
  var w = var::parameter(w0);
  adam opt({w}, 0.01f, 0.001f);
  std::vector<double> ref(w0.begin(), w0.end()), m(5, 0.0), v(5, 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    w.grad() = grads[t];
    opt.step();
    for (std::size_t i = 0; i < 5; ++i) {
      const double g = grads[t][i] + 0.001 * ref[i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, double(t + 1))),
                   vh = v[i] / (1 - std::pow(0.999, double(t + 1)));
      ref[i] -= 0.01 * mh / (std::sqrt(vh) + 1e-8);
      CHECK(w.value()[i] == doctest::Approx(ref[i]).epsilon(1e-5));
    }
  }
  CHECK_THROWS_AS(sgd({w}, 0.1f, 1.5f), value_error);
  CHECK_THROWS_AS(sgd({w}, 0.1f, 0.0f, 0.0f, true), value_error);
  CHECK_THROWS_AS(sgd({ad::constant(w0)}, 0.1f), value_error);
  CHECK_THROWS_AS(adam({{{w}, 0.1f}}, 1.0f), value_error);
}

TEST_CASE("learning-rate schedules") {
  const cosine_schedule cos{100, 0.1f};
  CHECK(cos.factor(0) == doctest::Approx(1.0f));
  CHECK(cos.factor(50) == doctest::Approx(0.55f));
  CHECK(cos.factor(100) == doctest::Approx(0.1f));
  CHECK(cos.factor(500) == doctest::Approx(0.1f));
  for (std::size_t s = 1; s < 100; ++s) CHECK(cos.factor(s) <= cos.factor(s - 1));
  const step_schedule st{30, 0.1f};
  CHECK(st.factor(29) == 1.0f);
  CHECK(st.factor(30) == doctest::Approx(0.1f));
  CHECK(st.factor(65) == doctest::Approx(0.01f));
  CHECK_THROWS_AS(step_schedule{0}.factor(1), value_error);
}

TEST_CASE("save/load parameters: round trip, atomic write, damaged files") {
  std::mt19937 rng(4);
  auto a = small_cnn(rng);
  (*a)(ad::constant(randn({2, 1, 8, 8}, rng)));  // moves the running statistics
  temp_file f;
  save_parameters(*a, f.path);
  CHECK_FALSE(fs::exists(f.path + ".tmp"));
  auto b = small_cnn(rng);
  load_parameters(*b, f.path);
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].second.value() == pb[i].second.value());
  const auto ba = a->named_buffers(), bb = b->named_buffers();
  for (std::size_t i = 0; i < ba.size(); ++i) CHECK(ba[i].second.value() == bb[i].second.value());

  std::ifstream in(f.path, std::ios::binary);
  const std::vector<char> good((std::istreambuf_iterator<char>(in)), {});
  auto c = small_cnn(rng);
  const ad::ftensor before = c->named_parameters()[0].second.value();
  auto write = [&](const std::vector<char>& bytes) {
    std::ofstream out(f.path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
  };
  for (std::size_t n :
       {std::size_t(0), std::size_t(7), std::size_t(20), good.size() / 2, good.size() - 1}) {
    CAPTURE(n);
    write(std::vector<char>(good.begin(), good.begin() + long(n)));
    CHECK_THROWS_AS(load_parameters(*c, f.path), format_error);
  }
  for (std::size_t at : {std::size_t(0), std::size_t(9), good.size() / 3, good.size() - 3}) {
    CAPTURE(at);
    auto bad = good;
    bad[at] = char(bad[at] ^ 0x5a);
    write(bad);
    CHECK_THROWS_AS(load_parameters(*c, f.path), format_error);
  }
  CHECK(c->named_parameters()[0].second.value() == before);  // unchanged by failed loads
  // A different architecture: names or shapes disagree.
  write(good);
  sequential other;
  other.add(std::make_shared<linear>(3, 3));
  CHECK_THROWS_AS(load_parameters(other, f.path), format_error);
  CHECK_THROWS_AS(load_parameters(*c, f.path + ".missing"), io_error);
  CHECK_THROWS_AS(save_parameters(*c, "/nonexistent-dir/x.bin"), io_error);
}

namespace {
/// Two Gaussian blobs per class at well-separated centres: linearly separable.
struct toy_batches {
  std::vector<ad::ftensor> xs;
  std::vector<std::vector<int>> ys;
  struct item {
    ad::ftensor images;
    std::vector<int> labels;
  };
  std::size_t size() const { return xs.size(); }
  item operator[](std::size_t i) const { return {xs[i], ys[i]}; }
};
toy_batches make_toy(std::size_t batches, std::size_t per, std::mt19937& rng) {
  const float centres[3][2] = {{3, 0}, {-2, 2.5f}, {-2, -2.5f}};
  std::normal_distribution<float> noise(0.0f, 0.5f);
  toy_batches t;
  for (std::size_t b = 0; b < batches; ++b) {
    ad::ftensor x({per, 2});
    std::vector<int> y(per);
    for (std::size_t i = 0; i < per; ++i) {
      y[i] = int(rng() % 3);
      x.at(i, 0) = centres[y[i]][0] + noise(rng);
      x.at(i, 1) = centres[y[i]][1] + noise(rng);
    }
    t.xs.push_back(std::move(x));
    t.ys.push_back(std::move(y));
  }
  return t;
}
}  // namespace

TEST_CASE("a tiny MLP reaches 100% on a separable problem in a fixed number of steps") {
  std::mt19937 rng(5);
  sequential net;
  net.add(std::make_shared<linear>(2, 16, true, rng));
  net.add(std::make_shared<relu>());
  net.add(std::make_shared<linear>(16, 3, true, rng));
  const toy_batches train = make_toy(20, 32, rng), test = make_toy(10, 32, rng);
  sgd opt(net.parameters(), 0.1f, 0.9f);
  const cosine_schedule sched{60};
  std::ostringstream log;
  loop_options o;
  o.out = &log;
  o.interactive = 0;
  for (std::size_t epoch = 0; epoch < 3; ++epoch) {
    o.first_step = epoch * train.size();
    o.on_step = [&](std::size_t s) { opt.set_lr_factor(sched.factor(s)); };
    train_epoch(net, opt, train, o);
  }
  const epoch_stats s = evaluate(net, test);
  CHECK(s.samples == 320);
  CHECK(s.accuracy == 1.0);
  // Non-terminal output: one line per epoch.
  const std::string text = log.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 3);
  CHECK(text.find("20/20 batches") != std::string::npos);
  CHECK(text.find('\r') == std::string::npos);
}

TEST_CASE("progress bar redraws one line on a terminal") {
  std::ostringstream os;
  progress_bar bar("epoch 1", 4, os, 1);
  epoch_stats s{0.5, 0.75, 128, 0};
  bar.update(4, s);
  bar.finish(s);
  const std::string text = os.str();
  CHECK(text.front() == '\r');
  CHECK(text.find("loss 0.5000") != std::string::npos);
  CHECK(text.find("acc 75.00%") != std::string::npos);
  CHECK(text.find("samples/s") != std::string::npos);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  CHECK(bar.line(2, s).find("ETA") != std::string::npos);
}

TEST_CASE("fashion_cnn: the example CNN's layers, parameter shapes and output") {
  std::mt19937 rng(21);
  const auto net = fashion_cnn(rng);
  REQUIRE(net->size() == 10);
  // conv 1->32 3x3 (no bias), BN 32, conv 32->64 3x3 (no bias), BN 64, linear 64*7*7 -> 10.
  const std::vector<std::pair<std::string, shape_t>> expected = {
      {"0.weight", {32, 1, 3, 3}},    {"1.weight", {32}}, {"1.bias", {32}},
      {"4.weight", {64, 32, 3, 3}},   {"5.weight", {64}}, {"5.bias", {64}},
      {"9.weight", {10, 64 * 7 * 7}}, {"9.bias", {10}}};
  const auto params = net->named_parameters();
  REQUIRE(params.size() == expected.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].first == expected[i].first);
    CHECK(params[i].second.shape() == expected[i].second);
  }
  const ad::var y = (*net)(ad::constant(randn({3, 1, 28, 28}, rng)));
  CHECK(y.shape() == shape_t{3, 10});
  for (float v : y.value()) CHECK(std::isfinite(v));
  CHECK(fashion_cnn(rng, 4)->named_parameters().back().second.shape() == shape_t{4});
  CHECK_THROWS_AS(fashion_cnn(rng, 0), shape_error);
}
