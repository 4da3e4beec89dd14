// Bit-serial convolution: every instruction-set path against the plain reference convolution on
// integer codes, for all 16 x 16 qtype pairs on tiny shapes and a sweep of kernel sizes,
// strides, paddings, dilations, groups (depthwise included) and batch sizes; the float
// convolution against the same reference; and every bad input.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "mixq/kernels/bitserial_conv2d.hpp"
#include "mixq/kernels/conv2d_f32.hpp"
#include "test_util.hpp"

namespace mk = mixq::kernels;
using mixq::bitwidth;
using mixq::tensor;

using mixq::test::all_bitwidths;
using mixq::test::supported_paths;

namespace {

/// One convolution to check.
struct conv_case {
  std::size_t batch = 1, h = 5, w = 5, cin = 3, cout = 2, kh = 3, kw = 3;
  mk::weight_layout layout = mk::weight_layout::ohwi;
  mk::conv2d_params p;
  /// 0: random values, 1: every value the type's minimum, 2: maximum.
  int fill = 0;
};

template <class Q>
std::vector<typename Q::storage_type> values_for(std::size_t n, int fill, std::mt19937& rng) {
  if (fill == 1) return std::vector<typename Q::storage_type>(n, typename Q::storage_type(Q::min));
  if (fill == 2) return std::vector<typename Q::storage_type>(n, typename Q::storage_type(Q::max));
  return mixq::test::random_values<Q>(n, rng);
}

template <class AT, class WT>
void check_case(const conv_case& c, std::mt19937& rng) {
  using as = typename AT::storage_type;
  using ws = typename WT::storage_type;
  const std::size_t cin_g = c.cin / c.p.groups;
  tensor<as> x({c.batch, c.h, c.w, c.cin},
               values_for<AT>(c.batch * c.h * c.w * c.cin, c.fill, rng));
  const std::vector<std::size_t> wshape = c.layout == mk::weight_layout::oihw
                                              ? std::vector<std::size_t>{c.cout, cin_g, c.kh, c.kw}
                                              : std::vector<std::size_t>{c.cout, c.kh, c.kw, cin_g};
  tensor<ws> w(wshape, values_for<WT>(c.cout * cin_g * c.kh * c.kw, c.fill, rng));
  const auto packed = mk::packed_conv_weights<WT>::pack(w, c.layout, c.p.groups);
  const tensor<std::int32_t> ref = mk::reference_conv2d<AT, WT>(x, w, c.layout, c.p);
  for (mk::isa path : supported_paths())
    for (mk::gemm_kernel kernel : {mk::gemm_kernel::bitserial, mk::gemm_kernel::int8}) {
      mk::conv2d_params p = c.p;
      p.gemm.path = path;
      p.kernel = kernel;
      const tensor<std::int32_t> got = mk::bitserial_conv2d<AT>(x, packed, p);
      REQUIRE(got.shape() == ref.shape());
      bool same = true;
      for (std::size_t i = 0; i < ref.size(); ++i) same = same && got[i] == ref[i];
      INFO("a ", mixq::bitwidth_of<AT>().name(), " w ", mixq::bitwidth_of<WT>().name(), " path ",
           mk::isa_name(path), " kernel ", int(kernel), " x ", c.batch, "x", c.h, "x", c.w, "x",
           c.cin, " -> ", c.cout, " k ", c.kh, "x", c.kw, " s ", c.p.stride_h, " pad ", c.p.pad_h,
           "/", c.p.pad_w, " d ", c.p.dilation_h, " g ", c.p.groups, " za ",
           c.p.activation_zero_point, " padv ", c.p.pad_code(), " fill ", c.fill);
      CHECK(same);
    }
}

void check_runtime(bitwidth a, bitwidth w, const conv_case& c, std::mt19937& rng) {
  mixq::dispatch(
      [&](auto at, auto wt) {
        check_case<typename decltype(at)::type, typename decltype(wt)::type>(c, rng);
      },
      a, w);
}

int random_zero_point(bitwidth t, std::mt19937& rng) {
  const int lo = t.is_binary() ? -1 : (t.is_signed ? -(1 << (t.bits - 1)) : 0);
  const int hi = t.is_binary() ? 1 : (t.is_signed ? (1 << (t.bits - 1)) - 1 : (1 << t.bits) - 1);
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

}  // namespace

TEST_CASE("bitserial_conv2d matches the reference for every qtype pair on tiny shapes") {
  std::mt19937 rng(11);
  for (bitwidth a : all_bitwidths())
    for (bitwidth w : all_bitwidths()) {
      // Padded 3x3 with the default zero point (padding contributes 0, also for binary).
      conv_case c;
      c.h = 4, c.w = 5, c.cin = 3, c.cout = 3, c.p.pad_h = 1, c.p.pad_w = 1;
      check_runtime(a, w, c, rng);
      // An offset encoding: zero point != 0, padding holds the zero point; stride 2, batch 2.
      c.batch = 2, c.p.stride_h = 2, c.p.stride_w = 2;
      c.p.activation_zero_point = random_zero_point(a, rng);
      c.layout = mk::weight_layout::oihw;
      check_runtime(a, w, c, rng);
      // An explicit padding value different from the zero point, groups of 2.
      c.cin = 4, c.cout = 2, c.p.groups = 2, c.p.padding_value = random_zero_point(a, rng);
      check_runtime(a, w, c, rng);
      // Extreme codes (the sign planes all set, or all clear).
      conv_case e;
      e.cin = 70, e.cout = 5, e.p.pad_h = 2, e.p.pad_w = 1, e.fill = 1 + int(rng() % 2);
      e.p.activation_zero_point = random_zero_point(a, rng);
      check_runtime(a, w, e, rng);
    }
}

TEST_CASE("bitserial_conv2d matches the reference over kernels, strides, padding, dilation") {
  std::mt19937 rng(5);
  const std::vector<std::pair<bitwidth, bitwidth>> pairs = {
      {{1, false}, {1, false}}, {{1, true}, {1, true}},   {{2, false}, {2, true}},
      {{4, true}, {4, false}},  {{1, true}, {3, true}},   {{8, false}, {8, true}},
      {{2, true}, {1, true}},   {{3, false}, {1, false}}, {{5, true}, {7, false}},
      {{1, false}, {2, true}},  {{6, true}, {1, true}},   {{4, false}, {4, true}}};
  std::size_t index = 0;
  for (std::size_t k : {1, 3, 5, 7})
    for (std::size_t stride : {1, 2})
      for (std::size_t pad : {0, 1, 2, 3})
        for (std::size_t dil : {1, 2}) {
          for (int mode = 0; mode < 3; ++mode, ++index) {  // 0: dense, 1: groups=2, 2: depthwise
            conv_case c;
            c.kh = c.kw = k;
            c.p.stride_h = c.p.stride_w = stride;
            c.p.pad_h = pad, c.p.pad_w = (pad + index) % 4;
            c.p.dilation_h = dil, c.p.dilation_w = 1 + index % 2;
            c.batch = index % 2 ? 3 : 1;
            c.layout = index % 3 ? mk::weight_layout::ohwi : mk::weight_layout::oihw;
            const std::size_t ext_h = (k - 1) * dil + 1, ext_w = (k - 1) * c.p.dilation_w + 1;
            c.h = std::max<std::size_t>(1, ext_h > 2 * pad ? ext_h - 2 * pad : 1) + rng() % 4;
            c.w = std::max<std::size_t>(1, ext_w > 2 * c.p.pad_w ? ext_w - 2 * c.p.pad_w : 1) +
                  rng() % 4;
            // Channels not multiples of 64; fewer for the large kernels to keep it fast.
            const std::size_t small[] = {1, 3, 5, 7, 13}, large[] = {65, 67, 70, 130};
            const std::size_t ch = k <= 3 && index % 3 == 0 ? large[rng() % 4] : small[rng() % 5];
            if (mode == 0) c.cin = ch, c.cout = 1 + rng() % 9;
            if (mode == 1) c.cin = 2 * ch, c.cout = 2 * (1 + rng() % 4), c.p.groups = 2;
            if (mode == 2) {
              c.cin = 1 + rng() % 9, c.p.groups = c.cin;
              c.cout = c.cin * (index % 4 == 0 ? 2 : 1);  // with a channel multiplier
            }
            const auto [a, w] = pairs[index % pairs.size()];
            if (index % 2) c.p.activation_zero_point = random_zero_point(a, rng);
            if (index % 5 == 0) c.p.padding_value = random_zero_point(a, rng);
            check_runtime(a, w, c, rng);
          }
        }
}

TEST_CASE("bitserial_conv2d uses several threads with the same result") {
  std::mt19937 rng(7);
  mk::set_num_threads(2);
  conv_case c;
  c.batch = 3, c.h = 9, c.w = 7, c.cin = 67, c.cout = 13, c.p.pad_h = c.p.pad_w = 1;
  c.p.activation_zero_point = 3;
  check_runtime({4, false}, {2, true}, c, rng);
  c.cin = 6, c.cout = 6, c.p.groups = 6;
  check_runtime({1, true}, {3, true}, c, rng);
  mk::set_num_threads(1);
}

TEST_CASE("bitserial_conv2d_packed splits packing from the product") {
  std::mt19937 rng(9);
  using AT = mixq::quint<2>;
  using WT = mixq::qint<2>;
  tensor<std::uint8_t> x({2, 6, 6, 33}, mixq::test::random_values<AT>(2 * 6 * 6 * 33, rng));
  tensor<std::int8_t> w({9, 3, 3, 33}, mixq::test::random_values<WT>(9 * 9 * 33, rng));
  mk::conv2d_params p;
  p.pad_h = p.pad_w = 2, p.activation_zero_point = 1;
  const auto pw = mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi);
  const auto g = mk::conv2d_geometry_for(x.shape(), pw, p);
  mk::conv_activation_planes<AT> planes;
  mk::pack_conv_activations<AT>(x.span(), g, p.gemm, planes);
  std::vector<std::int32_t> out(g.output_size());
  mk::bitserial_conv2d_packed(planes, pw, out, p);
  const auto ref = mk::reference_conv2d<AT, WT>(x, w, mk::weight_layout::ohwi, p);
  CHECK(std::equal(out.begin(), out.end(), ref.begin()));
  // The packed rows hold the patches' codes, padded taps zero.
  CHECK(planes.group_view(0).rows == g.pixels());
  CHECK(planes.group_view(0).cols == 9 * 33);
}

