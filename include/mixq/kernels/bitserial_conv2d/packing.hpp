// Packing for the bit-serial convolution: `packed_conv_weights<WT>` (weights packed once into
// bit planes along the (kh, kw, cin/groups) patch, with the per-channel and per-tap sums the
// zero-point and padding corrections need) and the implicit im2col of NHWC activation codes
// straight into bit planes (`pack_conv_activations`), with no unpacked patch copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "mixq/core/aligned.hpp"
#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/kernels/bitserial_conv2d/reference.hpp"
#include "mixq/kernels/bitserial_gemm.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/int8_gemm.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/pack_bitplanes.hpp"
#include "mixq/kernels/thread_pool.hpp"

namespace mixq::kernels {

namespace detail {
/// Each group's GEMM operand in the layouts of the two GEMM kernels, made on first use (a layer
/// uses one of them, chosen at call time from the activation type) and shared by copies of
/// the weights, which never change after packing.
struct conv_gemm_operands {
  std::once_flag bitserial_once, int8_once;
  std::vector<packed_bitserial_weights> bitserial;
  std::vector<packed_int8_weights> int8;
};
}  // namespace detail

/// Convolution weights of type WT packed once: group g's cout/groups rows of a bitplane_matrix
/// of out_c x (kh * kw * cin/groups) values ordered (kh, kw, cin), so they meet the activation
/// patches; plus sum of each output channel's weights and of each (channel, tap).
template <quantized_type WT>
class packed_conv_weights {
 public:
  using storage_type = typename WT::storage_type;

  packed_conv_weights() = default;

  /// Packs a 4-d tensor of WT values (OIHW or OHWI) for `groups` groups (its dimension 1 or 3
  /// is cin/groups). value_error for a value outside WT, shape_error for a bad shape.
  static packed_conv_weights pack(const tensor<storage_type>& weights, weight_layout layout,
                                  std::size_t groups = 1) {
    const auto [out_c, cin_g, kh, kw] =
        detail::weight_dims(weights.shape(), layout, "packed_conv_weights::pack");
    if (groups == 0 || out_c % groups != 0 || out_c == 0 || cin_g == 0 || kh == 0 || kw == 0)
      throw shape_error(mixq::detail::cat("packed_conv_weights::pack: weights of shape ",
                                          shape_string(weights.shape()), " with groups = ", groups,
                                          ": expected non-empty dimensions and output channels a "
                                          "multiple of groups"));
    packed_conv_weights w;
    w.out_c_ = out_c, w.cin_g_ = cin_g, w.kh_ = kh, w.kw_ = kw, w.groups_ = groups;
    const std::size_t taps = kh * kw, patch = taps * cin_g;
    std::vector<storage_type> row(patch);
    w.planes_ = bitplane_matrix<WT>(out_c, patch);
    w.channel_sums_.assign(out_c, 0);
    w.tap_sums_.assign(out_c * taps, 0);
    w.tap_major_.assign(taps * out_c, 0);
    for (std::size_t o = 0; o < out_c; ++o) {
      for (std::size_t ky = 0; ky < kh; ++ky)
        for (std::size_t kx = 0; kx < kw; ++kx)
          for (std::size_t c = 0; c < cin_g; ++c) {
            const storage_type v =
                weights[detail::weight_offset(layout, o, c, ky, kx, cin_g, kh, kw)];
            row[(ky * kw + kx) * cin_g + c] = v;
            w.tap_sums_[o * taps + ky * kw + kx] += v;
            w.channel_sums_[o] += v;
            if (c == 0) w.tap_major_[(ky * kw + kx) * out_c + o] = v;
          }
      w.planes_.set_row(o, row);  // checks the values
    }
    w.gemm_ = std::make_shared<detail::conv_gemm_operands>();
    return w;
  }

