// integer_model: a compiled network whose convolutions and fully connected layers run on
// integer codes with the bit-serial / int8 kernels, and whose other layers (ReLU, pools,
// unfolded batch norm) run in float between them; run() is batched, threaded, and reports
// the time, kernel and bits of every layer.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_conv2d.hpp"
#include "mixq/kernels/lowbit_gemm.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::deploy {

enum class op_kind : std::uint32_t {
  quantized = 1,  // convolution or fully connected layer on integer codes
  affine = 2,     // y[c] = mul[c] * x + add[c] (a batch norm not folded into a layer)
  relu = 3,
  max_pool = 4,
  avg_pool = 5,  // divides by window^2, padded taps count as 0 (as autodiff::avg_pool2d)
  global_avg_pool = 6,
  flatten = 7,
};

inline const char* op_name(op_kind k) {
  switch (k) {
    case op_kind::quantized:
      return "quantized";
    case op_kind::affine:
      return "affine";
    case op_kind::relu:
      return "relu";
    case op_kind::max_pool:
      return "max_pool";
    case op_kind::avg_pool:
      return "avg_pool";
    case op_kind::global_avg_pool:
      return "global_avg_pool";
    case op_kind::flatten:
      return "flatten";
  }
  return "unknown";
}

/// How a quantized layer turns its float input into unsigned codes: PACT's one-sided grid,
/// code = round(L * clip(x, 0, alpha) / alpha) (half to even), L = 2^bits - 1, value =
/// (alpha / L) * code; the same arithmetic as quant::pact_codes, so codes agree bit for bit.
struct activation_encoding {
  int bits = 8;
  float alpha = 1.0f;

  int max_code() const noexcept { return (1 << bits) - 1; }
  float scale() const noexcept { return alpha / float(max_code()); }
  std::uint8_t code(float x) const noexcept {
    const float levels = float(max_code());
    const float u = std::clamp(x, 0.0f, alpha) / alpha;
    return static_cast<std::uint8_t>(std::clamp(std::nearbyint(levels * u), 0.0f, levels));
  }
  void validate(const std::string& who) const {
    if (bits < 1 || bits > 8)
      throw bits_error(mixq::detail::cat(who, ": activation bits ", bits, ": expected 1..8"));
    if (!(alpha > 0.0f) || !std::isfinite(alpha))
      throw value_error(mixq::detail::cat(who, ": activation clip value ", alpha,
                                          " is invalid: expected a finite value > 0"));
  }
};

/// One layer of an integer model. Fields a kind does not use stay empty.
struct layer {
  op_kind kind = op_kind::relu;
  std::string name;  // the source module's name, for reports

  // Pools: square window, stride, zero/-inf padding. Quantized convs: kernel side, stride,
  // padding.
  std::uint32_t window = 0, stride = 1, padding = 0;

  // affine, and the output map of a quantized layer (bias and a folded batch norm):
  // y[c] = mul[c] * (real-valued accumulator) + add[c].
  std::vector<float> mul, add;

  // Quantized layers. Linear layers are 1x1 convolutions on a 1x1 image.
  bool is_linear = false;
  std::uint32_t in_channels = 0, out_channels = 0, groups = 1;
  bitwidth weight_type{8, false};
  /// Weight codes, OHWI ([out][kh][kw][in/groups]); for linear layers [out][in].
  std::vector<std::int32_t> weight_codes;
  /// Weight value = weight_scale[c] * (code - weight_zero_point[c]); one entry per output
  /// channel, or a single entry for the whole tensor.
  std::vector<float> weight_scale, weight_zero_point;
  activation_encoding input;

  /// Weight values (without padding or bias).
  std::size_t weight_count() const noexcept { return weight_codes.size(); }

  static layer of_kind(op_kind k, std::string name = {}) {
    layer l;
    l.kind = k;
    l.name = std::move(name);
    return l;
  }
  static layer pool(op_kind k, std::uint32_t window, std::uint32_t stride,
                    std::uint32_t padding = 0) {
    layer l = of_kind(k);
    l.window = window, l.stride = stride, l.padding = padding;
    return l;
  }
  static layer affine(std::vector<float> mul, std::vector<float> add) {
    layer l = of_kind(op_kind::affine);
    l.mul = std::move(mul), l.add = std::move(add);
    return l;
  }
};