TEST_CASE("the weights' GEMM layouts: made on first use by concurrent calls, shared by copies") {
  // Two threads make the first calls on fresh weights at once (one per kernel, then both on
  // the same kernel); a copy made before any call outlives the original.
  std::mt19937 rng(12);
  using AT = mixq::quint<3>;
  using WT = mixq::qint<2>;
  const tensor<std::uint8_t> x({1, 9, 9, 70}, mixq::test::random_values<AT>(9 * 9 * 70, rng));
  const tensor<std::int8_t> w({12, 3, 3, 35}, mixq::test::random_values<WT>(12 * 9 * 35, rng));
  mk::conv2d_params p;
  p.pad_h = p.pad_w = 1, p.groups = 2;
  const auto ref = mk::reference_conv2d<AT, WT>(x, w, mk::weight_layout::ohwi, p);
  for (auto [k1, k2] : {std::pair{mk::gemm_kernel::bitserial, mk::gemm_kernel::int8},
                        {mk::gemm_kernel::int8, mk::gemm_kernel::int8},
                        {mk::gemm_kernel::bitserial, mk::gemm_kernel::bitserial}}) {
    mk::packed_conv_weights<WT> copy;
    {
      const auto pw = mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi, 2);
      copy = pw;
      tensor<std::int32_t> y1, y2;
      auto run = [&](mk::gemm_kernel k, tensor<std::int32_t>& y) {
        mk::conv2d_params q = p;
        q.kernel = k;
        y = mk::bitserial_conv2d<AT>(x, pw, q);
      };
      std::thread t1(run, k1, std::ref(y1)), t2(run, k2, std::ref(y2));
      t1.join();
      t2.join();
      CHECK(std::equal(y1.begin(), y1.end(), ref.begin(), ref.end()));
      CHECK(std::equal(y2.begin(), y2.end(), ref.begin(), ref.end()));
      CHECK(pw.bitserial_weights().size() == 2);
      CHECK(pw.int8_weights().size() == 2);
    }
    for (auto k : {mk::gemm_kernel::bitserial, mk::gemm_kernel::int8}) {
      mk::conv2d_params q = p;
      q.kernel = k;
      const auto y = mk::bitserial_conv2d<AT>(x, copy, q);
      CHECK(std::equal(y.begin(), y.end(), ref.begin(), ref.end()));
    }
  }
}

