// Integer models: run() against a plain float reference that decodes the same codes (every
// layer kind, dense/grouped/depthwise convs, strides, padding, weight zero points, signed,
// unsigned and binary weights, all bit-widths), model files (round trip, every truncation,
// flipped bytes, wrong version, trailing bytes, lying sizes) and atomic saving.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>

#include "mixq/deploy/model_file.hpp"
#include "mixq/quant/code_tensor.hpp"

using namespace mixq;
using namespace mixq::deploy;
namespace fs = std::filesystem;

namespace {

using quant::detail::code_max;
using quant::detail::code_min;

layer random_quantized(std::mt19937& rng, std::uint32_t in, std::uint32_t out, std::uint32_t k,
                       std::uint32_t stride, std::uint32_t pad, std::uint32_t groups, bitwidth wt,
                       int abits, bool per_channel, bool zero_points, bool linear = false) {
  layer l;
  l.kind = op_kind::quantized;
  l.name = "q";
  l.is_linear = linear;
  l.window = linear ? 1 : k;
  l.stride = stride;
  l.padding = pad;
  l.in_channels = in, l.out_channels = out, l.groups = groups;
  l.weight_type = wt;
  std::uniform_int_distribution<int> code(code_min(wt), code_max(wt));
  l.weight_codes.resize(std::size_t(out) * l.window * l.window * (in / groups));
  for (auto& c : l.weight_codes) {
    int v = code(rng);
    if (wt.is_binary() && v == 0) v = 1;
    c = v;
  }
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const std::size_t wc = per_channel ? out : 1;
  for (std::size_t c = 0; c < wc; ++c) {
    l.weight_scale.push_back(0.1f * u(rng));
    l.weight_zero_point.push_back(zero_points ? 0.5f * float(code_max(wt) + code_min(wt)) : 0.0f);
  }
  for (std::size_t c = 0; c < out; ++c) l.mul.push_back(u(rng)), l.add.push_back(u(rng) - 1.0f);
  l.input.bits = abits;
  // PACT grids and LSQ step grids, alternately.
  const float alpha = 2.0f * u(rng);
  l.input.grid = rng() % 2 ? quant::activation_grid::pact(alpha)
                           : quant::activation_grid::step(alpha / float((1 << abits) - 1));
  return l;
}

// The reference: NHWC double tensors, each layer by definition.
struct ref_tensor {
  std::vector<std::size_t> shape;  // NHWC or NF
  std::vector<double> v;
};

ref_tensor reference_layer(const layer& l, const ref_tensor& x) {
  ref_tensor y;
  switch (l.kind) {
    case op_kind::relu:
      y = x;
      for (auto& a : y.v) a = std::max(a, 0.0);
      return y;
    case op_kind::affine: {
      y = x;
      const std::size_t c = x.shape.back();
      for (std::size_t i = 0; i < y.v.size(); ++i)
        y.v[i] = double(l.mul[i % c]) * x.v[i] + double(l.add[i % c]);
      return y;
    }
    case op_kind::flatten:
      y = x;
      y.shape = {x.shape[0], x.v.size() / x.shape[0]};
      return y;
    case op_kind::global_avg_pool: {
      const std::size_t n = x.shape[0], hw = x.shape[1] * x.shape[2], c = x.shape[3];
      y.shape = {n, c};
      y.v.assign(n * c, 0.0);
      for (std::size_t b = 0; b < n; ++b)
        for (std::size_t p = 0; p < hw; ++p)
          for (std::size_t ch = 0; ch < c; ++ch)
            y.v[b * c + ch] += x.v[(b * hw + p) * c + ch] / double(hw);
      return y;
    }
    default:
      break;
  }
  const bool quant = l.kind == op_kind::quantized;
  const std::size_t n = x.shape[0];
  const std::size_t h = quant && l.is_linear ? 1 : x.shape[1];
  const std::size_t w = quant && l.is_linear ? 1 : x.shape[2];
  const std::size_t c = quant && l.is_linear ? x.shape[1] : x.shape[3];
  const std::size_t k = l.window, s = l.stride, p = l.padding;
  const std::size_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  const std::size_t oc = quant ? l.out_channels : c;
  y.shape = quant && l.is_linear ? std::vector<std::size_t>{n, oc}
                                 : std::vector<std::size_t>{n, oh, ow, oc};
  y.v.assign(n * oh * ow * oc, 0.0);
  const std::size_t groups = quant ? l.groups : c, cin_g = c / groups, opg = oc / groups;
  for (std::size_t b = 0; b < n; ++b)
    for (std::size_t oy = 0; oy < oh; ++oy)
      for (std::size_t ox = 0; ox < ow; ++ox)
        for (std::size_t o = 0; o < oc; ++o) {
          double acc = l.kind == op_kind::max_pool ? -INFINITY : 0.0;
          const std::size_t g = o / opg;
          for (std::size_t ky = 0; ky < k; ++ky)
            for (std::size_t kx = 0; kx < k; ++kx) {
              const long iy = long(oy * s + ky) - long(p), ix = long(ox * s + kx) - long(p);
              if (iy < 0 || ix < 0 || iy >= long(h) || ix >= long(w)) continue;
              const std::size_t base = ((b * h + std::size_t(iy)) * w + std::size_t(ix)) * c;
              if (!quant) {
                const double a = x.v[base + o];
                acc = l.kind == op_kind::max_pool ? std::max(acc, a) : acc + a / double(k * k);
                continue;
              }
              for (std::size_t ci = 0; ci < cin_g; ++ci) {
                // The activation on its grid, the weight decoded from its code.
                const float L = float((1 << l.input.bits) - 1), v = l.input.grid.value;
                const float xv = float(x.v[base + g * cin_g + ci]);
                double code, a;
                if (l.input.grid.kind == quant::activation_grid_kind::pact) {
                  // PACT's grid by its definition: round(L * clip(x, 0, alpha) / alpha).
                  code = std::nearbyint(L * (std::clamp(xv, 0.0f, v) / v));
                  a = code * double(v) / double(L);
                } else {
                  // LSQ's unsigned grid: round(clip(x / step, 0, L)), value step * code.
                  code = std::nearbyint(std::clamp(xv / v, 0.0f, L));
                  a = code * double(v);
                }
                const std::size_t wc = l.weight_scale.size() > 1 ? o : 0;
                const double wv = double(l.weight_scale[wc]) *
                                  (double(l.weight_codes[((o * k + ky) * k + kx) * cin_g + ci]) -
                                   double(l.weight_zero_point[wc]));
                acc += a * wv;
              }
            }
          y.v[((b * oh + oy) * ow + ox) * oc + o] =
              quant ? double(l.mul[o]) * acc + double(l.add[o]) : acc;
        }
  return y;
}

// NHWC (or NF) float tensor as the NCHW (or NF) batch run() takes.
tensor<float> to_nchw(const tensor<float>& x) {
  if (x.shape().size() == 2) return x;
  const std::size_t n = x.shape()[0], h = x.shape()[1], w = x.shape()[2], c = x.shape()[3];
  tensor<float> y({n, c, h, w});
  for (std::size_t b = 0; b < n; ++b)
    for (std::size_t ch = 0; ch < c; ++ch)
      for (std::size_t i = 0; i < h * w; ++i)
        y[(b * c + ch) * h * w + i] = x[(b * h * w + i) * c + ch];
  return y;
}

ref_tensor as_ref(const tensor<float>& x) {
  ref_tensor r{std::vector<std::size_t>(x.shape().begin(), x.shape().end()), {}};
  r.v.assign(x.begin(), x.end());
  return r;
}

// Runs the layers one at a time, each as its own integer model, on the previous layer's
// output, comparing every layer with the reference on the same input (so the activation
// codes are the same); returns the last output.
tensor<float> check_layer_by_layer(const std::vector<layer>& layers, const tensor<float>& nchw,
                                   double tol) {
  tensor<float> cur = nchw;
  bool first = true;
  for (const auto& l : layers) {
    integer_model one({l});
    const tensor<float> y = one.run_reference(first ? cur : to_nchw(cur));
    const ref_tensor want =
        reference_layer(l, as_ref(first ? integer_model().run_reference(cur) : cur));
    REQUIRE(y.size() == want.v.size());
    REQUIRE(std::vector<std::size_t>(y.shape().begin(), y.shape().end()) == want.shape);
    for (std::size_t i = 0; i < y.size(); ++i)
      REQUIRE(std::abs(double(y[i]) - want.v[i]) <= tol * (1.0 + std::abs(want.v[i])));
    cur = y;
    first = false;
  }
  return cur;
}

tensor<float> random_images(std::mt19937& rng, shape_t s) {
  tensor<float> t(std::move(s));
  std::uniform_real_distribution<float> u(-0.2f, 1.2f);
  for (auto& v : t) v = u(rng);
  return t;
}

// A network with every layer kind; bits and weight types vary with the arguments.
std::vector<layer> every_kind_network(std::mt19937& rng, bitwidth wt, int abits, bool zp) {
  std::vector<layer> ls;
  ls.push_back(random_quantized(rng, 3, 8, 3, 1, 1, 1, wt, abits, true, zp));
  ls.push_back(layer::of_kind(op_kind::relu));
  ls.push_back(layer::pool(op_kind::max_pool, 2, 2));
  ls.push_back(random_quantized(rng, 8, 8, 3, 2, 1, 8, wt, abits, false, zp));  // depthwise
  layer bn = layer::affine({}, {});
  for (int c = 0; c < 8; ++c) bn.mul.push_back(0.5f + 0.1f * float(c)), bn.add.push_back(0.1f);
  ls.push_back(bn);
  ls.push_back(layer::of_kind(op_kind::relu));
  ls.push_back(random_quantized(rng, 8, 6, 1, 1, 0, 2, wt, abits, true, zp));  // grouped 1x1
  ls.push_back(layer::pool(op_kind::avg_pool, 3, 1, 1));
  ls.push_back(layer::of_kind(op_kind::relu));
  ls.push_back(layer::of_kind(op_kind::flatten));
  ls.push_back(random_quantized(rng, 6 * 3 * 3, 5, 1, 1, 0, 1, wt, abits, true, zp, true));
  return ls;
}

void fix_checksum(std::vector<std::uint8_t>& b) {
  const auto sum = deploy::detail::fnv1a(std::span(b).first(b.size() - 8));
  for (int i = 0; i < 8; ++i) b[b.size() - 8 + std::size_t(i)] = std::uint8_t(sum >> (8 * i));
}

struct temp_dir {
  fs::path path =
      fs::temp_directory_path() / ("mixq_deploy_test_" + std::to_string(std::random_device{}()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("integer model matches the float reference for every weight type and bits") {
  std::mt19937 rng(7);
  const tensor<float> images = random_images(rng, {3, 3, 12, 10});
  for (int wb = 1; wb <= 8; ++wb)
    for (bool wsigned : {false, true})
      for (int ab : {1, 2, 3, 4, 8}) {
        const bitwidth wt{wb, wsigned};
        CAPTURE(wt.name());
        CAPTURE(ab);
        const bool zp = !wt.is_binary() && !wsigned;  // offset (DoReFa-like) unsigned grids
        auto ls = every_kind_network(rng, wt, ab, zp);
        integer_model m(ls);
        const auto got = m.run_reference(images);
        const auto chained = check_layer_by_layer(ls, images, 1e-4);  // float output map
        for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == chained[i]);
        REQUIRE(m.report().size() == ls.size());
        CHECK(m.report()[0].w_bits == wb);
        CHECK(m.report()[3].kernel == "direct");
      }
}

TEST_CASE("integer model threads give identical outputs") {
  std::mt19937 rng(8);
  const auto ls = every_kind_network(rng, {2, false}, 2, true);
  const auto images = random_images(rng, {4, 3, 12, 10});
  integer_model a(ls), b(ls);
  a.set_threads(1);
  b.set_threads(2);
  const auto ya = a.run(images), yb = b.run(images);
  for (std::size_t i = 0; i < ya.size(); ++i) REQUIRE(ya[i] == yb[i]);
}

TEST_CASE("integer model rejects inconsistent layers and inputs") {
  std::mt19937 rng(9);
  auto good = random_quantized(rng, 4, 4, 3, 1, 1, 1, {2, false}, 2, true, true);
  auto bad = good;
  bad.weight_codes.pop_back();
  CHECK_THROWS_AS(integer_model({bad}), shape_error);
  bad = good, bad.weight_codes[0] = 9;
  CHECK_THROWS_AS(integer_model({bad}), value_error);
  bad = good, bad.input.bits = 9;
  CHECK_THROWS_AS(integer_model({bad}), bits_error);
  bad = good, bad.weight_scale[1] = -1.0f;
  CHECK_THROWS_AS(integer_model({bad}), value_error);
  bad = good, bad.groups = 3;
  CHECK_THROWS_AS(integer_model({bad}), shape_error);
  bad = good, bad.mul.pop_back();
  CHECK_THROWS_AS(integer_model({bad}), shape_error);
  CHECK_THROWS_AS(integer_model({layer::pool(op_kind::max_pool, 2, 2, 2)}), shape_error);
  integer_model m({good});
  CHECK_THROWS_AS(m.run(tensor<float>({1, 3, 5, 5})), shape_error);  // 3 channels, not 4
  CHECK_THROWS_AS(m.run(tensor<float>({1, 4, 2, 2, 1})), shape_error);
  integer_model fc({random_quantized(rng, 8, 2, 1, 1, 0, 1, {4, true}, 4, false, false, true)});
  CHECK_THROWS_AS(fc.run(tensor<float>({1, 2, 2, 2})), shape_error);  // needs flatten
}

TEST_CASE("model files round-trip to bit-identical outputs") {
  std::mt19937 rng(10);
  temp_dir dir;
  const auto images = random_images(rng, {2, 3, 12, 10});
  for (bitwidth wt : {bitwidth{1, true}, bitwidth{3, true}, bitwidth{2, false}, bitwidth{8, false},
                      bitwidth{8, true}}) {
    integer_model m(every_kind_network(rng, wt, 3, !wt.is_signed));
    const auto path = dir.path / "m.mixq";
    save(m, path);
    integer_model back = load(path);
    REQUIRE(back.layers().size() == m.layers().size());
    for (std::size_t i = 0; i < m.layers().size(); ++i)
      CHECK(back.layers()[i].weight_codes == m.layers()[i].weight_codes);
    const auto y0 = m.run(images), y1 = back.run(images);
    for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
    // Headers are small: magic, version, op count and checksum (21 bytes), then per op its
    // kind and name (2 bytes + the name) and the fields of its kind: for a quantized layer
    // flags, bits, six small varints and the grid value (16 bytes), else at most 4.
    std::size_t headers = 21;
    for (const layer& l : m.layers())
      headers += 2 + l.name.size() + (l.kind == op_kind::quantized ? 16 : 4);
    CHECK(fs::file_size(path) <= m.payload_bytes() + headers);
    CHECK(!fs::exists(path.string() + ".tmp"));
  }
}

TEST_CASE("damaged model files raise format_error") {
  std::mt19937 rng(11);
  integer_model m(every_kind_network(rng, {2, false}, 2, true));
  const auto bytes = serialize(m);
  for (std::size_t len = 0; len < bytes.size(); ++len)
    CHECK_THROWS_AS(deserialize(std::span(bytes).first(len)), format_error);
  for (std::size_t i = 0; i < bytes.size(); i += 7) {
    auto b = bytes;
    b[i] ^= 0x10;
    CHECK_THROWS_AS(deserialize(b), format_error);
  }
  auto extra = bytes;
  extra.insert(extra.end() - 8, 0);
  CHECK_THROWS_AS(deserialize(extra), format_error);

  // A wrong version is named even though the checksum would also fail.
  auto v = bytes;
  v[8] = 99;
  try {
    (void)deserialize(v);
    FAIL("expected format_error");
  } catch (const format_error& e) {
    CHECK(std::string(e.what()).find("version 99") != std::string::npos);
  }

  // A lying op count with a valid checksum fails before allocating: over the limit, more
  // than the bytes could hold, one more op than there is, an overlong varint.
  REQUIRE(bytes[12] == m.layers().size());  // a one-byte varint
  for (const std::vector<std::uint8_t>& count :
       {std::vector<std::uint8_t>{0xff, 0xff, 0xff, 0xff, 0x0f},
        std::vector<std::uint8_t>{0xa0, 0x8d, 0x06}, std::vector<std::uint8_t>{0x0c},
        std::vector<std::uint8_t>{0x8b, 0x80, 0x80, 0x80, 0x80, 0x00},
        std::vector<std::uint8_t>{0x8b, 0x80, 0x80, 0x80, 0x10}}) {
    auto lie = bytes;
    lie.erase(lie.begin() + 12);
    lie.insert(lie.begin() + 12, count.begin(), count.end());
    fix_checksum(lie);
    CHECK_THROWS_AS(deserialize(lie), format_error);
  }
  {
    auto ok = bytes;  // the same count as a (longer) varint still loads
    ok.erase(ok.begin() + 12);
    ok.insert(ok.begin() + 12, {0x8b, 0x00});
    fix_checksum(ok);
    CHECK_NOTHROW((void)deserialize(ok));
  }

  // Inconsistent fields with a valid checksum in a one-layer file: unknown flags, weight or
  // input bits over 8, no groups, an unknown grid... each a format_error naming the problem.
  layer single = random_quantized(rng, 2, 2, 1, 1, 0, 1, {2, false}, 2, false, false);
  single.input.grid.kind = quant::activation_grid_kind::pact;
  const integer_model one({single});
  const auto good = serialize(one);
  // magic, version, count, kind, name length, "q": flags at 16, bits at 17, then window,
  // stride, padding, in, out, groups (one byte each here) and the grid value at 24..27.
  REQUIRE(good[14] == 1);
  REQUIRE(good[15] == 'q');
  auto patched = [&](std::size_t at, std::uint8_t v) {
    auto b = good;
    b[at] = v;
    fix_checksum(b);
    return b;
  };
  auto message = [](const std::vector<std::uint8_t>& b) {
    try {
      (void)deserialize(b);
    } catch (const format_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  REQUIRE(good[16] == 0);  // unsigned, PACT, per-tensor, convolution
  CHECK(message(good) == "no error");
  CHECK(message(patched(16, 0x10)).find("unknown flags") != std::string::npos);
  CHECK(message(patched(17, std::uint8_t((good[17] & 0xf0) | 0x0f))).find("weight bits 16") !=
        std::string::npos);
  CHECK(message(patched(17, std::uint8_t((good[17] & 0x0f) | 0xf0))).find("activation bits 16") !=
        std::string::npos);
  CHECK(message(patched(23, 0)).find("groups") != std::string::npos);
  {
    auto b = good;  // a NaN grid value
    b[24] = 0, b[25] = 0, b[26] = 0xc0, b[27] = 0x7f;
    fix_checksum(b);
    CHECK(message(b).find("clip value nan is invalid") != std::string::npos);
    b[16] = 4;  // the same on an LSQ step grid
    fix_checksum(b);
    CHECK(message(b).find("step nan is invalid") != std::string::npos);
  }
  CHECK(message(patched(13, 11)).find("unknown kind 11") != std::string::npos);
  CHECK(message(patched(13, 0)).find("unknown kind 0") != std::string::npos);
  {
    auto b = good;  // a layer name over the limit
    b[14] = 0x81, b[15] = 0x40;
    fix_checksum(b);
    CHECK(message(b).find("exceeds 4096") != std::string::npos);
    layer named = single;  // and save refuses to write such a name
    named.name.assign(4097, 'n');
    CHECK_THROWS_AS((void)serialize(integer_model({named})), value_error);
  }

  CHECK_THROWS_AS(load("/nonexistent/dir/model.mixq"), io_error);
}

TEST_CASE("version 2 files (the writer before version 3) still load, and are checked") {
  std::mt19937 rng(13);
  const auto images = random_images(rng, {2, 3, 12, 10});
  for (bitwidth wt : {bitwidth{1, true}, bitwidth{3, true}, bitwidth{8, false}}) {
    auto ls = every_kind_network(rng, wt, 3, !wt.is_signed);
    for (layer& l : ls)  // version 2 holds PACT grids only
      if (l.kind == op_kind::quantized) l.input.grid.kind = quant::activation_grid_kind::pact;
    integer_model m(ls);
    const auto v2 = deploy::detail::serialize_v2(m);
    REQUIRE(v2[8] == 2);
    const auto v3 = serialize(m);
    CHECK(v3[8] == 3);
    CHECK(v3.size() < v2.size());
    integer_model back = deserialize(v2);
    REQUIRE(back.layers().size() == m.layers().size());
    for (std::size_t i = 0; i < m.layers().size(); ++i) {
      CHECK(back.layers()[i].weight_codes == m.layers()[i].weight_codes);
      CHECK(back.layers()[i].input.grid == m.layers()[i].input.grid);
    }
    const auto y0 = m.run(images), y1 = back.run(images);
    for (std::size_t i = 0; i < y0.size(); ++i) REQUIRE(y0[i] == y1[i]);
    // Re-saved, it is a version 3 file with the same bytes as the model's own.
    CHECK(serialize(back) == v3);
    for (std::size_t len = 0; len < v2.size(); len += 3)
      CHECK_THROWS_AS(deserialize(std::span(v2).first(len)), format_error);
    auto lie = v2;  // a lying u32 layer count with a valid checksum
    lie[12] = lie[13] = lie[14] = lie[15] = 0xff;
    fix_checksum(lie);
    CHECK_THROWS_AS(deserialize(lie), format_error);
  }
  // Version 2 cannot hold an LSQ step grid.
  integer_model lsq({random_quantized(rng, 2, 2, 1, 1, 0, 1, {2, false}, 2, false, false)});
  while (lsq.layers()[0].input.grid.kind != quant::activation_grid_kind::step)
    lsq = integer_model({random_quantized(rng, 2, 2, 1, 1, 0, 1, {2, false}, 2, false, false)});
  CHECK_THROWS_AS((void)deploy::detail::serialize_v2(lsq), value_error);
}

TEST_CASE("a failed save leaves the existing file untouched") {
  std::mt19937 rng(12);
  temp_dir dir;
  const auto path = dir.path / "m.mixq";
  integer_model small({random_quantized(rng, 2, 2, 1, 1, 0, 1, {2, false}, 2, false, false)});
  save(small, path);
  const auto before = serialize(small);
  integer_model big(every_kind_network(rng, {8, false}, 8, true));

  // The temporary file cannot be created (a directory is in the way).
  fs::create_directory(path.string() + ".tmp");
  CHECK_THROWS_AS(save(big, path), io_error);
  fs::remove(path.string() + ".tmp");

  // The disk fills up half-way (a file size limit makes write() fail with EFBIG).
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  getrlimit(RLIMIT_FSIZE, &old);
  rlimit lim = old;
  lim.rlim_cur = 64;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  bool threw = false;
  try {
    save(big, path);
  } catch (const io_error&) {
    threw = true;
  }
  setrlimit(RLIMIT_FSIZE, &old);
  CHECK(threw);
  CHECK(!fs::exists(path.string() + ".tmp"));

  std::ifstream in(path, std::ios::binary);
  std::vector<std::uint8_t> after((std::istreambuf_iterator<char>(in)), {});
  CHECK(after == before);
  CHECK_THROWS_AS(save(small, dir.path / "no" / "such" / "dir.mixq"), io_error);
}
