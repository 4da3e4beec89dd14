// Cost model: shapes -> params/MACs, the published totals, the uniform reference totals of
// §9.3 under every convention, the per-layer tables of Appendix A, the relaxed costs against
// finite differences, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mixq/search/cost.hpp"
#include "mixq/search/model_zoo.hpp"

using namespace mixq::search;

namespace {

// A printed figure with `decimals` decimals agrees when |x - printed| <= half a unit of the
// last place (plus slack for binary representation).
bool matches_printed(double x, double printed, int decimals) {
  return std::abs(x - printed) <= 0.5 * std::pow(10.0, -decimals) + 1e-9;
}

struct appendix_row {
  std::size_t index;
  std::int64_t cin, cout, k, s, groups, hout, params, macs;
};

void check_rows(const model_desc& m, const std::vector<appendix_row>& rows) {
  for (const auto& r : rows) {
    CAPTURE(r.index);
    REQUIRE(r.index < m.size());
    const auto& l = m.layers[r.index];
    CAPTURE(l.name);
    CHECK(l.in_channels == r.cin);
    CHECK(l.out_channels == r.cout);
    if (l.kind != layer_kind::linear) {
      CHECK(l.kernel == r.k);
      CHECK(l.stride == r.s);
      CHECK(l.groups == r.groups);
      CHECK(l.out_h == r.hout);
      CHECK(l.out_w == r.hout);
    }
    CHECK(l.params == r.params);
    CHECK(l.macs == r.macs);
  }
}

}  // namespace

TEST_CASE("layer primitives follow the shape formulas") {
  const auto c = make_conv("c", 64, 128, 3, 2, 1, 56, true, true);
  CHECK(c.kind == layer_kind::conv);
  CHECK(c.out_h == 28);
  CHECK(c.params == 128 * 64 * 9);
  CHECK(c.bias_params == 128);
  CHECK(c.bn_params == 256);
  CHECK(c.macs == 128 * 64 * 9 * 28 * 28);
  const auto dw = make_conv("dw", 96, 96, 3, 2, 96, 112);
  CHECK(dw.kind == layer_kind::depthwise_conv);
  CHECK(dw.params == 96 * 9);
  CHECK(dw.macs == 96 * 9 * 56 * 56);
  const auto g = make_conv("g", 8, 16, 3, 1, 2, 5);
  CHECK(g.kind == layer_kind::conv);
  CHECK(g.params == 16 * 4 * 9);
  const auto fc = make_linear("fc", 512, 1000);
  CHECK(fc.kind == layer_kind::linear);
  CHECK(fc.params == 512000);
  CHECK(fc.macs == 512000);
  CHECK(fc.bias_params == 1000);
  CHECK(layer_bitops(c, 4, 3) == double(c.macs) * 12);
  CHECK(layer_size_bits(c, 5) == double(c.params) * 5);

  CHECK_THROWS_AS(make_conv("bad", 6, 8, 3, 1, 4, 10), mixq::shape_error);
  CHECK_THROWS_AS(make_conv("bad", 0, 8, 3, 1, 1, 10), mixq::shape_error);
  CHECK_THROWS_AS(make_conv("bad", 3, 8, 7, 1, 1, 0), mixq::shape_error);
  CHECK_THROWS_AS(make_linear("bad", 0, 10), mixq::shape_error);
}