TEST_CASE("conv2d_f32 matches the reference on integer-valued floats") {
  std::mt19937 rng(3);
  using Q = mixq::qint<4>;
  for (std::size_t groups : {1, 2, 6})
    for (auto layout : {mk::weight_layout::oihw, mk::weight_layout::ohwi}) {
      const std::size_t cin = 6, cout = 12, cin_g = cin / groups;
      tensor<std::int8_t> x({2, 7, 6, cin}, mixq::test::random_values<Q>(2 * 7 * 6 * cin, rng));
      const std::vector<std::size_t> ws = layout == mk::weight_layout::oihw
                                              ? std::vector<std::size_t>{cout, cin_g, 3, 3}
                                              : std::vector<std::size_t>{cout, 3, 3, cin_g};
      tensor<std::int8_t> w(ws, mixq::test::random_values<Q>(cout * cin_g * 9, rng));
      mk::conv2d_params p;
      p.groups = groups, p.pad_h = 1, p.pad_w = 2, p.stride_w = 2, p.dilation_h = 2;
      const auto ref = mk::reference_conv2d<Q, Q>(x, w, layout, p);
      tensor<float> xf(x.shape()), wf(w.shape());
      for (std::size_t i = 0; i < x.size(); ++i) xf[i] = float(x[i]);
      for (std::size_t i = 0; i < w.size(); ++i) wf[i] = float(w[i]);
      std::vector<float> out(ref.size());
      mk::conv2d_f32(xf, wf, layout, out, p);
      bool same = true;
      for (std::size_t i = 0; i < ref.size(); ++i) same = same && out[i] == float(ref[i]);
      CHECK(same);
    }
}