/// Time, kernel and bits of one layer in the last run().
struct layer_report {
  std::string name;
  op_kind kind;
  std::string kernel;  // "bitserial", "int8", "depthwise_direct", "float"
  int w_bits = 0, a_bits = 0;
  double seconds = 0;
};

namespace detail {
using mixq::detail::cat;

/// The packed weights of one quantized layer, type-erased over the weight qtype.
struct packed_layer {
  virtual ~packed_layer() = default;
  /// out (NHWC int32) = conv of the input codes (NHWC uint8 of `a_bits`) with the weights.
  virtual void run(const tensor<std::uint8_t>& codes, int a_bits, std::span<std::int32_t> out,
                   const kernels::conv2d_params& p) const = 0;
};

template <quantized_type WT>
struct packed_layer_of final : packed_layer {
  kernels::packed_conv_weights<WT> w;
  void run(const tensor<std::uint8_t>& codes, int a_bits, std::span<std::int32_t> out,
           const kernels::conv2d_params& p) const override {
    dispatch(
        [&](auto tag) {
          using AT = typename decltype(tag)::type;
          // Activations are unsigned codes; dispatch also names the signed types.
          if constexpr (!AT::is_signed) kernels::bitserial_conv2d<AT>(codes, w, out, p);
        },
        bitwidth{a_bits, false});
  }
};

/// Integer convolution by direct loops over NHWC codes, vectorised across channels, for the
/// shapes the packed GEMM handles badly: depthwise layers and short patches (a first layer
/// reading one channel has 9 values per patch, which the bit-serial GEMM pads to 512 bits).
/// Weights are laid out [group][tap][cin/groups][out/groups] (depthwise with one output per
/// channel: [tap][channel]). Padded taps are code 0 and add nothing.
struct direct_conv_weights {
  std::vector<std::int32_t> w;
  std::size_t taps = 0, cin_g = 0, opg = 0, groups = 1;
  bool per_channel_depthwise() const noexcept { return cin_g == 1 && opg == 1 && groups > 1; }
};

/// `zero2[c]` is twice output channel c's weight zero point (an integer): the weights are
/// stored as 2 * (code - zero point), so the zero-point correction costs nothing and the
/// accumulator is twice the real-valued one.
inline direct_conv_weights make_direct_weights(const std::vector<std::int32_t>& ohwi,
                                               std::size_t out, std::size_t k, std::size_t cin_g,
                                               std::size_t groups,
                                               const std::vector<std::int32_t>& zero2) {
  direct_conv_weights d;
  d.taps = k * k, d.cin_g = cin_g, d.opg = out / groups, d.groups = groups;
  d.w.resize(ohwi.size());
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t t = 0; t < d.taps; ++t)
      for (std::size_t ci = 0; ci < cin_g; ++ci) {
        const std::size_t gi = o / d.opg, j = o % d.opg;
        const std::int32_t v = 2 * ohwi[(o * d.taps + t) * cin_g + ci] - zero2[o];
        if (d.per_channel_depthwise())
          d.w[t * out + o] = v;
        else
          d.w[((gi * d.taps + t) * cin_g + ci) * d.opg + j] = v;
      }
  return d;
}

/// Row-major (h, w, c) window geometry for the float ops and the code sums.
struct window_geometry {
  std::size_t n, h, w, c, oh, ow, k, stride, pad;
};

inline window_geometry make_window(const shape_t& s, std::size_t k, std::size_t stride,
                                   std::size_t pad, const std::string& who) {
  if (s.size() != 4)
    throw shape_error(cat(who, ": input must be [N, H, W, C], got ", shape_string(s)));
  if (k == 0 || stride == 0 || s[1] + 2 * pad < k || s[2] + 2 * pad < k)
    throw shape_error(cat(who, ": window ", k, " stride ", stride, " padding ", pad,
                          " does not fit an input of ", s[1], "x", s[2]));
  return {s[0],
          s[1],
          s[2],
          s[3],
          (s[1] + 2 * pad - k) / stride + 1,
          (s[2] + 2 * pad - k) / stride + 1,
          k,
          stride,
          pad};
}

