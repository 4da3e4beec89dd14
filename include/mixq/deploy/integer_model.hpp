// integer_model: a compiled network whose convolutions and fully connected layers run on
// integer codes with the bit-serial / int8 kernels. run() keeps activations as u8 codes
// between layers (output map, ReLU and the next layer's encoding fused into one
// requantization step), threads over the batch and reports each layer's time, kernel and
// bits; run_reference() is the plain layer-by-layer path (float between layers) it is tested
// against.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/deploy/integer_ops.hpp"
#include "mixq/kernels/bitserial_conv2d.hpp"
#include "mixq/kernels/lowbit_gemm.hpp"
#include "mixq/kernels/thread_pool.hpp"
#include "mixq/quant/activation_grid.hpp"

namespace mixq::deploy {

enum class op_kind : std::uint32_t {
  quantized = 1,  // convolution or fully connected layer on integer codes
  affine = 2,     // y[c] = mul[c] * x + add[c] (a batch norm not folded into a layer)
  relu = 3,
  max_pool = 4,
  avg_pool = 5,  // divides by window^2, padded taps count as 0 (as autodiff::avg_pool2d)
  global_avg_pool = 6,
  flatten = 7,
  save = 8,           // slot[window] = the current activation (a residual block's input)
  load = 9,           // the current activation = slot[window] (the shortcut's input)
  residual_add = 10,  // the current activation += slot[window] (same shape)
};

/// Op kinds a file of format version 1 can hold (save/load/residual_add came with version 2).
inline constexpr std::uint32_t op_kind_count_v1 = 7, op_kind_count = 10;

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
    case op_kind::save:
      return "save";
    case op_kind::load:
      return "load";
    case op_kind::residual_add:
      return "residual_add";
  }
  return "unknown";
}

/// How a quantized layer turns its float input into unsigned codes 0..L, L = 2^bits - 1, on
/// a one-sided grid (quant::activation_grid): PACT's, code = rint(L * clip(x, 0, alpha) /
/// alpha), value = (alpha / L) * code, or LSQ's, code = rint(clip(x / step, 0, L)), value =
/// step * code (rint: half to even). The arithmetic is quant::pact_codes' and
/// quant::lsq_codes', so codes agree bit for bit with the fake-quant simulation.
struct activation_encoding {
  int bits = 8;
  quant::activation_grid grid{};

  int max_code() const noexcept { return (1 << bits) - 1; }
  /// The real value of code 1.
  float scale() const noexcept { return grid.scale(bits); }
  std::uint8_t code(float x) const noexcept {
    return static_cast<std::uint8_t>(grid.code(x, bits));
  }
  /// codes of n values (one loop per grid kind, so each vectorises).
  void encode(const float* x, std::size_t n, std::uint8_t* out) const noexcept {
    if (grid.kind == quant::activation_grid_kind::step)
      for (std::size_t j = 0; j < n; ++j) out[j] = std::uint8_t(grid.step_code(x[j], bits));
    else
      for (std::size_t j = 0; j < n; ++j) out[j] = std::uint8_t(grid.pact_code(x[j], bits));
  }
  void validate(const std::string& who) const {
    if (bits < 1 || bits > 8)
      throw bits_error(mixq::detail::cat(who, ": activation bits ", bits, ": expected 1..8"));
    grid.validate(who);
  }
};

/// One layer of an integer model. Fields a kind does not use stay empty.
struct layer {
  op_kind kind = op_kind::relu;
  std::string name;  // the source module's name, for reports

