// integer_model::run (the fast path: codes between layers, threshold requantization, int8 and
// bit-serial GEMMs, code max pools, batch split over threads) against run_reference (the
// plain layer-by-layer path) on random networks of every op kind and random mixed bits; and
// the fast path's integer steps against plain loops: thresholds against the float output
// map they replace, the int8 convolution with folded or shifted weights against the
// definition, max pooling on codes against encoding after a float max pool.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

#include "mixq/deploy/integer_model.hpp"

using namespace mixq;
using namespace mixq::deploy;
namespace dd = mixq::deploy::detail;

namespace {

int code_lo(bitwidth t) {
  return t.is_binary() ? -1 : t.is_signed ? -(1 << (t.bits - 1)) : 0;
}
int code_hi(bitwidth t) {
  return t.is_binary() ? 1 : t.is_signed ? (1 << (t.bits - 1)) - 1 : (1 << t.bits) - 1;
}

// Zero points: none, DoReFa-like half-integral centre, or an integral one.
enum class zero_kind { none, centre, integral };

layer random_quantized(std::mt19937& rng, std::uint32_t in, std::uint32_t out, std::uint32_t k,
                       std::uint32_t stride, std::uint32_t pad, std::uint32_t groups, bitwidth wt,
                       int abits, zero_kind zk, bool linear = false) {
  layer l = layer::of_kind(op_kind::quantized, "q");
  l.is_linear = linear;
  l.window = linear ? 1 : k;
  l.stride = stride;
  l.padding = pad;
  l.in_channels = in, l.out_channels = out, l.groups = groups;
  l.weight_type = wt;
  std::uniform_int_distribution<int> code(code_lo(wt), code_hi(wt));
  l.weight_codes.resize(std::size_t(out) * l.window * l.window * (in / groups));
  for (auto& c : l.weight_codes) {
    int v = code(rng);
    if (wt.is_binary() && v == 0) v = 1;
    c = v;
  }
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const std::size_t wc = rng() % 2 ? out : 1;
  for (std::size_t c = 0; c < wc; ++c) {
    l.weight_scale.push_back(0.1f * u(rng));
    const float centre = 0.5f * float(code_hi(wt) + code_lo(wt));
    l.weight_zero_point.push_back(zk == zero_kind::none     ? 0.0f
                                  : zk == zero_kind::centre ? centre
                                                            : std::floor(centre));
  }
  // Mostly positive output scales, some negative (a batch norm with gamma < 0).
  for (std::size_t c = 0; c < out; ++c)
    l.mul.push_back(rng() % 5 ? u(rng) : -u(rng)), l.add.push_back(u(rng) - 0.8f);
  l.input.bits = abits;
  // PACT grids and LSQ step grids (a step near a PACT grid's alpha / L).
  const float alpha = 2.0f * u(rng);
  l.input.grid = rng() % 2 ? quant::activation_grid::pact(alpha)
                           : quant::activation_grid::step(alpha / float((1 << abits) - 1));
  return l;
}

bitwidth random_weight_type(std::mt19937& rng) {
  const int bits = 1 + int(rng() % 8);
  return {bits, bits == 1 ? bool(rng() % 2) : bool(rng() % 2)};
}
int random_bits(std::mt19937& rng) {
  static const int choice[] = {1, 2, 2, 2, 3, 4, 8};
  return choice[rng() % 7];
}

// Every op kind: dense 3x3 conv, ReLU, code max pool, depthwise, affine + ReLU (fused),
// grouped 1x1, pointwise, avg pool, global average pool, fully connected pair.
std::vector<layer> random_network(std::mt19937& rng, zero_kind zk) {
  std::vector<layer> ls;
  auto q = [&](std::uint32_t in, std::uint32_t out, std::uint32_t k, std::uint32_t s,
               std::uint32_t p, std::uint32_t g, bool linear = false) {
    const bitwidth wt = random_weight_type(rng);
    ls.push_back(random_quantized(rng, in, out, k, s, p, g, wt, random_bits(rng),
                                  wt.is_binary() ? zero_kind::none : zk, linear));
  };
  q(3, 8, 3, 1, 1, 1);
  ls.push_back(layer::of_kind(op_kind::relu));
  ls.push_back(layer::pool(op_kind::max_pool, 2, 2));
  q(8, 8, 3, 2, 1, 8);  // depthwise
  layer bn = layer::affine({}, {});
  for (int c = 0; c < 8; ++c)
    bn.mul.push_back(c == 3 ? -0.7f : 0.5f + 0.1f * float(c)), bn.add.push_back(0.1f);
  ls.push_back(bn);
  ls.push_back(layer::of_kind(op_kind::relu));
  q(8, 12, 1, 1, 0, 2);  // grouped 1x1
  ls.push_back(layer::of_kind(op_kind::relu));
  q(12, 16, 3, 1, 1, 1);  // dense 3x3 on 12 channels (patch 108)
  ls.push_back(layer::of_kind(op_kind::relu));
  q(16, 16, 1, 1, 0, 1);  // pointwise
  ls.push_back(layer::pool(op_kind::avg_pool, 3, 1, 1));
  ls.push_back(layer::of_kind(op_kind::relu));
  ls.push_back(layer::of_kind(op_kind::global_avg_pool));
  q(16, 12, 1, 1, 0, 1, true);
  ls.push_back(layer::of_kind(op_kind::relu));
  q(12, 5, 1, 1, 0, 1, true);
  return ls;
}

tensor<float> random_images(std::mt19937& rng, shape_t s) {
  tensor<float> t(std::move(s));
  std::uniform_real_distribution<float> u(-0.2f, 2.5f);
  for (auto& v : t) v = u(rng);
  return t;
}

// Logits within a relative tolerance and the same predicted class for every sample.
void check_close(const tensor<float>& got, const tensor<float>& want, double tol) {
  REQUIRE(got.shape() == want.shape());
  double scale = 0;
  for (float v : want) scale = std::max(scale, double(std::abs(v)));
  for (std::size_t i = 0; i < got.size(); ++i)
    REQUIRE(std::abs(double(got[i]) - double(want[i])) <= tol * (1.0 + scale));
  const std::size_t n = got.shape()[0], k = got.size() / n;
  for (std::size_t b = 0; b < n; ++b) {
    std::size_t ig = 0, iw = 0;
    for (std::size_t c = 1; c < k; ++c) {
      if (got[b * k + c] > got[b * k + ig]) ig = c;
      if (want[b * k + c] > want[b * k + iw]) iw = c;
    }
    // A near tie may order either way under float rounding.
    if (ig != iw)
      REQUIRE(std::abs(double(want[b * k + ig]) - double(want[b * k + iw])) <= tol * (1.0 + scale));
  }
}

}  // namespace