TEST_CASE("the reference convolution agrees with a hand-computed border case") {
  // 1x1 channel, 2x2 input, 3x3 kernel of ones, padding 1: each output is the sum of the
  // in-bounds inputs minus za per in-bounds tap plus (pad - za) per padded tap.
  using Q = mixq::quint<4>;
  tensor<std::uint8_t> x({1, 2, 2, 1}, {1, 2, 3, 4});
  tensor<std::uint8_t> w({1, 3, 3, 1}, std::vector<std::uint8_t>(9, 1));
  mk::conv2d_params p;
  p.pad_h = p.pad_w = 1, p.activation_zero_point = 2, p.padding_value = 5;
  const auto ref = mk::reference_conv2d<Q, Q>(x, w, mk::weight_layout::ohwi, p);
  // Every output sees all 4 inputs (sum 10) and 5 padded taps: 10 - 4*2 + 5*(5-2) = 17.
  for (std::size_t i = 0; i < 4; ++i) CHECK(ref[i] == 17);
  const auto pw = mk::packed_conv_weights<Q>::pack(w, mk::weight_layout::ohwi);
  const auto got = mk::bitserial_conv2d<Q>(x, pw, p);
  for (std::size_t i = 0; i < 4; ++i) CHECK(got[i] == 17);
}