  std::size_t out_channels() const noexcept { return out_c_; }
  std::size_t in_channels_per_group() const noexcept { return cin_g_; }
  std::size_t kernel_h() const noexcept { return kh_; }
  std::size_t kernel_w() const noexcept { return kw_; }
  std::size_t groups() const noexcept { return groups_; }
  /// All output channels' planes, group g in rows g*cout/groups ...
  const bitplane_matrix<WT>& planes() const noexcept { return planes_; }
  /// The GEMM operand of group g (cout/groups rows).
  bitplane_view group_view(std::size_t g) const noexcept {
    const std::size_t rows = out_c_ / groups_;
    return bitplane_view(bitwidth_of<WT>(), rows, planes_.cols(), planes_.words_per_plane(),
                         planes_.data() + g * rows * planes_.row_stride());
  }
  /// Each group's GEMM operand as packed_bitserial_weights (index g), laid out on the first
  /// call (thread-safe) and kept: a layer's calls then skip the bit-serial path's interleave.
  std::span<const packed_bitserial_weights> bitserial_weights() const {
    if (!gemm_) return {};
    std::call_once(gemm_->bitserial_once, [&] {
      for (std::size_t g = 0; g < groups_; ++g)
        gemm_->bitserial.push_back(packed_bitserial_weights::pack(group_view(g)));
    });
    return gemm_->bitserial;
  }
  /// The same as packed_int8_weights, for the int8 kernel (wide bit pairs).
  std::span<const packed_int8_weights> int8_weights() const {
    if (!gemm_) return {};
    std::call_once(gemm_->int8_once, [&] {
      for (std::size_t g = 0; g < groups_; ++g)
        gemm_->int8.push_back(packed_int8_weights::pack(group_view(g)));
    });
    return gemm_->int8;
  }
  /// Sum of output channel o's weights.
  std::span<const std::int64_t> channel_sums() const noexcept { return channel_sums_; }
  /// Sum over cin of the weights at (o, tap = ky * kw + kx), index o * kh * kw + tap.
  std::span<const std::int64_t> tap_sums() const noexcept { return tap_sums_; }
  /// When cin/groups == 1 (depthwise): weight (o, tap) at tap * out_c + o, as int32 for the
  /// direct path.
  std::span<const std::int32_t> tap_major() const noexcept { return tap_major_; }

 private:
  std::size_t out_c_ = 0, cin_g_ = 0, kh_ = 0, kw_ = 0, groups_ = 1;
  bitplane_matrix<WT> planes_;
  std::shared_ptr<detail::conv_gemm_operands> gemm_;
  std::vector<std::int64_t> channel_sums_, tap_sums_;
  std::vector<std::int32_t> tap_major_;
};

/// Activations packed for the GEMM: for each group g and output pixel m (n, oh, ow), the
/// (kh, kw, cin/groups) patch as AT bit planes, laid out like a bitplane_matrix
/// ([g][m][plane][word]); padded taps hold code 0 (corrected afterwards).
template <quantized_type AT>
struct conv_activation_planes {
  conv2d_geometry geometry;
  std::size_t words_per_plane = 0;
  aligned_vector<std::uint64_t> bits;