TEST_CASE("fast run matches the reference path on random mixed networks") {
  std::mt19937 rng(21);
  const std::optional<kernels::gemm_kernel> overrides[] = {
      std::nullopt, kernels::gemm_kernel::bitserial, kernels::gemm_kernel::int8};
  for (int trial = 0; trial < 24; ++trial) {
    const zero_kind zk = zero_kind(trial % 3);
    const auto ls = random_network(rng, zk);
    const std::size_t n = trial % 4 == 0 ? 37 : 1 + rng() % 6;  // 37: several 16-image steps
    const auto images = random_images(rng, {n, 3, 12, 10});
    integer_model m(ls);
    const auto want = m.run_reference(images);
    for (const auto& ov : overrides)
      for (std::size_t threads : {1, 2}) {
        CAPTURE(trial);
        CAPTURE(threads);
        CAPTURE(ov.has_value() ? int(*ov) : -1);
        m.set_kernel_override(ov);
        m.set_threads(threads);
        kernels::set_num_threads(threads);
        const auto got = m.run(images);
        check_close(got, want, 2e-3);
        // The report names the path of every quantized layer and marks fused ops.
        REQUIRE(m.report().size() == ls.size());
        for (std::size_t i = 0; i < ls.size(); ++i) {
          const std::string& k = m.report()[i].kernel;
          if (ls[i].kind == op_kind::quantized) {
            CHECK((k == "direct" || k == "int8" || k == "bitserial" ||
                   k.find("reference") != std::string::npos));
            if (ov && !(ls[i].groups > 1 && ls[i].groups == ls[i].in_channels) && k != "direct" &&
                k.find("reference") == std::string::npos)
              CHECK(k == (*ov == kernels::gemm_kernel::int8 ? "int8" : "bitserial"));
          }
        }
        CHECK(m.report()[1].kernel == "fused");  // the ReLU after the first conv
      }
    kernels::set_num_threads(1);
  }
}

TEST_CASE("fast run: repeated calls, batch sizes and copies agree") {
  std::mt19937 rng(22);
  const auto ls = random_network(rng, zero_kind::centre);
  integer_model m(ls);
  m.set_threads(2);
  kernels::set_num_threads(2);
  const auto big = random_images(rng, {33, 3, 12, 10});
  const auto y_big = m.run(big);
  // Buffers sized for 33 images then reused for 1: same logits as a fresh model.
  tensor<float> one({1, 3, 12, 10});
  std::copy_n(big.data() + 5 * 360, 360, one.data());
  const auto y_one = m.run(one);
  integer_model copy = m;
  const auto y_copy = copy.run(one);
  const std::size_t k = y_one.size();
  for (std::size_t c = 0; c < k; ++c) {
    CHECK(y_one[c] == y_big[5 * k + c]);
    CHECK(y_copy[c] == y_one[c]);
  }
  kernels::set_num_threads(1);
}