inline void direct_conv(const std::uint8_t* codes, const window_geometry& g,
                        const direct_conv_weights& d, std::int32_t* out, std::size_t threads) {
  const std::size_t oc = d.opg * d.groups;
  kernels::default_thread_pool().parallel_for(
      g.n * g.oh,
      [&](std::size_t begin, std::size_t end) {
        for (std::size_t r = begin; r < end; ++r) {
          const std::size_t b = r / g.oh, oy = r % g.oh;
          for (std::size_t ox = 0; ox < g.ow; ++ox) {
            std::int32_t* o = out + (r * g.ow + ox) * oc;
            std::fill(o, o + oc, 0);
            for (std::size_t ky = 0; ky < g.k; ++ky) {
              const long iy = long(oy * g.stride + ky) - long(g.pad);
              if (iy < 0 || iy >= long(g.h)) continue;
              for (std::size_t kx = 0; kx < g.k; ++kx) {
                const long ix = long(ox * g.stride + kx) - long(g.pad);
                if (ix < 0 || ix >= long(g.w)) continue;
                const std::uint8_t* a =
                    codes + ((b * g.h + std::size_t(iy)) * g.w + std::size_t(ix)) * g.c;
                const std::size_t tap = ky * g.k + kx;
                if (d.per_channel_depthwise()) {
                  const std::int32_t* w = d.w.data() + tap * oc;
                  for (std::size_t c = 0; c < oc; ++c) o[c] += std::int32_t(a[c]) * w[c];
                  continue;
                }
                for (std::size_t gi = 0; gi < d.groups; ++gi)
                  for (std::size_t ci = 0; ci < d.cin_g; ++ci) {
                    const std::int32_t av = a[gi * d.cin_g + ci];
                    const std::int32_t* w =
                        d.w.data() + ((gi * d.taps + tap) * d.cin_g + ci) * d.opg;
                    std::int32_t* og = o + gi * d.opg;
                    for (std::size_t j = 0; j < d.opg; ++j) og[j] += av * w[j];
                  }
              }
            }
          }
        }
      },
      threads);
}
}  // namespace detail

/// A compiled network: run() maps a float batch [N, C, H, W] (the float model's input layout)
/// to its outputs [N, classes]; internally activations are NHWC.
class integer_model {
 public:
  /// Patches (kh * kw * cin/groups values) shorter than this run the direct loops.
  static constexpr std::size_t direct_patch_limit = 32;

  integer_model() = default;
  explicit integer_model(std::vector<layer> layers) : layers_(std::move(layers)) { prepare(); }

  const std::vector<layer>& layers() const noexcept { return layers_; }
  /// The per-layer report of the last run().
  const std::vector<layer_report>& report() const noexcept { return report_; }

  /// Threads for the kernels (0 = the library pool's size, the default).
  void set_threads(std::size_t n) noexcept { threads_ = n; }

  /// Logits [N, outputs] of a float batch [N, C, H, W].
  tensor<float> run(const tensor<float>& batch) {
    if (batch.shape().size() != 4 && batch.shape().size() != 2)
      throw shape_error(
          detail::cat("integer_model::run: input must be [N, C, H, W] or [N, F], got ",
                      shape_string(batch.shape())));
    tensor<float> x = to_nhwc(batch);
    report_.assign(layers_.size(), {});
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      x = apply(i, x);
      report_[i].seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return x;
  }

  /// Bytes of packed weights at their bit-widths plus float parameters (what a file stores
  /// besides headers).
  std::size_t payload_bytes() const {
    std::size_t bytes = 0;
    for (const auto& l : layers_) {
      bytes += (l.weight_codes.size() * std::size_t(l.weight_type.bits) + 7) / 8;
      bytes +=
          4 * (l.mul.size() + l.add.size() + l.weight_scale.size() + l.weight_zero_point.size());
    }
    return bytes;
  }