  // Pools: square window, stride, zero/-inf padding. Quantized convs: kernel side, stride,
  // padding. save / load / residual_add: `window` is the slot index (see slot()).
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
  /// The slot a save / load / residual_add op uses.
  std::uint32_t slot() const noexcept { return window; }

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
  /// save / load / residual_add on slot `slot`.
  static layer slot_op(op_kind k, std::uint32_t slot, std::string name = {}) {
    layer l = of_kind(k, std::move(name));
    l.window = slot;
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
  /// The same on codes of shape `s`, through the bit-serial GEMM, with the activation planes
  /// kept in `planes` between calls (created on first use).
  virtual void run_bitserial(const std::uint8_t* codes, const shape_t& s, int a_bits,
                             std::span<std::int32_t> out, const kernels::conv2d_params& p,
                             std::shared_ptr<void>& planes) const = 0;
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
  void run_bitserial(const std::uint8_t* codes, const shape_t& s, int a_bits,
                     std::span<std::int32_t> out, const kernels::conv2d_params& p,
                     std::shared_ptr<void>& planes) const override {
    dispatch(
        [&](auto tag) {
          using AT = typename decltype(tag)::type;
          if constexpr (!AT::is_signed) {
            using planes_t = kernels::conv_activation_planes<AT>;
            if (!planes) planes = std::make_shared<planes_t>();
            auto& a = *static_cast<planes_t*>(planes.get());
            const auto g = kernels::conv2d_geometry_for(s, w, p);
            kernels::pack_conv_activations<AT>(std::span<const std::uint8_t>(codes, shape_numel(s)),
                                               g, p.gemm, a);
            kernels::bitserial_conv2d_packed(a, w, out, p);
          }
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
  /// Images per step of a thread's share of the batch in run(): a step's activations stay in
  /// cache from one layer to the next.
  static constexpr std::size_t images_per_step = 16;

  integer_model() = default;
  explicit integer_model(std::vector<layer> layers) : layers_(std::move(layers)) { prepare(); }
  integer_model(const integer_model& o)
      : layers_(o.layers_), threads_(o.threads_), kernel_override_(o.kernel_override_) {
    prepare();
  }
  integer_model& operator=(const integer_model& o) {
    if (this != &o) *this = integer_model(o);
    return *this;
  }
  integer_model(integer_model&&) noexcept = default;
  integer_model& operator=(integer_model&&) noexcept = default;

  const std::vector<layer>& layers() const noexcept { return layers_; }
  /// The per-layer report of the last run() or run_reference(). In run(), ops fused into the
  /// quantized layer before them report kernel "fused" and no time (it counts in that layer),
  /// and the times are those of the first thread's share of the batch.
  const std::vector<layer_report>& report() const noexcept { return report_; }

  /// Threads (0 = the library pool's size, the default): run() splits the batch over them,
  /// run_reference() threads the kernels.
  void set_threads(std::size_t n) noexcept { threads_ = n; }

  /// Forces the GEMM of the layers that run one in run() (neither depthwise nor a short
  /// patch): bit-serial, or int8 where the weights fit signed bytes. std::nullopt (the default)
  /// picks per layer: int8 when the CPU has VNNI and either the kernel table says so for the
  /// bit pair or the patch is too short for the bit-serial GEMM's 512-bit blocks to pay.
  void set_kernel_override(std::optional<kernels::gemm_kernel> k) {
    kernel_override_ = k;
    plan();
  }

  /// Logits [N, outputs] of a float batch [N, C, H, W] (or [N, F]): the fast path. Activations
  /// between quantized layers stay u8 codes: each layer's output map, the ReLU and affine ops
  /// after it and the next layer's input encoding are one requantization step (per-channel
  /// thresholds on the int32 accumulator for next layers of <= 2 bits), max pools before a
  /// quantized layer run on codes, and the batch is split over the threads.
  tensor<float> run(const tensor<float>& batch) {
    check_input(batch);
    const std::size_t n = batch.shape()[0];
    // Shapes of every op's input for one image; also checks the whole network up front.
    std::vector<shape_t> shapes(layers_.size() + 1);
    shapes[0] = batch.shape().size() == 4
                    ? shape_t{1, batch.shape()[2], batch.shape()[3], batch.shape()[1]}
                    : shape_t{1, batch.shape()[1]};
    std::vector<shape_t> slots(slot_count_);
    for (std::size_t i = 0; i < layers_.size(); ++i)
      shapes[i + 1] = output_shape(i, shapes[i], slots);
    shape_t out_shape = shapes.back();
    out_shape[0] = n;
    tensor<float> out(out_shape);
    const std::size_t pool = kernels::default_thread_pool().size();
    const std::size_t parts =
        std::max<std::size_t>(1, std::min({threads_ ? threads_ : pool, pool, n}));
    while (contexts_.size() < parts) contexts_.push_back(std::make_unique<run_context>());
    for (auto& c : contexts_) c->seconds.assign(layers_.size(), 0.0);
    if (n > 0)
      kernels::default_thread_pool().parallel_for(
          parts,
          [&](std::size_t p0, std::size_t p1) {
            for (std::size_t p = p0; p < p1; ++p) {
              const std::size_t b0 = n * p / parts, b1 = n * (p + 1) / parts;
              for (std::size_t b = b0; b < b1; b += images_per_step)
                run_images(*contexts_[p], batch, b, std::min(b + images_per_step, b1), shapes, out);
            }
          },
          parts);
    report_.assign(layers_.size(), {});
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const layer& l = layers_[i];
      layer_report& r = report_[i];
      r.name = l.name;
      r.kind = l.kind;
      r.seconds = contexts_[0]->seconds[i];
      r.kernel = kernel_names_[i];
      if (l.kind == op_kind::quantized) r.w_bits = l.weight_type.bits, r.a_bits = l.input.bits;
    }
    return out;
  }

  /// The same through the plain path: layer by layer, float between layers, every quantized
  /// layer encoding its float input and applying its output map in float (the reference the
  /// fast path is tested against).
  tensor<float> run_reference(const tensor<float>& batch) {
    check_input(batch);
    tensor<float> x = to_nhwc(batch);
    std::vector<tensor<float>> slots(slot_count_);
    report_.assign(layers_.size(), {});
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const layer& l = layers_[i];
      switch (l.kind) {
        case op_kind::save:
          slots[l.slot()] = x;
          break;
        case op_kind::load:
          x = slots[l.slot()];
          break;
        case op_kind::residual_add: {
          const tensor<float>& s = slots[l.slot()];
          if (s.shape() != x.shape())
            throw shape_error(detail::cat("integer_model layer ", i, " (residual_add): input ",
                                          shape_string(x.shape()), " and slot ", l.slot(), " ",
                                          shape_string(s.shape()), ": expected equal shapes"));
          for (std::size_t j = 0; j < x.size(); ++j) x[j] += s[j];
          break;
        }
        default:
          x = apply(i, x);
      }
      report_[i].name = l.name;
      report_[i].kind = l.kind;
      if (report_[i].kernel.empty()) report_[i].kernel = "float";
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
  // Checks every layer, packs the quantized layers' weights and plans the fast path.
  void prepare() {
    packed_.clear();
    packed_.resize(layers_.size());
    maps_.assign(layers_.size(), {});
    direct_.assign(layers_.size(), nullptr);
    slot_count_ = 0;
    std::vector<bool> saved;
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
        case op_kind::save:
        case op_kind::load:
        case op_kind::residual_add:
          // Slots are a residual block's saved activations: a handful, never a file's whim.
          if (l.slot() >= max_slots)
            throw value_error(detail::cat(who, ": slot ", l.slot(), ": expected < ", max_slots));
          if (l.kind == op_kind::save) {
            if (saved.size() <= l.slot()) saved.resize(l.slot() + 1, false);
            saved[l.slot()] = true;
            slot_count_ = std::max<std::size_t>(slot_count_, l.slot() + 1);
          } else if (l.slot() >= saved.size() || !saved[l.slot()]) {
            throw value_error(
                detail::cat(who, ": reads slot ", l.slot(), " before any save to it"));
          }
          break;
        default:
          throw value_error(
              detail::cat(who, ": unknown layer kind ", static_cast<std::uint32_t>(l.kind)));
      }
    }
    plan();
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

  static constexpr std::uint32_t max_slots = 64;
  // Consumers of at most this many bits get threshold requantization (1 or 3 compares per
  // value); wider ones the float output map and encoding, which costs the same at any width.
  static constexpr int threshold_bits_limit = 2;

  // ---- The fast path's plan ----------------------------------------------------------------

  enum class path_kind : std::uint8_t { fallback, direct, int8, bitserial };

  /// How run() executes quantized layer i. acc_m, the accumulator the kernel leaves, is
  /// `multiplier` times the real-valued one (the direct loops and half-integral zero points
  /// double it); y[c] = scale[c] * acc_m + shift[c] is the layer's float output.
  struct fused_plan {
    path_kind path = path_kind::fallback;
    std::shared_ptr<detail::int8_conv_weights> int8;
    bool uses_sums = false;           // bit-serial with zero points: acc_m = 2 acc - z2 S
    std::vector<std::int32_t> zero2;  // 2 * weight zero point per output channel
    std::vector<float> scale, shift;
    std::size_t chain_end = 0;     // ops i+1 .. chain_end-1 (affine, relu) are fused
    std::ptrdiff_t consumer = -1;  // the quantized op that reads this layer's codes
    std::shared_ptr<detail::requant_thresholds> thresholds;  // when the consumer has <= 2 bits
  };

  // The float output of quantized layer i's channel c after its fused chain, for accumulator
  // a: the same arithmetic, step for step, as epilogue_rows.
  float epilogue_value(std::size_t i, std::size_t c, std::int32_t a) const {
    const fused_plan& fp = plan_[i];
    float y = fp.scale[c] * float(a) + fp.shift[c];
    for (std::size_t j = i + 1; j < fp.chain_end; ++j) {
      const layer& e = layers_[j];
      if (e.kind == op_kind::affine)
        y = e.mul[c] * y + e.add[c];
      else
        y = y > 0.0f ? y : 0.0f;
    }
    return y;
  }

  void plan() {
    const std::size_t L = layers_.size();
    plan_.assign(L, {});
    kernel_names_.assign(L, "float");
    const bool vnni = kernels::has_avx512_vnni() || kernels::has_avx_vnni();
    const kernels::kernel_table table = kernels::active_kernel_table();
    for (std::size_t i = 0; i < L; ++i) {
      const layer& l = layers_[i];
      if (l.kind != op_kind::quantized) continue;
      fused_plan& fp = plan_[i];
      const std::size_t oc = l.out_channels, k = l.is_linear ? 1 : l.window;
      const std::size_t patch = k * k * (l.in_channels / l.groups);
      const std::size_t wc = l.weight_scale.size();
      auto z_of = [&](std::size_t c) { return l.weight_zero_point[wc == 1 ? 0 : c]; };
      int multiplier = 1;
      const bool depthwise = l.in_channels == l.groups && l.groups > 1;
      // Short patches run the direct loops in the reference path; with VNNI the int8 GEMM
      // (patch padded to 4 bytes, not 512 bits) is faster for them, depthwise layers aside.
      if (direct_[i] && (depthwise || !vnni || kernel_override_)) {
        fp.path = path_kind::direct;
        multiplier = 2;
      } else {
        auto w8 =
            detail::make_int8_weights(l.weight_codes, oc, patch, l.groups, l.weight_zero_point);
        bool half_integral = true, any_zero_point = false;
        fp.zero2.resize(oc);
        for (std::size_t c = 0; c < oc; ++c) {
          const float z2 = 2.0f * z_of(c);
          half_integral &= z2 == std::nearbyint(z2) && std::fabs(z2) <= 512.0f;
          any_zero_point |= z_of(c) != 0.0f;
          fp.zero2[c] = half_integral ? std::int32_t(z2) : 0;
        }
        // Per output, the bit-serial GEMM spends about 3 instructions per plane pair and
        // 512-bit block, the int8 VNNI GEMM about one per 64 values.
        const double bitserial_cost =
            3.0 * l.input.bits * l.weight_type.bits * double((patch + 511) / 512);
        const double int8_cost = double(patch) / 64.0;
        const bool want_int8 = kernel_override_
                                   ? *kernel_override_ == kernels::gemm_kernel::int8
                                   : vnni && (table.at(l.input.bits, l.weight_type.bits) ==
                                                  kernels::gemm_kernel::int8 ||
                                              int8_cost <= bitserial_cost);
        if (w8 && want_int8) {
          fp.path = path_kind::int8;
          multiplier = w8->multiplier;
          fp.int8 = std::make_shared<detail::int8_conv_weights>(std::move(*w8));
        } else if (half_integral) {
          fp.path = path_kind::bitserial;
          fp.uses_sums = any_zero_point;
          multiplier = any_zero_point ? 2 : 1;
        }
      }
      if (fp.path == path_kind::fallback) {
        kernel_names_[i] = kernels::choose_kernel(bitwidth{l.input.bits, false}, l.weight_type) ==
                                   kernels::gemm_kernel::int8
                               ? "int8 (reference)"
                               : "bitserial (reference)";
        continue;
      }
      kernel_names_[i] = fp.path == path_kind::direct ? "direct"
                         : fp.path == path_kind::int8 ? "int8"
                                                      : "bitserial";
      fp.scale.resize(oc);
      fp.shift = l.add;
      for (std::size_t c = 0; c < oc; ++c)
        fp.scale[c] = float(double(l.mul[c]) * double(l.input.scale()) *
                            double(l.weight_scale[wc == 1 ? 0 : c]) / multiplier);
    }
    // Chains of elementwise ops after a layer, and the layer that reads its codes.
    for (std::size_t i = 0; i < L; ++i) {
      const layer& l = layers_[i];
      fused_plan& fp = plan_[i];
      fp.chain_end = i + 1;
      if (l.kind != op_kind::quantized || fp.path == path_kind::fallback) continue;
      const std::size_t oc = l.out_channels;
      std::size_t e = i + 1;
      while (e < L && ((layers_[e].kind == op_kind::affine && layers_[e].mul.size() == oc) ||
                       layers_[e].kind == op_kind::relu)) {
        kernel_names_[e] = "fused";
        ++e;
      }
      fp.chain_end = e;
      std::size_t j = e;
      if (!l.is_linear)
        while (j < L && layers_[j].kind == op_kind::max_pool) ++j;
      if (j < L && layers_[j].kind == op_kind::quantized && plan_[j].path != path_kind::fallback &&
          layers_[j].in_channels == oc && layers_[j].is_linear == l.is_linear) {
        fp.consumer = std::ptrdiff_t(j);
        for (std::size_t p = e; p < j; ++p) kernel_names_[p] = "codes";
        const activation_encoding enc = layers_[j].input;
        if (enc.bits <= threshold_bits_limit)
          fp.thresholds = std::make_shared<detail::requant_thresholds>(
              detail::make_thresholds(oc, enc.max_code(), [&](std::size_t c, std::int32_t a) {
                return int(enc.code(epilogue_value(i, c, a)));
              }));
      }
    }
  }

  // ---- Shapes ----------------------------------------------------------------------------

  static void check_input(const tensor<float>& batch) {
    if (batch.shape().size() != 4 && batch.shape().size() != 2)
      throw shape_error(
          detail::cat("integer_model::run: input must be [N, C, H, W] or [N, F], got ",
                      shape_string(batch.shape())));
  }

  // The NHWC (or [N, F]) output shape of op i for input shape s; shape_error when they do not
  // fit. `slots` holds the shapes saved so far.
  shape_t output_shape(std::size_t i, const shape_t& s, std::vector<shape_t>& slots) const {
    const layer& l = layers_[i];
    const std::string who = detail::cat("integer_model layer ", i, " (", op_name(l.kind), ")");
    switch (l.kind) {
      case op_kind::quantized: {
        shape_t q = quantized_input_shape(l, s, who);
        const auto g = detail::make_window(q, l.is_linear ? 1 : l.window, l.stride, l.padding, who);
        return l.is_linear ? shape_t{g.n, l.out_channels}
                           : shape_t{g.n, g.oh, g.ow, l.out_channels};
      }
      case op_kind::affine:
        if (s.empty() || s.back() != l.mul.size())
          throw shape_error(detail::cat(who, ": input has ", s.empty() ? 0 : s.back(),
                                        " channels; expected ", l.mul.size()));
        return s;
      case op_kind::relu:
        return s;
      case op_kind::max_pool:
      case op_kind::avg_pool: {
        const auto g = detail::make_window(s, l.window, l.stride, l.padding, who);
        return {g.n, g.oh, g.ow, g.c};
      }
      case op_kind::global_avg_pool: {
        const auto g = detail::make_window(s, 1, 1, 0, who);
        return {g.n, g.c};
      }
      case op_kind::flatten:
        if (s.empty()) throw shape_error(detail::cat(who, ": empty input"));
        return {s[0], shape_numel(s) / std::max<std::size_t>(1, s[0])};
      case op_kind::save:
        slots[l.slot()] = s;
        return s;
      case op_kind::load:
        return slots[l.slot()];
      case op_kind::residual_add:
        if (slots[l.slot()] != s)
          throw shape_error(detail::cat(who, ": input ", shape_string(s), " and slot ", l.slot(),
                                        " ", shape_string(slots[l.slot()]),
                                        ": expected equal shapes"));
        return s;
    }
    throw value_error(detail::cat(who, ": unknown layer kind"));
  }

  // A quantized layer's input as NHWC; linear layers see [N, F] as a 1x1 image of F channels.
  static shape_t quantized_input_shape(const layer& l, shape_t s, const std::string& who) {
    const shape_t given = s;
    if (l.is_linear) {
      if (s.size() != 2)
        throw shape_error(detail::cat(who, ": a fully connected layer needs [N, F], got ",
                                      shape_string(s), " (flatten first)"));
      s = {s[0], 1, 1, s[1]};
    }
    if (s.size() != 4 || s[3] != l.in_channels)
      throw shape_error(detail::cat(who, ": input of shape ", shape_string(given), "; expected ",
                                    l.in_channels, " channels"));
    return s;
  }

  // ---- The fast path ---------------------------------------------------------------------

  /// One thread's buffers, reused across calls (sized on first use, never shrunk).
  struct run_context {
    std::vector<std::uint8_t> codes[2];
    std::vector<float> floats[2];
    std::vector<std::int32_t> acc, sums, pixel_sums, row;
    std::vector<float> float_row;
    std::vector<std::uint8_t> im2col;
    std::vector<std::shared_ptr<void>> planes;  // per op: bit-serial activation planes
    std::vector<std::vector<float>> slots;
    std::vector<double> seconds;
  };

  template <class T>
  static T* sized(std::vector<T>& v, std::size_t n) {
    // Slack past the end: im2col may read a little over a code buffer's end.
    if (v.size() < n + detail::im2col_slack) v.resize(n + detail::im2col_slack);
    return v.data();
  }

  static void encode_codes(const float* x, std::size_t n, const activation_encoding& e,
                           std::uint8_t* out) {
    e.encode(x, n, out);
  }

  // Images [b0, b1) of the batch through the whole network; their logits go to `out`.
  void run_images(run_context& ctx, const tensor<float>& batch, std::size_t b0, std::size_t b1,
                  const std::vector<shape_t>& shapes, tensor<float>& out) {
    using clock = std::chrono::steady_clock;
    const std::size_t n = b1 - b0, L = layers_.size();
    auto scaled = [&](shape_t s) {
      s[0] = n;
      return s;
    };
    if (ctx.planes.size() < L) ctx.planes.resize(L);
    if (ctx.slots.size() < slot_count_) ctx.slots.resize(slot_count_);
    // The current activation: codes or floats in buffer `which`, of shape `shape`.
    bool is_codes = false;
    int which = 0;
    shape_t shape = scaled(shapes[0]);
    {
      const auto t0 = clock::now();
      const std::size_t per = shape_numel(shapes[0]);
      const float* src = batch.data() + b0 * per;
      const bool encode =
          L > 0 && layers_[0].kind == op_kind::quantized && plan_[0].path != path_kind::fallback;
      if (batch.shape().size() == 4) {
        const std::size_t c = batch.shape()[1], hw = batch.shape()[2] * batch.shape()[3];
        if (encode && c == 1) {
          encode_codes(src, n * per, layers_[0].input, sized(ctx.codes[0], n * per));
        } else if (encode) {
          std::uint8_t* dst = sized(ctx.codes[0], n * per);
          const activation_encoding e = layers_[0].input;
          for (std::size_t b = 0; b < n; ++b)
            for (std::size_t ch = 0; ch < c; ++ch)
              for (std::size_t p = 0; p < hw; ++p)
                dst[(b * hw + p) * c + ch] = e.code(src[(b * c + ch) * hw + p]);
        } else {
          float* dst = sized(ctx.floats[0], n * per);
          for (std::size_t b = 0; b < n; ++b)
            for (std::size_t ch = 0; ch < c; ++ch)
              for (std::size_t p = 0; p < hw; ++p)
                dst[(b * hw + p) * c + ch] = src[(b * c + ch) * hw + p];
        }
      } else if (encode) {
        encode_codes(src, n * per, layers_[0].input, sized(ctx.codes[0], n * per));
      } else {
        std::copy(src, src + n * per, sized(ctx.floats[0], n * per));
      }
      is_codes = encode;
      if (L > 0) ctx.seconds[0] += std::chrono::duration<double>(clock::now() - t0).count();
    }
    for (std::size_t i = 0; i < L;) {
      const auto t0 = clock::now();
      const layer& l = layers_[i];
      const shape_t out_shape = scaled(shapes[i + 1]);
      const std::size_t out_size = shape_numel(out_shape);
      std::size_t next = i + 1;
      switch (l.kind) {
        case op_kind::quantized:
          if (plan_[i].path == path_kind::fallback) {
            tensor<float> x(shape);
            std::copy_n(ctx.floats[which].data(), x.size(), x.data());
            layer_report scratch;
            const tensor<float> y = run_quantized(i, x, scratch, 1);
            which ^= 1;
            std::copy(y.begin(), y.end(), sized(ctx.floats[which], y.size()));
          } else {
            next = run_fused(ctx, i, shape, is_codes, which);
          }
          break;
        case op_kind::max_pool:
          if (is_codes) {
            const auto g = detail::make_window(shape, l.window, l.stride, l.padding, "");
            detail::max_pool_codes(ctx.codes[which].data(), g,
                                   sized(ctx.codes[which ^ 1], out_size));
            which ^= 1;
            break;
          }
          [[fallthrough]];
        case op_kind::avg_pool:
        case op_kind::affine:
        case op_kind::relu:
        case op_kind::global_avg_pool:
        case op_kind::flatten: {
          float* y = sized(ctx.floats[which ^ 1], out_size);
          float_op(l, ctx.floats[which].data(), shape, y);
          which ^= 1;
          break;
        }
        case op_kind::save: {
          const std::size_t sz = shape_numel(shape);
          std::copy_n(ctx.floats[which].data(), sz, sized(ctx.slots[l.slot()], sz));
          break;
        }
        case op_kind::load:
          std::copy_n(ctx.slots[l.slot()].data(), out_size, sized(ctx.floats[which], out_size));
          break;
        case op_kind::residual_add: {
          float* x = ctx.floats[which].data();
          const float* s = ctx.slots[l.slot()].data();
          for (std::size_t j = 0; j < out_size; ++j) x[j] += s[j];
          break;
        }
      }
      if (l.kind != op_kind::quantized) is_codes = is_codes && l.kind == op_kind::max_pool;
      shape = scaled(shapes[next]);
      ctx.seconds[i] += std::chrono::duration<double>(clock::now() - t0).count();
      i = next;
    }
    const std::size_t per_out = shape_numel(shapes[L]);
    std::copy_n(ctx.floats[which].data(), n * per_out, out.data() + b0 * per_out);
  }

  // Quantized layer i and the ops fused after it; returns the next op to run.
  std::size_t run_fused(run_context& ctx, std::size_t i, const shape_t& in_shape, bool& is_codes,
                        int& which) {
    const layer& l = layers_[i];
    const fused_plan& fp = plan_[i];
    const shape_t s = quantized_input_shape(l, in_shape, "");
    const std::uint8_t* codes;
    if (is_codes) {
      codes = ctx.codes[which].data();
    } else {
      // Float input: encode it into a code buffer; the float buffers are then free.
      const std::size_t sz = shape_numel(s);
      encode_codes(ctx.floats[which].data(), sz, l.input, sized(ctx.codes[0], sz));
      codes = ctx.codes[0].data();
      which = 0;
    }
    const auto g = detail::make_window(s, l.is_linear ? 1 : l.window, l.stride, l.padding, "");
    const std::size_t oc = l.out_channels, pixels = g.n * g.oh * g.ow;
    std::int32_t* acc = sized(ctx.acc, pixels * oc);
    switch (fp.path) {
      case path_kind::direct:
        if (direct_[i]->per_channel_depthwise())
          detail::depthwise_codes(codes, g, direct_[i]->w.data(), acc);
        else
          detail::direct_conv(codes, g, *direct_[i], acc, 1);
        break;
      case path_kind::int8: {
        const detail::int8_conv_weights& w8 = *fp.int8;
        detail::int8_conv(codes, g, w8, oc, ctx.im2col, acc);
        if (w8.uses_sums) {  // m * GEMM + correction * window code sum
          detail::window_code_sums(codes, g, l.groups, ctx.pixel_sums, ctx.sums);
          const std::size_t groups = l.groups, opg = oc / groups;
          const std::int32_t* corr = w8.correction.data();
          const std::int32_t m8 = w8.multiplier;
          for (std::size_t m = 0; m < pixels; ++m)
            for (std::size_t gi = 0; gi < groups; ++gi) {
              const std::int32_t sv = ctx.sums[m * groups + gi];
              std::int32_t* a = acc + m * oc + gi * opg;
              for (std::size_t j = 0; j < opg; ++j) a[j] = m8 * a[j] + corr[gi * opg + j] * sv;
            }
        }
        break;
      }
      case path_kind::bitserial: {
        kernels::conv2d_params p;
        p.stride_h = p.stride_w = l.stride;
        p.pad_h = p.pad_w = l.padding;
        p.groups = l.groups;
        p.gemm.num_threads = 1;
        p.kernel = kernels::gemm_kernel::bitserial;
        packed_[i]->run_bitserial(codes, s, l.input.bits, std::span(acc, pixels * oc), p,
                                  ctx.planes[i]);
        if (fp.uses_sums) {
          detail::window_code_sums(codes, g, l.groups, ctx.pixel_sums, ctx.sums);
          const std::size_t groups = l.groups, opg = oc / groups;
          const std::int32_t* z2 = fp.zero2.data();
          for (std::size_t m = 0; m < pixels; ++m)
            for (std::size_t gi = 0; gi < groups; ++gi) {
              const std::int32_t sv = ctx.sums[m * groups + gi];
              std::int32_t* a = acc + m * oc + gi * opg;
              for (std::size_t j = 0; j < opg; ++j) a[j] = 2 * a[j] - z2[gi * opg + j] * sv;
            }
        }
        break;
      }
      case path_kind::fallback:
        break;
    }
    const std::size_t out_size = pixels * oc;
    if (fp.consumer >= 0) {
      // Codes for the consumer, into the code buffer the input does not occupy.
      std::uint8_t* dst = sized(ctx.codes[which ^ 1], out_size);
      if (fp.thresholds) {
        detail::requantize(acc, pixels, *fp.thresholds, dst, ctx.row);
      } else {
        // Float output of a few pixels at a time (in L1), then their codes in one long loop.
        const std::size_t tile = std::max<std::size_t>(1, 1024 / oc);
        float* rows = sized(ctx.float_row, tile * oc);
        const activation_encoding enc = layers_[std::size_t(fp.consumer)].input;
        for (std::size_t m = 0; m < pixels; m += tile) {
          const std::size_t n_rows = std::min(tile, pixels - m);
          epilogue_rows(i, acc + m * oc, n_rows, rows);
          encode_codes(rows, n_rows * oc, enc, dst + m * oc);
        }
      }
      which ^= 1;
      is_codes = true;
    } else {
      epilogue_rows(i, acc, pixels, sized(ctx.floats[0], out_size));
      which = 0;
      is_codes = false;
    }
    return fp.chain_end;
  }

  // y (rows x channels) = the float output of quantized layer i after its fused chain.
  void epilogue_rows(std::size_t i, const std::int32_t* acc, std::size_t rows, float* y) const {
    const fused_plan& fp = plan_[i];
    const std::size_t C = fp.scale.size();
    const float* scale = fp.scale.data();
    const float* shift = fp.shift.data();
    for (std::size_t m = 0; m < rows; ++m) {
      const std::int32_t* a = acc + m * C;
      float* o = y + m * C;
      for (std::size_t c = 0; c < C; ++c) o[c] = scale[c] * float(a[c]) + shift[c];
      for (std::size_t j = i + 1; j < fp.chain_end; ++j) {
        const layer& e = layers_[j];
        if (e.kind == op_kind::affine) {
          const float* mul = e.mul.data();
          const float* add = e.add.data();
          for (std::size_t c = 0; c < C; ++c) o[c] = mul[c] * o[c] + add[c];
        } else {
          for (std::size_t c = 0; c < C; ++c) o[c] = o[c] > 0.0f ? o[c] : 0.0f;
        }
      }
    }
  }

  // A float op (affine, relu, pools, flatten) from x of shape s into y (sized by the caller).
  static void float_op(const layer& l, const float* x, const shape_t& s, float* y) {
    const std::size_t size = shape_numel(s);
    switch (l.kind) {
      case op_kind::affine: {
        const std::size_t c = s.back();
        for (std::size_t j = 0; j < size; ++j) y[j] = l.mul[j % c] * x[j] + l.add[j % c];
        return;
      }
      case op_kind::relu:
        for (std::size_t j = 0; j < size; ++j) y[j] = x[j] > 0.0f ? x[j] : 0.0f;
        return;
      case op_kind::max_pool:
      case op_kind::avg_pool:
        pool_into(l, x, detail::make_window(s, l.window, l.stride, l.padding, ""), y);
        return;
      case op_kind::global_avg_pool: {
        const auto g = detail::make_window(s, 1, 1, 0, "");
        for (std::size_t b = 0; b < g.n; ++b)
          for (std::size_t c = 0; c < g.c; ++c) {
            float sum = 0;
            for (std::size_t p = 0; p < g.h * g.w; ++p) sum += x[(b * g.h * g.w + p) * g.c + c];
            y[b * g.c + c] = sum / float(g.h * g.w);
          }
        return;
      }
      case op_kind::flatten:
        std::copy_n(x, size, y);
        return;
      default:
        return;
    }
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
    if (l.kind == op_kind::quantized) return run_quantized(i, x, r, threads_);
    std::vector<shape_t> no_slots;
    tensor<float> y(output_shape(i, x.shape(), no_slots));
    float_op(l, x.data(), x.shape(), y.data());
    return y;
  }

  static void pool_into(const layer& l, const float* x, const detail::window_geometry& g,
                        float* y) {
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
  }

  // The reference path of quantized layer i (the report's kernel and bits go to r).
  tensor<float> run_quantized(std::size_t i, const tensor<float>& x, layer_report& r,
                              std::size_t threads) {
    const layer& l = layers_[i];
    const std::string who = detail::cat("integer_model layer ", i, " (", op_name(l.kind), ")");
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
    p.gemm.num_threads = threads;
    const auto g = detail::make_window(s, k, l.stride, l.padding, who);
    tensor<std::int32_t> acc({g.n, g.oh, g.ow, std::size_t(l.out_channels)});
    if (direct_[i]) {
      detail::direct_conv(codes.data(), g, *direct_[i], acc.data(), threads);
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
    std::vector<std::int32_t> sums, pixel_sums;
    if (om.uses_sums) detail::window_code_sums(codes.data(), g, l.groups, pixel_sums, sums);
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
  std::optional<kernels::gemm_kernel> kernel_override_;
  std::size_t slot_count_ = 0;
  std::vector<fused_plan> plan_;
  std::vector<std::string> kernel_names_;
  std::vector<std::unique_ptr<run_context>> contexts_;
};

}  // namespace mixq::deploy