TEST_CASE("fast run: a zero point that is not half-integral falls back to the reference layer") {
  std::mt19937 rng(23);
  auto l = random_quantized(rng, 4, 6, 3, 1, 1, 1, {3, false}, 2, zero_kind::none);
  l.weight_zero_point.assign(l.weight_scale.size(), 2.3f);
  std::vector<layer> ls{random_quantized(rng, 2, 4, 3, 1, 1, 1, {2, false}, 2, zero_kind::centre),
                        layer::of_kind(op_kind::relu), l};
  integer_model m(ls);
  const auto images = random_images(rng, {3, 2, 7, 6});
  check_close(m.run(images), m.run_reference(images), 2e-3);
  CHECK(m.report()[2].kernel.find("reference") != std::string::npos);
}

TEST_CASE("threshold requantization equals the float output map it replaces") {
  std::mt19937 rng(24);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (int trial = 0; trial < 40; ++trial) {
    const int bits = 1 + trial % 4;
    const float v = 0.5f + std::abs(u(rng));
    const activation_encoding enc{bits, trial % 3 == 2 ? quant::activation_grid::step(v / 3.0f)
                                                       : quant::activation_grid::pact(v)};
    const std::size_t C = 1 + rng() % 40;
    // Per channel: scale (any sign, sometimes 0) and shift, an affine (any sign), ReLU or not.
    std::vector<float> scale(C), shift(C), mul(C), add(C);
    for (std::size_t c = 0; c < C; ++c) {
      scale[c] = c % 7 == 3 ? 0.0f : u(rng) * 1e-3f;
      shift[c] = u(rng);
      mul[c] = c % 5 == 1 ? -std::abs(u(rng)) : u(rng);
      add[c] = u(rng);
    }
    const bool with_relu = trial % 2;
    auto code_of = [&](std::size_t c, std::int32_t a) {
      float y = scale[c] * float(a) + shift[c];
      y = mul[c] * y + add[c];
      if (with_relu) y = y > 0.0f ? y : 0.0f;
      return int(enc.code(y));
    };
    const auto r = dd::make_thresholds(C, enc.max_code(), code_of);
    // Random accumulators, the values at and next to every threshold, and the extremes.
    std::vector<std::int32_t> acc;
    std::uniform_int_distribution<std::int32_t> a_dist(-20000, 20000);
    for (int i = 0; i < 64; ++i)
      for (std::size_t c = 0; c < C; ++c) acc.push_back(a_dist(rng));
    for (int k = 0; k < r.levels; ++k)
      for (std::int32_t d : {-1, 0, 1})
        for (std::size_t c = 0; c < C; ++c) {
          const std::int64_t t = std::int64_t(r.t[std::size_t(k) * C + c]) * r.sign[c] + d;
          acc.push_back(std::int32_t(
              std::clamp<std::int64_t>(t, -std::numeric_limits<std::int32_t>::max() + 1,
                                       std::numeric_limits<std::int32_t>::max() - 1)));
        }
    // The domain's ends (a real accumulator stays far inside).
    for (std::int32_t e : {-std::numeric_limits<std::int32_t>::max() + 1, 0,
                           std::numeric_limits<std::int32_t>::max() - 1})
      for (std::size_t c = 0; c < C; ++c) acc.push_back(e);
    const std::size_t pixels = acc.size() / C;
    std::vector<std::uint8_t> codes(acc.size());
    std::vector<std::int32_t> scratch;
    dd::requantize(acc.data(), pixels, r, codes.data(), scratch);
    for (std::size_t m = 0; m < pixels; ++m)
      for (std::size_t c = 0; c < C; ++c) {
        CAPTURE(acc[m * C + c]);
        REQUIRE(int(codes[m * C + c]) == code_of(c, acc[m * C + c]));
      }
  }
}