 private:
  // Checks every layer and packs the quantized layers' weights.
  void prepare() {
    packed_.clear();
    packed_.resize(layers_.size());
    maps_.assign(layers_.size(), {});
    direct_.assign(layers_.size(), nullptr);
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const layer& l = layers_[i];
      const std::string who = detail::cat("integer_model layer ", i, " (", op_name(l.kind), ")");
      switch (l.kind) {
        case op_kind::quantized:
          prepare_quantized(i, who);
          break;
        case op_kind::affine:
          if (l.mul.empty() || l.mul.size() != l.add.size())
            throw shape_error(detail::cat(who, ": ", l.mul.size(), " scales and ", l.add.size(),
                                          " shifts: expected equal, >= 1"));
          break;
        case op_kind::max_pool:
        case op_kind::avg_pool:
          if (l.window == 0 || l.stride == 0 || 2 * l.padding > l.window)
            throw shape_error(detail::cat(who, ": window ", l.window, " stride ", l.stride,
                                          " padding ", l.padding,
                                          ": expected window, stride >= 1 and padding <= "
                                          "window / 2"));
          break;
        case op_kind::relu:
        case op_kind::global_avg_pool:
        case op_kind::flatten:
          break;
        default:
          throw value_error(
              detail::cat(who, ": unknown layer kind ", static_cast<std::uint32_t>(l.kind)));
      }
    }
  }

  void prepare_quantized(std::size_t i, const std::string& who) {
    const layer& l = layers_[i];
    l.weight_type.validate();
    l.input.validate(who);
    const std::size_t k = l.is_linear ? 1 : l.window;
    if (l.in_channels == 0 || l.out_channels == 0 || l.groups == 0 || k == 0 || l.stride == 0 ||
        l.in_channels % l.groups || l.out_channels % l.groups || (l.is_linear && l.groups != 1))
      throw shape_error(detail::cat(who, ": ", l.in_channels, " -> ", l.out_channels,
                                    " channels, kernel ", k, ", stride ", l.stride, ", groups ",
                                    l.groups,
                                    ": expected channels that are multiples of groups, "
                                    "kernel and stride >= 1"));
    const std::size_t cin_g = l.in_channels / l.groups;
    // Sizes may come from a file: an overflowing product must not pass the check.
    std::size_t expected = l.out_channels;
    bool overflow = false;
    for (std::size_t f : {k, k, cin_g}) overflow |= __builtin_mul_overflow(expected, f, &expected);
    if (overflow || l.weight_codes.size() != expected)
      throw shape_error(detail::cat(who, ": ", l.weight_codes.size(), " weight codes; expected ",
                                    expected, " (out x kh x kw x in/groups)"));
    const std::size_t wc = l.weight_scale.size();
    if ((wc != 1 && wc != l.out_channels) || l.weight_zero_point.size() != wc)
      throw shape_error(detail::cat(who, ": ", wc, " weight scales and ",
                                    l.weight_zero_point.size(), " zero points; expected 1 or ",
                                    l.out_channels, " of each"));
    for (float s : l.weight_scale)
      if (!(s > 0.0f) || !std::isfinite(s))
        throw value_error(
            detail::cat(who, ": weight scale ", s, " is invalid: expected a finite value > 0"));
    if (l.mul.size() != l.out_channels || l.add.size() != l.out_channels)
      throw shape_error(detail::cat(who, ": ", l.mul.size(), " output scales and ", l.add.size(),
                                    " shifts; expected ", l.out_channels, " of each"));
    output_map& om = maps_[i];
    om.k_acc.resize(l.out_channels);
    om.k_sum.resize(l.out_channels);
    om.uses_sums = false;
    for (std::size_t c = 0; c < l.out_channels; ++c) {
      const std::size_t ch = wc == 1 ? 0 : c;
      const double k = double(l.mul[c]) * double(l.input.scale()) * double(l.weight_scale[ch]);
      om.k_acc[c] = float(k);
      om.k_sum[c] = float(-k * double(l.weight_zero_point[ch]));
      om.uses_sums |= l.weight_zero_point[ch] != 0.0f;
    }
    // Depthwise layers and short patches (a first layer's 9 values, which the bit-serial GEMM
    // would pad to 512 bits) run the direct loops; the rest the packed GEMMs, whose
    // kernel (bit-serial or int8) the measured kernel table picks per bit pair.
    const bool depthwise = cin_g == 1 && l.groups > 1;
    std::vector<std::int32_t> zero2(l.out_channels);
    bool half_integral = true;
    for (std::size_t c = 0; c < l.out_channels; ++c) {
      const float z2 = 2.0f * l.weight_zero_point[wc == 1 ? 0 : c];
      half_integral &= z2 == std::nearbyint(z2) && std::fabs(z2) <= 512.0f;
      zero2[c] = half_integral ? std::int32_t(z2) : 0;
    }
    if (half_integral && (depthwise || k * k * cin_g < direct_patch_limit)) {
      direct_[i] = std::make_shared<detail::direct_conv_weights>(
          detail::make_direct_weights(l.weight_codes, l.out_channels, k, cin_g, l.groups, zero2));
      // The direct accumulator is 2 * (acc - z * sum): halve the scale, drop the sums.
      for (std::size_t c = 0; c < l.out_channels; ++c) om.k_acc[c] *= 0.5f, om.k_sum[c] = 0.0f;
      om.uses_sums = false;
    }
    packed_[i] = dispatch(
        [&](auto tag) -> std::shared_ptr<detail::packed_layer> {
          using WT = typename decltype(tag)::type;
          tensor<typename WT::storage_type> w({std::size_t(l.out_channels), k, k, cin_g});
          for (std::size_t j = 0; j < w.size(); ++j) {
            const int c = l.weight_codes[j];
            if (c < WT::min || c > WT::max || (WT::is_binary && c == 0))
              throw value_error(detail::cat(who, ": weight code ", c, " at ", j,
                                            " is not a value of ", bitwidth_of<WT>().name()));
            w[j] = static_cast<typename WT::storage_type>(c);
          }
          auto p = std::make_shared<detail::packed_layer_of<WT>>();
          p->w = kernels::packed_conv_weights<WT>::pack(w, kernels::weight_layout::ohwi, l.groups);
          return p;
        },
        l.weight_type);
  }

  static tensor<float> to_nhwc(const tensor<float>& x) {
    if (x.shape().size() == 2) return x;
    const std::size_t n = x.shape()[0], c = x.shape()[1], h = x.shape()[2], w = x.shape()[3];
    tensor<float> y({n, h, w, c});
    const float* px = x.data();
    float* py = y.data();
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t ch = 0; ch < c; ++ch)
        for (std::size_t i = 0; i < h * w; ++i)
          py[(b * h * w + i) * c + ch] = px[(b * c + ch) * h * w + i];
    return y;
  }

  tensor<float> apply(std::size_t i, const tensor<float>& x) {
    const layer& l = layers_[i];
    layer_report& r = report_[i];
    r.name = l.name;
    r.kind = l.kind;
    r.kernel = "float";
    const std::string who = detail::cat("integer_model layer ", i, " (", op_name(l.kind), ")");
    switch (l.kind) {
      case op_kind::quantized:
        return run_quantized(i, x, who);
      case op_kind::affine: {
        tensor<float> y(x.shape());
        const std::size_t c = x.shape().back();
        if (c != l.mul.size())
          throw shape_error(
              detail::cat(who, ": input has ", c, " channels; expected ", l.mul.size()));
        for (std::size_t j = 0; j < x.size(); ++j) y[j] = l.mul[j % c] * x[j] + l.add[j % c];
        return y;
      }
      case op_kind::relu: {
        tensor<float> y(x.shape());
        for (std::size_t j = 0; j < x.size(); ++j) y[j] = x[j] > 0.0f ? x[j] : 0.0f;
        return y;
      }
      case op_kind::max_pool:
      case op_kind::avg_pool:
        return pool(l, x, who);
      case op_kind::global_avg_pool: {
        const auto g = detail::make_window(x.shape(), 1, 1, 0, who);
        tensor<float> y({g.n, g.c}, 0.0f);
        for (std::size_t b = 0; b < g.n; ++b)
          for (std::size_t c = 0; c < g.c; ++c) {
            float s = 0;
            for (std::size_t p = 0; p < g.h * g.w; ++p) s += x[(b * g.h * g.w + p) * g.c + c];
            y[b * g.c + c] = s / float(g.h * g.w);
          }
        return y;
      }
      case op_kind::flatten: {
        if (x.shape().empty()) throw shape_error(detail::cat(who, ": empty input"));
        tensor<float> y({x.shape()[0], x.size() / std::max<std::size_t>(1, x.shape()[0])});
        std::copy(x.begin(), x.end(), y.begin());
        return y;
      }
    }
    throw value_error(detail::cat(who, ": unknown layer kind"));
  }

  static tensor<float> pool(const layer& l, const tensor<float>& x, const std::string& who) {
    const auto g = detail::make_window(x.shape(), l.window, l.stride, l.padding, who);
    tensor<float> y({g.n, g.oh, g.ow, g.c});
    const bool is_max = l.kind == op_kind::max_pool;
    std::vector<float> acc(g.c);
    for (std::size_t b = 0; b < g.n; ++b)
      for (std::size_t oy = 0; oy < g.oh; ++oy)
        for (std::size_t ox = 0; ox < g.ow; ++ox) {
          std::fill(acc.begin(), acc.end(),
                    is_max ? -std::numeric_limits<float>::infinity() : 0.0f);
          for (std::size_t ky = 0; ky < g.k; ++ky) {
            const long iy = long(oy * g.stride + ky) - long(g.pad);
            if (iy < 0 || iy >= long(g.h)) continue;
            for (std::size_t kx = 0; kx < g.k; ++kx) {
              const long ix = long(ox * g.stride + kx) - long(g.pad);
              if (ix < 0 || ix >= long(g.w)) continue;
              const float* px = &x[((b * g.h + std::size_t(iy)) * g.w + std::size_t(ix)) * g.c];
              for (std::size_t c = 0; c < g.c; ++c)
                acc[c] = is_max ? std::max(acc[c], px[c]) : acc[c] + px[c];
            }
          }
          float* py = &y[((b * g.oh + oy) * g.ow + ox) * g.c];
          const float inv = 1.0f / float(g.k * g.k);
          for (std::size_t c = 0; c < g.c; ++c) py[c] = is_max ? acc[c] : acc[c] * inv;
        }
    return y;
  }

  tensor<float> run_quantized(std::size_t i, const tensor<float>& x, const std::string& who) {
    const layer& l = layers_[i];
    layer_report& r = report_[i];
    r.w_bits = l.weight_type.bits;
    r.a_bits = l.input.bits;
    // Input codes, NHWC; linear layers see [N, F] as a 1x1 image of F channels.
    shape_t s = x.shape();
    if (l.is_linear) {
      if (s.size() != 2)
        throw shape_error(detail::cat(who, ": a fully connected layer needs [N, F], got ",
                                      shape_string(s), " (flatten first)"));
      s = {s[0], 1, 1, s[1]};
    }
    if (s.size() != 4 || s[3] != l.in_channels)
      throw shape_error(detail::cat(who, ": input of shape ", shape_string(x.shape()),
                                    "; expected ", l.in_channels, " channels"));
    tensor<std::uint8_t> codes(s);
    for (std::size_t j = 0; j < x.size(); ++j) codes[j] = l.input.code(x[j]);

    const std::size_t k = l.is_linear ? 1 : l.window;
    kernels::conv2d_params p;
    p.stride_h = p.stride_w = l.stride;
    p.pad_h = p.pad_w = l.padding;
    p.groups = l.groups;
    p.gemm.num_threads = threads_;
    const auto g = detail::make_window(s, k, l.stride, l.padding, who);
    tensor<std::int32_t> acc({g.n, g.oh, g.ow, std::size_t(l.out_channels)});
    if (direct_[i]) {
      detail::direct_conv(codes.data(), g, *direct_[i], acc.data(), threads_);
      r.kernel = "direct";
    } else {
      packed_[i]->run(codes, l.input.bits, acc.span(), p);
      r.kernel = kernels::choose_kernel(bitwidth{l.input.bits, false}, l.weight_type) ==
                         kernels::gemm_kernel::int8
                     ? "int8"
                     : "bitserial";
    }

    // value = s_a * s_w[c] * (acc - z_w[c] * sum of the window's input codes), then the
    // output map: y = k_acc[c] * acc + k_sum[c] * sum + add[c] (k_* precomputed by prepare).
    const output_map& om = maps_[i];
    std::vector<std::int32_t> sums;
    if (om.uses_sums) sums = window_code_sums(codes, g, l.groups);
    const std::size_t oc = l.out_channels, groups = l.groups, opg = oc / groups;
    tensor<float> y(l.is_linear ? shape_t{g.n, oc} : shape_t{g.n, g.oh, g.ow, oc});
    const std::size_t pixels = g.n * g.oh * g.ow;
    const float* ka = om.k_acc.data();
    const float* ks = om.k_sum.data();
    const float* add = l.add.data();
    for (std::size_t m = 0; m < pixels; ++m) {
      const std::int32_t* a = &acc[m * oc];
      float* py = &y[m * oc];
      if (om.uses_sums) {
        for (std::size_t gi = 0; gi < groups; ++gi) {
          const float sv = float(sums[m * groups + gi]);
          for (std::size_t c = gi * opg; c < (gi + 1) * opg; ++c)
            py[c] = ka[c] * float(a[c]) + (ks[c] * sv + add[c]);
        }
      } else {
        for (std::size_t c = 0; c < oc; ++c) py[c] = ka[c] * float(a[c]) + add[c];
      }
    }
    return y;
  }

  // Sum of the input codes of each output pixel's window, per group (padding adds 0): the
  // channel sums of each input pixel first, then the window sums of those.
  static std::vector<std::int32_t> window_code_sums(const tensor<std::uint8_t>& codes,
                                                    const detail::window_geometry& g,
                                                    std::size_t groups) {
    const std::size_t cin_g = g.c / groups;
    std::vector<std::int32_t> pixel(g.n * g.h * g.w * groups);
    const std::uint8_t* pc = codes.data();
    for (std::size_t p = 0; p < g.n * g.h * g.w; ++p)
      for (std::size_t gi = 0; gi < groups; ++gi) {
        std::int32_t sum = 0;
        for (std::size_t c = 0; c < cin_g; ++c) sum += pc[p * g.c + gi * cin_g + c];
        pixel[p * groups + gi] = sum;
      }
    std::vector<std::int32_t> out(g.n * g.oh * g.ow * groups, 0);
    for (std::size_t b = 0; b < g.n; ++b)
      for (std::size_t oy = 0; oy < g.oh; ++oy)
        for (std::size_t ox = 0; ox < g.ow; ++ox) {
          std::int32_t* o = &out[((b * g.oh + oy) * g.ow + ox) * groups];
          for (std::size_t ky = 0; ky < g.k; ++ky) {
            const long iy = long(oy * g.stride + ky) - long(g.pad);
            if (iy < 0 || iy >= long(g.h)) continue;
            for (std::size_t kx = 0; kx < g.k; ++kx) {
              const long ix = long(ox * g.stride + kx) - long(g.pad);
              if (ix < 0 || ix >= long(g.w)) continue;
              const std::int32_t* px =
                  &pixel[((b * g.h + std::size_t(iy)) * g.w + std::size_t(ix)) * groups];
              for (std::size_t gi = 0; gi < groups; ++gi) o[gi] += px[gi];
            }
          }
        }
    return out;
  }

  std::vector<layer> layers_;
  // A quantized layer's output map: y[c] = k_acc[c] * acc + k_sum[c] * window code sum + add[c].
  struct output_map {
    std::vector<float> k_acc, k_sum;
    bool uses_sums = false;
  };
  std::vector<std::shared_ptr<detail::packed_layer>> packed_;
  std::vector<output_map> maps_;
  std::vector<std::shared_ptr<detail::direct_conv_weights>> direct_;
  std::vector<layer_report> report_;
  std::size_t threads_ = 0;
};

}  // namespace mixq::deploy