  bitplane_view group_view(std::size_t g) const noexcept {
    const std::size_t m = geometry.pixels();
    return bitplane_view(bitwidth_of<AT>(), m, geometry.patch(), words_per_plane,
                         bits.data() + g * m * AT::bits * words_per_plane);
  }
};

namespace detail {

template <quantized_type AT>
[[noreturn]] void throw_bad_activation(std::size_t index, int v) {
  throw value_error(mixq::detail::cat("bitserial_conv2d: input value ", v, " at flat index ", index,
                                      " ", not_a_value_of<AT>()));
}

/// ORs the low `nbits` bits of src (higher bits zero) into dst at bit offset `off`, never
/// touching words at or past dst_words.
inline void or_bits_at(std::uint64_t* dst, std::size_t dst_words, const std::uint64_t* src,
                       std::size_t src_words, std::size_t off) noexcept {
  const std::size_t base = off / 64, s = off % 64;
  if (s == 0) {
    for (std::size_t i = 0; i < src_words; ++i) dst[base + i] |= src[i];
    return;
  }
  for (std::size_t i = 0; i < src_words; ++i) {
    dst[base + i] |= src[i] << s;
    if (base + i + 1 < dst_words) dst[base + i + 1] |= src[i] >> (64 - s);
  }
}

}  // namespace detail

/// Implicit im2col into bit planes. Each input pixel's channels of each group are first turned
/// into AT::bits plane fragments (checking the values), then every patch row is the
/// concatenation of its taps' fragments (bit shifts, no unpacked copy); padded taps stay zero.
template <quantized_type AT>
void pack_conv_activations(std::span<const typename AT::storage_type> input,
                           const conv2d_geometry& g, const gemm_options& options,
                           conv_activation_planes<AT>& out) {
  constexpr int B = AT::bits;
  const std::size_t cin_g = g.cin_per_group(), frag_words = (cin_g + 63) / 64;
  const std::size_t in_pixels = g.batch * g.in_h * g.in_w;
  const std::size_t K = g.patch();
  const std::size_t wpp =
      (K + bitplane_block_bits - 1) / bitplane_block_bits * (bitplane_block_bits / 64);
  out.geometry = g;
  out.words_per_plane = wpp;
  const std::size_t M = g.pixels();
  out.bits.resize(g.groups * M * B * wpp);

  // Fragments: [pixel][group][plane][frag_words].
  aligned_vector<std::uint64_t> frag(in_pixels * g.groups * B * frag_words);
  const isa path = detail::packing_isa(options);
  thread_pool& pool = default_thread_pool();
  pool.parallel_for(
      in_pixels,
      [&](std::size_t p0, std::size_t p1) {
        for (std::size_t px = p0; px < p1; ++px)
          for (std::size_t grp = 0; grp < g.groups; ++grp) {
            const std::size_t first = px * g.in_c + grp * cin_g;
            std::uint64_t* dst = frag.data() + (px * g.groups + grp) * B * frag_words;
            detail::pack_codes<AT>(
                path, input.data() + first, cin_g, dst, frag_words,
                [&](std::size_t i, int v) { detail::throw_bad_activation<AT>(first + i, v); });
          }
      },
      options.num_threads);

  pool.parallel_for(
      M,
      [&](std::size_t m0, std::size_t m1) {
        for (std::size_t grp = 0; grp < g.groups; ++grp)
          for (std::size_t m = m0; m < m1; ++m) {
            const std::size_t n = m / (g.out_h * g.out_w), rem = m % (g.out_h * g.out_w);
            const std::size_t oh = rem / g.out_w, ow = rem % g.out_w;
            std::uint64_t* row = out.bits.data() + (grp * M + m) * B * wpp;
            if (cin_g % 64 == 0) {
              // Whole-word fragments: each tap is a plain word copy (or zeros when padded), so
              // the row needs no clearing pass and no read-modify-write. Geometry in locals and
              // copies as word loops: the stores would otherwise make the compiler reload every
              // geometry field and call memcpy for two words per tap.
              const std::size_t kh = g.kernel_h, kw = g.kernel_w, in_h = g.in_h, in_w = g.in_w;
              const std::size_t fw = frag_words, groups = g.groups, taps_words = kh * kw * fw;
              const std::uint64_t* frag_base = frag.data();
              for (std::size_t ky = 0; ky < kh; ++ky) {
                const std::ptrdiff_t y = g.in_y(oh, ky);
                const bool row_inside = y >= 0 && std::size_t(y) < in_h;
                for (std::size_t kx = 0; kx < kw; ++kx) {
                  const std::ptrdiff_t x = g.in_x(ow, kx);
                  const std::size_t at = (ky * kw + kx) * fw;
                  if (!row_inside || x < 0 || std::size_t(x) >= in_w) {
                    for (int p = 0; p < B; ++p)
                      for (std::size_t i = 0; i < fw; ++i) row[p * wpp + at + i] = 0;
                    continue;
                  }
                  const std::size_t px = (n * in_h + std::size_t(y)) * in_w + std::size_t(x);
                  const std::uint64_t* src = frag_base + (px * groups + grp) * B * fw;
                  for (int p = 0; p < B; ++p)
                    for (std::size_t i = 0; i < fw; ++i) row[p * wpp + at + i] = src[p * fw + i];
                }
              }
              for (int p = 0; p < B; ++p)
                for (std::size_t i = taps_words; i < wpp; ++i) row[p * wpp + i] = 0;
              continue;
            }
            std::memset(row, 0, B * wpp * 8);
            for (std::size_t ky = 0; ky < g.kernel_h; ++ky) {
              const std::ptrdiff_t y = g.in_y(oh, ky);
              for (std::size_t kx = 0; kx < g.kernel_w; ++kx) {
                const std::ptrdiff_t x = g.in_x(ow, kx);
                if (!g.inside(y, x)) continue;
                const std::size_t px = (n * g.in_h + std::size_t(y)) * g.in_w + std::size_t(x);
                const std::uint64_t* src = frag.data() + (px * g.groups + grp) * B * frag_words;
                const std::size_t off = (ky * g.kernel_w + kx) * cin_g;
                for (int p = 0; p < B; ++p)
                  detail::or_bits_at(row + p * wpp, wpp, src + p * frag_words, frag_words, off);
              }
            }
          }
      },
      options.num_threads);
}

}  // namespace mixq::kernels