TEST_CASE("int8 convolution with folded or shifted weights equals the definition") {
  std::mt19937 rng(25);
  for (int trial = 0; trial < 30; ++trial) {
    const bitwidth wt = trial % 5 == 0 ? bitwidth{8, false} : random_weight_type(rng);
    const std::size_t groups = trial % 4 == 1 ? 2 : 1;
    const std::size_t cin = groups * (1 + rng() % 6), out = groups * (1 + rng() % 5);
    const std::size_t k = 1 + 2 * (rng() % 2), stride = 1 + rng() % 2, pad = k / 2 * (rng() % 2);
    const zero_kind zk = wt.is_binary() ? zero_kind::none : zero_kind(trial % 3);
    const layer l = random_quantized(rng, std::uint32_t(cin), std::uint32_t(out), std::uint32_t(k),
                                     std::uint32_t(stride), std::uint32_t(pad),
                                     std::uint32_t(groups), wt, 8, zk);
    const std::size_t cin_g = cin / groups, patch = k * k * cin_g;
    const auto w = dd::make_int8_weights(l.weight_codes, out, patch, groups, l.weight_zero_point);
    REQUIRE(w.has_value());
    // Shifted bytes (and the window-sum correction) exactly when the folded ones overflow.
    bool folded_fits = true;
    for (std::size_t o = 0; o < out; ++o) {
      const double z = l.weight_zero_point[l.weight_zero_point.size() == 1 ? 0 : o];
      for (std::size_t t = 0; t < patch; ++t) {
        const double v = w->multiplier * (l.weight_codes[o * patch + t] - z);
        folded_fits = folded_fits && v >= -128 && v <= 127;
      }
    }
    CHECK(w->uses_sums == !folded_fits);
    const std::size_t n = 2, h = 5 + rng() % 3, wd = 4 + rng() % 3;
    std::vector<std::uint8_t> codes(n * h * wd * cin + dd::im2col_slack);
    for (std::size_t i = 0; i < n * h * wd * cin; ++i) codes[i] = std::uint8_t(rng());
    const dd::window_geometry g{
        n, h,      wd, cin, (h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1,
        k, stride, pad};
    const std::size_t pixels = n * g.oh * g.ow;
    std::vector<std::int32_t> acc(pixels * out), sums, pixel_sums;
    std::vector<std::uint8_t> scratch;
    dd::int8_conv(codes.data(), g, *w, out, scratch, acc.data());
    if (w->uses_sums) dd::window_code_sums(codes.data(), g, groups, pixel_sums, sums);
    const std::size_t opg = out / groups;
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t oy = 0; oy < g.oh; ++oy)
        for (std::size_t ox = 0; ox < g.ow; ++ox)
          for (std::size_t o = 0; o < out; ++o) {
            const std::size_t grp = o / opg;
            const double z = l.weight_zero_point[l.weight_zero_point.size() == 1 ? 0 : o];
            double real = 0;
            for (std::size_t ky = 0; ky < k; ++ky)
              for (std::size_t kx = 0; kx < k; ++kx) {
                const long iy = long(oy * stride + ky) - long(pad),
                           ix = long(ox * stride + kx) - long(pad);
                if (iy < 0 || ix < 0 || iy >= long(h) || ix >= long(wd)) continue;
                for (std::size_t ci = 0; ci < cin_g; ++ci) {
                  const double a = codes[((b * h + std::size_t(iy)) * wd + std::size_t(ix)) * cin +
                                         grp * cin_g + ci];
                  real += a * (l.weight_codes[((o * k + ky) * k + kx) * cin_g + ci] - z);
                }
              }
            const std::size_t m = (b * g.oh + oy) * g.ow + ox;
            double got = acc[m * out + o];
            if (w->uses_sums)
              got = w->multiplier * got + double(w->correction[o]) * sums[m * groups + grp];
            REQUIRE(got == real * w->multiplier);
          }
  }
}

TEST_CASE("max pooling codes equals encoding a float max pool") {
  std::mt19937 rng(26);
  for (const activation_encoding enc :
       {activation_encoding{3, quant::activation_grid::pact(1.7f)},
        activation_encoding{2, quant::activation_grid::step(0.4f)}}) {
    std::uniform_real_distribution<float> u(-1.0f, 2.0f);
    for (std::size_t k : {2, 3})
      for (std::size_t pad : {0, 1}) {
        const std::size_t n = 2, h = 7, w = 6, c = 5, stride = 2;
        std::vector<float> x(n * h * w * c);
        for (auto& v : x) v = u(rng);
        std::vector<std::uint8_t> codes(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) codes[i] = enc.code(x[i]);
        const dd::window_geometry g{
            n, h,      w,  c, (h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1,
            k, stride, pad};
        std::vector<std::uint8_t> pooled(n * g.oh * g.ow * c);
        dd::max_pool_codes(codes.data(), g, pooled.data());
        for (std::size_t b = 0; b < n; ++b)
          for (std::size_t oy = 0; oy < g.oh; ++oy)
            for (std::size_t ox = 0; ox < g.ow; ++ox)
              for (std::size_t ch = 0; ch < c; ++ch) {
                float mx = -std::numeric_limits<float>::infinity();
                for (std::size_t ky = 0; ky < k; ++ky)
                  for (std::size_t kx = 0; kx < k; ++kx) {
                    const long iy = long(oy * stride + ky) - long(pad),
                               ix = long(ox * stride + kx) - long(pad);
                    if (iy < 0 || ix < 0 || iy >= long(h) || ix >= long(w)) continue;
                    mx =
                        std::max(mx, x[((b * h + std::size_t(iy)) * w + std::size_t(ix)) * c + ch]);
                  }
                REQUIRE(pooled[((b * g.oh + oy) * g.ow + ox) * c + ch] == enc.code(mx));
              }
      }
  }
}