TEST_CASE("bitserial_conv2d rejects bad input with typed errors") {
  using AT = mixq::quint<2>;
  using WT = mixq::qint<2>;
  tensor<std::uint8_t> x({1, 4, 4, 6}, std::vector<std::uint8_t>(96, 1));
  tensor<std::int8_t> w({4, 3, 3, 6}, std::vector<std::int8_t>(4 * 9 * 6, 1));
  const auto pw = mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi);

  // Kernel larger than the padded input (with and without dilation).
  tensor<std::uint8_t> tiny({1, 2, 2, 6}, std::vector<std::uint8_t>(24, 1));
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(tiny, pw), mixq::shape_error);
  mk::conv2d_params dil;
  dil.dilation_h = 2;
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, pw, dil), mixq::shape_error);
  CHECK_THROWS_AS((mk::reference_conv2d<AT, WT>(tiny, w, mk::weight_layout::ohwi)),
                  mixq::shape_error);

  // Channels that do not divide into groups.
  mk::conv2d_params g4;
  g4.groups = 4;
  tensor<std::int8_t> w4({4, 3, 3, 1}, std::vector<std::int8_t>(36, 1));
  const auto pw4 = mk::packed_conv_weights<WT>::pack(w4, mk::weight_layout::ohwi, 4);
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, pw4, g4), mixq::shape_error);  // 6 % 4
  CHECK_THROWS_AS(mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi, 3),
                  mixq::shape_error);  // 4 output channels % 3
  CHECK_THROWS_AS(mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi, 0),
                  mixq::shape_error);

  // Mismatched packed weights: other channel count, other groups, empty.
  tensor<std::uint8_t> x5({1, 4, 4, 5}, std::vector<std::uint8_t>(80, 1));
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x5, pw), mixq::shape_error);
  mk::conv2d_params g2;
  g2.groups = 2;
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, pw, g2), mixq::shape_error);
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, mk::packed_conv_weights<WT>{}), mixq::shape_error);
  {
    const auto g = mk::conv2d_geometry_for(x.shape(), pw, {});
    mk::conv_activation_planes<AT> planes;
    mk::pack_conv_activations<AT>(x.span(), g, {}, planes);
    tensor<std::int8_t> w1({4, 1, 1, 6}, std::vector<std::int8_t>(24, 1));
    const auto other = mk::packed_conv_weights<WT>::pack(w1, mk::weight_layout::ohwi);
    std::vector<std::int32_t> out(g.output_size());
    CHECK_THROWS_AS(mk::bitserial_conv2d_packed(planes, other, out, {}), mixq::shape_error);
  }

  // Wrong output size.
  std::vector<std::int32_t> out(3);
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, pw, std::span<std::int32_t>(out)), mixq::shape_error);
  std::vector<float> outf(3);
  tensor<float> xf(x.shape()), wf(w.shape());
  CHECK_THROWS_AS(mk::conv2d_f32(xf, wf, mk::weight_layout::ohwi, outf), mixq::shape_error);

  // Shapes and parameters.
  tensor<std::uint8_t> x3({4, 4, 6}, std::vector<std::uint8_t>(96, 1));
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x3, pw), mixq::shape_error);
  tensor<std::int8_t> w3({4, 9, 6}, std::vector<std::int8_t>(216, 1));
  CHECK_THROWS_AS(mk::packed_conv_weights<WT>::pack(w3, mk::weight_layout::ohwi),
                  mixq::shape_error);
  mk::conv2d_params s0;
  s0.stride_w = 0;
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(x, pw, s0), mixq::shape_error);

  // Values outside the types, on every packing path and on the depthwise path.
  tensor<std::uint8_t> bad = x;
  bad[50] = 4;  // not a uint2
  for (mk::isa path : supported_paths()) {
    mk::conv2d_params p;
    p.gemm.path = path;
    CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(bad, pw, p), mixq::value_error);
  }
  tensor<std::int8_t> zero_binary({1, 4, 4, 6}, std::vector<std::int8_t>(96, 1));
  zero_binary[7] = 0;  // 0 is not a binary value
  tensor<std::int8_t> wb({4, 3, 3, 6}, std::vector<std::int8_t>(4 * 9 * 6, -1));
  const auto pwb = mk::packed_conv_weights<mixq::qbinary>::pack(wb, mk::weight_layout::ohwi);
  for (mk::isa path : supported_paths()) {
    mk::conv2d_params p;
    p.gemm.path = path;
    CHECK_THROWS_AS(mk::bitserial_conv2d<mixq::qbinary>(zero_binary, pwb, p), mixq::value_error);
  }
  mk::conv2d_params dw;
  dw.groups = 6;
  tensor<std::int8_t> wd({6, 3, 3, 1}, std::vector<std::int8_t>(54, 1));
  const auto pwd = mk::packed_conv_weights<WT>::pack(wd, mk::weight_layout::ohwi, 6);
  CHECK_THROWS_AS(mk::bitserial_conv2d<AT>(bad, pwd, dw), mixq::value_error);
  tensor<std::int8_t> wbad = w;
  wbad[3] = 2;  // not an int2
  CHECK_THROWS_AS(mk::packed_conv_weights<WT>::pack(wbad, mk::weight_layout::ohwi),
                  mixq::value_error);
}