TEST_CASE("ResNet-18 totals and Appendix A table") {
  const auto m = resnet18();
  CHECK(m.size() == 21);
  CHECK(m.macs() == 1'814'073'344);
  CHECK(m.weight_params() == 11'678'912);
  CHECK(m.bias_params() == 1'000);
  CHECK(m.bn_params() == 9'600);
  CHECK(m.total_params() == 11'689'512);
  CHECK(m.layers.front().params == 9'408);
  CHECK(m.layers.front().macs == 118'013'952);
  CHECK(m.layers.back().params == 512'000);
  // Table order in Appendix A: conv1, per block conv1, conv2, downsample, fc.
  check_rows(m, {{0, 3, 64, 7, 2, 1, 112, 9408, 118013952},
                 {1, 64, 64, 3, 1, 1, 56, 36864, 115605504},
                 {2, 64, 64, 3, 1, 1, 56, 36864, 115605504},
                 {3, 64, 64, 3, 1, 1, 56, 36864, 115605504},
                 {4, 64, 64, 3, 1, 1, 56, 36864, 115605504},
                 {5, 64, 128, 3, 2, 1, 28, 73728, 57802752},
                 {6, 128, 128, 3, 1, 1, 28, 147456, 115605504},
                 {7, 64, 128, 1, 2, 1, 28, 8192, 6422528},
                 {8, 128, 128, 3, 1, 1, 28, 147456, 115605504},
                 {9, 128, 128, 3, 1, 1, 28, 147456, 115605504},
                 {10, 128, 256, 3, 2, 1, 14, 294912, 57802752},
                 {11, 256, 256, 3, 1, 1, 14, 589824, 115605504},
                 {12, 128, 256, 1, 2, 1, 14, 32768, 6422528},
                 {13, 256, 256, 3, 1, 1, 14, 589824, 115605504},
                 {14, 256, 256, 3, 1, 1, 14, 589824, 115605504},
                 {15, 256, 512, 3, 2, 1, 7, 1179648, 57802752},
                 {16, 512, 512, 3, 1, 1, 7, 2359296, 115605504},
                 {17, 256, 512, 1, 2, 1, 7, 131072, 6422528},
                 {18, 512, 512, 3, 1, 1, 7, 2359296, 115605504},
                 {19, 512, 512, 3, 1, 1, 7, 2359296, 115605504},
                 {20, 512, 1000, 1, 1, 1, 1, 512000, 512000}});
  // The downsample convs share their input with the block's conv1 (HAWQ-V3's ties).
  REQUIRE(m.shared_input_groups.size() == 3);
  CHECK(m.shared_input_groups[0] == std::vector<std::size_t>{5, 7});
  CHECK(m.shared_input_groups[1] == std::vector<std::size_t>{10, 12});
  CHECK(m.shared_input_groups[2] == std::vector<std::size_t>{15, 17});
}

TEST_CASE("MobileNetV2 totals and Appendix A spot checks") {
  const auto m = mobilenet_v2();
  CHECK(m.size() == 53);
  CHECK(m.macs() == 300'774'272);
  CHECK(m.weight_params() == 3'469'760);
  CHECK(m.bn_params() == 34'112);
  CHECK(m.total_params() == 3'504'872);
  CHECK(m.layers.front().params == 864);
  CHECK(m.layers.front().macs == 10'838'016);
  CHECK(m.layers.back().params == 1'280'000);
  check_rows(m, {{0, 3, 32, 3, 2, 1, 112, 864, 10838016},
                 {1, 32, 32, 3, 1, 32, 112, 288, 3612672},
                 {2, 32, 16, 1, 1, 1, 112, 512, 6422528},
                 {3, 16, 96, 1, 1, 1, 112, 1536, 19267584},
                 {4, 96, 96, 3, 2, 96, 56, 864, 2709504},
                 {10, 144, 144, 3, 2, 144, 28, 1296, 1016064},
                 {19, 192, 192, 3, 2, 192, 14, 1728, 338688},
                 {32, 384, 96, 1, 1, 1, 14, 36864, 7225344},
                 {40, 576, 576, 3, 2, 576, 7, 5184, 254016},
                 {41, 576, 160, 1, 1, 1, 7, 92160, 4515840},
                 {49, 960, 960, 3, 1, 960, 7, 8640, 423360},
                 {50, 960, 320, 1, 1, 1, 7, 307200, 15052800},
                 {51, 320, 1280, 1, 1, 1, 7, 409600, 20070400},
                 {52, 1280, 1000, 1, 1, 1, 1, 1280000, 1280000}});
  for (std::size_t i = 0; i < m.size(); ++i)
    if (m.layers[i].groups > 1) CHECK(m.layers[i].kind == layer_kind::depthwise_conv);
  CHECK(m.shared_input_groups.empty());
}

TEST_CASE("MobileNetV1 totals") {
  const auto m = mobilenet_v1();
  CHECK(m.size() == 28);
  CHECK(m.macs() == 568'740'352);
  CHECK(m.weight_params() == 4'209'088);
  // FracBits config targets (§3 (7)): GBitOps at W3A3/W4A4/W5A5, weight-only MB at W2/W3/W4.
  const auto fb = cost_conventions::fracbits();
  const double g[3] = {5.73, 9.64, 14.66};
  for (int b = 3; b <= 5; ++b)
    CHECK(matches_printed(evaluate(m, bit_config::uniform(m.size(), b, b), fb).gbitops(), g[b - 3],
                          2));
  CHECK(matches_printed(evaluate(m, bit_config::uniform(m.size(), 2, 8), fb).size, 1.825, 3));
  CHECK(matches_printed(evaluate(m, bit_config::uniform(m.size(), 3, 8), fb).size, 2.22, 2));
  CHECK(matches_printed(evaluate(m, bit_config::uniform(m.size(), 4, 8), fb).size, 2.62, 2));
}

TEST_CASE("uniform reference totals of section 9.3 under each convention") {
  struct row {
    int w, a;
    double all_g, all_mib, fl_g, fl_mib, fl_mb, fb_g, fb_mb, mid_g, mid_mib;
  };
  const std::vector<row> r18{
      {8, 8, 116.10, 11.14, 116.10, 11.14, 11.68, 116.10, 11.68, 108.52, 10.64},
      {4, 8, 58.05, 5.57, 61.84, 5.82, 6.10, 61.84, 6.10, 54.26, 5.32},
      {4, 4, 29.03, 5.57, 34.71, 5.82, 6.10, 34.70, 6.10, 27.13, 5.32},
      {3, 3, 16.33, 4.18, 22.85, 4.49, 4.71, 22.83, 4.71, 15.26, 3.99},
      {2, 2, 7.26, 2.78, 14.37, 3.16, 3.31, 14.34, 3.31, 6.78, 2.66}};
  const std::vector<row> mb2{{8, 8, 19.25, 3.31, 19.25, 3.31, 3.47, 19.25, 3.47, 18.47, 2.09},
                             {4, 8, 9.62, 1.65, 10.01, 2.27, 2.38, 10.01, 2.38, 9.24, 1.04},
                             {4, 4, 4.81, 1.65, 5.39, 2.27, 2.38, 5.35, 2.38, 4.62, 1.04},
                             {3, 3, 2.71, 1.24, 3.37, 2.00, 2.10, 3.32, 2.11, 2.60, 0.78},
                             {2, 2, 1.20, 0.83, 1.93, 1.74, 1.83, 1.87, 1.83, 1.15, 0.52}};
  for (const auto& [model, rows] : {std::pair{resnet18(), r18}, std::pair{mobilenet_v2(), mb2}}) {
    for (const auto& x : rows) {
      CAPTURE(model.name);
      CAPTURE(x.w);
      CAPTURE(x.a);
      const auto cfg = bit_config::uniform(model.size(), x.w, x.a);
      const auto all = evaluate(model, cfg, cost_conventions::all_layers());
      CHECK(matches_printed(all.gbitops(), x.all_g, 2));
      CHECK(matches_printed(all.size, x.all_mib, 2));
      const auto fl = evaluate(model, cfg, cost_conventions::hawq_v3());
      CHECK(matches_printed(fl.gbitops(), x.fl_g, 2));
      CHECK(matches_printed(fl.size, x.fl_mib, 2));
      const auto fl_mb = evaluate(model, cfg, cost_conventions::first_last_8bit(size_unit::mb));
      CHECK(matches_printed(fl_mb.size, x.fl_mb, 2));
      CHECK(evaluate(model, cfg, cost_conventions::ompq_qat()).bitops == fl.bitops);
      const auto fb = evaluate(model, cfg, cost_conventions::fracbits());
      CHECK(matches_printed(fb.gbitops(), x.fb_g, 2));
      CHECK(matches_printed(fb.size, x.fb_mb, 2));
      const auto mid = evaluate(model, cfg, cost_conventions::edmips());
      CHECK(matches_printed(mid.gbitops(), x.mid_g, 2));
      CHECK(matches_printed(mid.size, x.mid_mib, 2));
      CHECK(mid.params ==
            model.weight_params() - model.layers.front().params - model.layers.back().params);
    }
  }
}

TEST_CASE("evaluate sums the per-layer formulas; extras and units") {
  const auto m = resnet18();
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> bits(1, 8);
  for (int t = 0; t < 20; ++t) {
    bit_config cfg;
    for (std::size_t i = 0; i < m.size(); ++i) {
      cfg.w_bits.push_back(bits(rng));
      cfg.a_bits.push_back(bits(rng));
    }
    cost_conventions conv;
    conv.count_bias = (t % 2) == 1;
    conv.count_bn = (t % 3) == 1;
    conv.unit = (t % 4) < 2 ? size_unit::mb : size_unit::mib;
    if (t % 5 == 0) conv.first_layer = {true, 32, 32};  // full precision, counted
    const auto r = evaluate(m, cfg, conv);
    double ops = 0, sz = 0;
    for (std::size_t i = 0; i < m.size(); ++i) {
      const auto& l = m.layers[i];
      const int w = (i == 0 && t % 5 == 0) ? 32 : cfg.w_bits[i];
      const int a = (i == 0 && t % 5 == 0) ? 32 : cfg.a_bits[i];
      ops += double(l.macs) * w * a;
      sz += double(l.params) * w + (conv.count_bias ? 32.0 * double(l.bias_params) : 0.0) +
            (conv.count_bn ? 32.0 * double(l.bn_params) : 0.0);
    }
    CHECK(r.bitops == doctest::Approx(ops).epsilon(1e-12));
    CHECK(r.size_bits == doctest::Approx(sz).epsilon(1e-12));
    CHECK(r.size == doctest::Approx(sz / (conv.unit == size_unit::mb ? 8e6 : 8388608.0)));
    CHECK(r.macs == m.macs());
    CHECK(r.compute_compression_vs_fp32() == doctest::Approx(1024.0 * double(m.macs()) / ops));
    if (!conv.count_bias && !conv.count_bn && t % 5 != 0) {
      double wbits = 0;
      for (std::size_t i = 0; i < m.size(); ++i)
        wbits += double(m.layers[i].params) * cfg.w_bits[i];
      CHECK(r.size_compression_vs_fp32() ==
            doctest::Approx(32.0 * double(m.weight_params()) / wbits));
    }
  }
  // Uniform W4A4 everywhere: 8x smaller weights, 64x less compute than 32-bit.
  const auto w4 = evaluate(m, bit_config::uniform(m.size(), 4, 4));
  CHECK(w4.size_compression_vs_fp32() == doctest::Approx(8.0));
  CHECK(w4.compute_compression_vs_fp32() == doctest::Approx(64.0));
  // Full precision, every parameter at 32 bits: torchvision count x 4 bytes = 44.59 MiB (§9.3).
  cost_conventions fp;
  fp.first_layer = fp.last_layer = {true, 32, 32};
  fp.count_bias = fp.count_bn = true;
  auto cfg = bit_config::uniform(m.size(), 8, 8);
  const double bits32 = double(m.total_params()) * 32.0;
  CHECK(matches_printed(bits32 / 8388608.0, 44.59, 2));
  CHECK(evaluate(m, cfg, fp).bitops ==
        double(m.layers.front().macs + m.layers.back().macs) * 1024.0 +
            double(m.macs() - m.layers.front().macs - m.layers.back().macs) * 64.0);
}

TEST_CASE("bad bit configurations and conventions") {
  const auto m = resnet18();
  auto cfg = bit_config::uniform(m.size(), 4, 4);
  CHECK_NOTHROW(evaluate(m, cfg));
  for (int bad : {0, 9, -1}) {
    auto c = cfg;
    c.w_bits[3] = bad;
    CHECK_THROWS_AS(evaluate(m, c), mixq::bits_error);
    c = cfg;
    c.a_bits[20] = bad;
    CHECK_THROWS_AS(evaluate(m, c), mixq::bits_error);
  }
  auto shorter = bit_config::uniform(m.size() - 1, 4, 4);
  CHECK_THROWS_AS(evaluate(m, shorter), mixq::shape_error);
  auto mixed = cfg;
  mixed.a_bits.push_back(4);
  CHECK_THROWS_AS(evaluate(m, mixed), mixq::shape_error);
  try {
    evaluate(m, shorter);
  } catch (const mixq::shape_error& e) {
    CHECK(std::string(e.what()).find("expected 21") != std::string::npos);
  }
  cost_conventions c;
  c.first_layer.fixed_w_bits = 33;
  CHECK_THROWS_AS(evaluate(m, cfg, c), mixq::bits_error);
  c = {};
  c.bias_bits = 0;
  CHECK_THROWS_AS(evaluate(m, cfg, c), mixq::bits_error);
}

namespace {
// Central finite difference of f at x along coordinate i.
template <class F>
double central_difference(F f, std::vector<double> x, std::size_t i, double h) {
  const double x0 = x[i];
  x[i] = x0 + h;
  const double up = f(x);
  x[i] = x0 - h;
  const double down = f(x);
  return (up - down) / (2 * h);
}
}  // namespace

TEST_CASE("FracBits relaxed cost: integer points, gradients, clamping") {
  const auto m = mobilenet_v2();
  const std::size_t n = m.size();
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(1.2, 7.8);
  for (const auto& conv :
       {cost_conventions::all_layers(), cost_conventions::fracbits(), cost_conventions::edmips()}) {
    for (auto metric : {cost_metric::bitops, cost_metric::size_bits}) {
      // At integral lambdas the relaxation equals the discrete cost model.
      auto cfg = bit_config::uniform(n, 1, 1);
      std::vector<double> lw(n), la(n);
      for (std::size_t i = 0; i < n; ++i) {
        cfg.w_bits[i] = 1 + int(rng() % 8);
        cfg.a_bits[i] = 1 + int(rng() % 8);
        lw[i] = cfg.w_bits[i];
        la[i] = cfg.a_bits[i];
      }
      const auto disc = evaluate(m, cfg, conv);
      const auto rel = fracbits_cost(m, lw, la, metric, conv, 1.0, 8.0);
      CHECK(rel.value ==
            doctest::Approx(metric == cost_metric::bitops ? disc.bitops : disc.size_bits)
                .epsilon(1e-12));
      // Gradients against central differences at interior points.
      for (std::size_t i = 0; i < n; ++i) lw[i] = u(rng), la[i] = u(rng);
      const auto g = fracbits_cost(m, lw, la, metric, conv);
      for (std::size_t i = 0; i < n; i += 5) {
        CAPTURE(i);
        auto fw = [&](const std::vector<double>& x) {
          return fracbits_cost(m, x, la, metric, conv).value;
        };
        auto fa = [&](const std::vector<double>& x) {
          return fracbits_cost(m, lw, x, metric, conv).value;
        };
        const double scale = double(m.layers[i].macs) * 8 + 1;
        CHECK(std::abs(central_difference(fw, lw, i, 1e-3) - g.d_w_bits[i]) <= 1e-6 * scale);
        CHECK(std::abs(central_difference(fa, la, i, 1e-3) - g.d_a_bits[i]) <= 1e-6 * scale);
      }
    }
  }
  // Outside [min, max] the value is clamped and the gradient vanishes.
  const std::size_t last = n - 1;
  std::vector<double> lw(n, 4.0), la(n, 4.0);
  lw[2] = 9.5;
  la[3] = 0.2;
  const auto c = fracbits_cost(m, lw, la, cost_metric::bitops);
  CHECK(c.d_w_bits[2] == 0.0);
  CHECK(c.d_a_bits[3] == 0.0);
  CHECK(c.d_w_bits[1] != 0.0);
  lw[2] = 8.0;
  la[3] = 1.0;
  CHECK(fracbits_cost(m, lw, la, cost_metric::bitops).value == doctest::Approx(c.value));
  // FracBits convention: the first layer is fixed (no gradient), the FC's activation is searched.
  const auto f = fracbits_cost(m, lw, la, cost_metric::bitops, cost_conventions::fracbits());
  CHECK(f.d_w_bits[0] == 0.0);
  CHECK(f.d_a_bits[0] == 0.0);
  CHECK(f.d_w_bits[last] == 0.0);
  CHECK(f.d_a_bits[last] == double(m.layers[last].macs) * 8.0);

  CHECK_THROWS_AS(fracbits_cost(m, std::vector<double>(n - 1, 4.0), la, cost_metric::bitops),
                  mixq::shape_error);
  CHECK_THROWS_AS(fracbits_cost(m, lw, la, cost_metric::bitops, {}, 0.5, 8.0), mixq::bits_error);
  lw[4] = std::nan("");
  CHECK_THROWS_AS(fracbits_cost(m, lw, la, cost_metric::bitops), mixq::value_error);
}

TEST_CASE("EBS/EdMIPS expected cost and DNAS mixture cost: one-hot points and gradients") {
  const auto m = resnet18();
  const std::size_t n = m.size();
  const std::vector<int> wc{1, 2, 3, 4}, ac{2, 3, 4};
  std::vector<bit_pair> pairs;
  for (int w : wc)
    for (int a : ac) pairs.push_back({w, a});
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  auto random_simplex = [&](std::size_t k) {
    std::vector<double> p(k);
    double s = 0;
    for (auto& x : p) s += (x = u(rng) + 1e-3);
    for (auto& x : p) x /= s;
    return p;
  };
  for (const auto& conv :
       {cost_conventions::all_layers(), cost_conventions::hawq_v3(), cost_conventions::edmips()}) {
    for (auto metric : {cost_metric::bitops, cost_metric::size_bits}) {
      // One-hot probabilities reproduce the discrete cost.
      bit_config cfg = bit_config::uniform(n, 1, 2);
      std::vector<std::vector<double>> pw(n, std::vector<double>(wc.size(), 0.0)),
          pa(n, std::vector<double>(ac.size(), 0.0)),
          mix(n, std::vector<double>(pairs.size(), 0.0));
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t iw = rng() % wc.size(), ia = rng() % ac.size();
        pw[i][iw] = 1;
        pa[i][ia] = 1;
        mix[i][iw * ac.size() + ia] = 1;
        cfg.w_bits[i] = wc[iw];
        cfg.a_bits[i] = ac[ia];
      }
      const auto disc = evaluate(m, cfg, conv);
      const double want = metric == cost_metric::bitops ? disc.bitops : disc.size_bits;
      CHECK(expected_bits_cost(m, pw, wc, pa, ac, metric, conv).value ==
            doctest::Approx(want).epsilon(1e-12));
      CHECK(mixture_cost(m, mix, pairs, metric, conv).value ==
            doctest::Approx(want).epsilon(1e-12));

      // Gradients against central differences at random interior points.
      for (std::size_t i = 0; i < n; ++i) {
        pw[i] = random_simplex(wc.size());
        pa[i] = random_simplex(ac.size());
        mix[i] = random_simplex(pairs.size());
      }
      const auto g = expected_bits_cost(m, pw, wc, pa, ac, metric, conv);
      const auto gm = mixture_cost(m, mix, pairs, metric, conv);
      for (std::size_t i = 0; i < n; i += 4) {
        CAPTURE(i);
        const double scale = double(m.layers[i].macs) * 64 + double(m.layers[i].params) * 64;
        for (std::size_t k = 0; k < wc.size(); ++k) {
          auto f = [&](const std::vector<double>& x) {
            auto p = pw;
            p[i] = x;
            return expected_bits_cost(m, p, wc, pa, ac, metric, conv).value;
          };
          CHECK(std::abs(central_difference(f, pw[i], k, 1e-4) - g.d_p_w[i][k]) <= 1e-6 * scale);
        }
        for (std::size_t k = 0; k < ac.size(); ++k) {
          auto f = [&](const std::vector<double>& x) {
            auto p = pa;
            p[i] = x;
            return expected_bits_cost(m, pw, wc, p, ac, metric, conv).value;
          };
          CHECK(std::abs(central_difference(f, pa[i], k, 1e-4) - g.d_p_a[i][k]) <= 1e-6 * scale);
        }
        for (std::size_t k = 0; k < pairs.size(); ++k) {
          auto f = [&](const std::vector<double>& x) {
            auto p = mix;
            p[i] = x;
            return mixture_cost(m, p, pairs, metric, conv).value;
          };
          CHECK(std::abs(central_difference(f, mix[i], k, 1e-4) - gm.d_m[i][k]) <= 1e-6 * scale);
        }
      }
    }
  }
  // Softmax chain rule against finite differences of C(softmax(s)) for one layer.
  std::vector<double> s{0.3, -1.2, 0.7, 2.0};
  auto softmax = [](const std::vector<double>& x) {
    double mx = x[0], z = 0;
    for (double v : x) mx = std::max(mx, v);
    std::vector<double> r(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) z += (r[i] = std::exp(x[i] - mx));
    for (auto& v : r) v /= z;
    return r;
  };
  std::vector<std::vector<double>> pa(n, std::vector<double>(ac.size(), 1.0 / 3));
  std::vector<std::vector<double>> pw(n, std::vector<double>(wc.size(), 0.25));
  auto cost_of = [&](const std::vector<double>& logits) {
    auto p = pw;
    p[6] = softmax(logits);
    return expected_bits_cost(m, p, wc, pa, ac, cost_metric::bitops).value;
  };
  pw[6] = softmax(s);
  const auto g = expected_bits_cost(m, pw, wc, pa, ac, cost_metric::bitops);
  const auto ds = softmax_backward(pw[6], g.d_p_w[6]);
  for (std::size_t k = 0; k < s.size(); ++k)
    CHECK(ds[k] == doctest::Approx(central_difference(cost_of, s, k, 1e-5)).epsilon(1e-6));

  // Bad input.
  CHECK_THROWS_AS(expected_bits_cost(m, std::vector<std::vector<double>>(n - 1), wc, pa, ac,
                                     cost_metric::bitops),
                  mixq::shape_error);
  auto pw_bad = pw;
  pw_bad[3].pop_back();
  CHECK_THROWS_AS(expected_bits_cost(m, pw_bad, wc, pa, ac, cost_metric::bitops),
                  mixq::shape_error);
  const std::vector<int> wc_bad{0, 2, 3, 4};
  CHECK_THROWS_AS(expected_bits_cost(m, pw, wc_bad, pa, ac, cost_metric::bitops), mixq::bits_error);
  std::vector<std::vector<double>> mix(n, std::vector<double>(pairs.size(), 0.0));
  auto pairs_bad = pairs;
  pairs_bad[0].w = 9;
  CHECK_THROWS_AS(mixture_cost(m, mix, pairs_bad, cost_metric::bitops), mixq::bits_error);
  mix[0].pop_back();
  CHECK_THROWS_AS(mixture_cost(m, mix, pairs, cost_metric::bitops), mixq::shape_error);
  CHECK_THROWS_AS(softmax_backward(std::vector<double>(3), std::vector<double>(2)),
                  mixq::shape_error);
}