TEST_CASE("bitserial_conv2d with channels in whole 64-bit words (the word-copy packing)") {
  std::mt19937 rng(13);
  for (bitwidth a : all_bitwidths())
    for (bitwidth w : all_bitwidths()) {
      conv_case c;  // 3x3, padded, 64 channels: whole-word fragments, padded taps zeroed
      c.h = 3, c.w = 4, c.cin = 64, c.cout = 3, c.p.pad_h = 1, c.p.pad_w = 2;
      c.p.activation_zero_point = random_zero_point(a, rng);
      check_runtime(a, w, c, rng);
    }
  const std::vector<std::pair<bitwidth, bitwidth>> pairs = {
      {{1, true}, {1, true}}, {{2, false}, {2, true}}, {{8, true}, {8, false}}};
  for (auto [a, w] : pairs) {
    conv_case c;  // groups of 64 channels, stride 2, dilation 2, batch 2
    c.batch = 2, c.h = 7, c.w = 6, c.cin = 128, c.cout = 4, c.p.groups = 2;
    c.p.pad_h = c.p.pad_w = 3, c.p.stride_h = c.p.stride_w = 2, c.p.dilation_h = 2;
    c.p.padding_value = random_zero_point(a, rng);
    check_runtime(a, w, c, rng);
    conv_case d;  // 1x1 kernel, 192 channels (3 words), no padding
    d.kh = d.kw = 1, d.h = 5, d.w = 3, d.cin = 192, d.cout = 9;
    check_runtime(a, w, d, rng);
  }
}

TEST_CASE("pack_conv_activations reuses a planes buffer: stale bits never leak into padded taps") {
  std::mt19937 rng(15);
  using AT = mixq::qint<3>;
  using WT = mixq::qint<2>;
  for (std::size_t cin : {std::size_t(64), std::size_t(33)}) {
    tensor<std::int8_t> w({5, 3, 3, cin}, mixq::test::random_values<WT>(5 * 9 * cin, rng));
    const auto pw = mk::packed_conv_weights<WT>::pack(w, mk::weight_layout::ohwi);
    mk::conv_activation_planes<AT> planes;
    for (int round = 0; round < 2; ++round) {
      // Round 0: a 6x7 image, no padding, all-ones codes, 4x5 outputs; round 1 reuses the
      // buffer for a 4x5 image padded by 1 (4x5 outputs again), where the padded taps sit on
      // round 0's set bits.
      mk::conv2d_params p;
      p.activation_zero_point = -2;
      const std::size_t h = round == 0 ? 6 : 4, wd = round == 0 ? 7 : 5;
      if (round == 1) p.pad_h = p.pad_w = 1;
      tensor<std::int8_t> x({1, h, wd, cin}, mixq::test::random_values<AT>(h * wd * cin, rng));
      if (round == 0)
        for (auto& v : x) v = -1;  // code 0b111
      const auto g = mk::conv2d_geometry_for(x.shape(), pw, p);
      mk::pack_conv_activations<AT>(x.span(), g, p.gemm, planes);
      std::vector<std::int32_t> out(g.output_size());
      mk::bitserial_conv2d_packed(planes, pw, out, p);
      const auto ref = mk::reference_conv2d<AT, WT>(x, w, mk::weight_layout::ohwi, p);
      CAPTURE(cin);
      CAPTURE(round);
      CHECK(std::equal(out.begin(), out.end(), ref.begin()));
    }
  }
}
