// integer_ops: the integer-domain steps of integer_model's fast path: byte im2col and
// convolutions of u8 codes with signed int8 weights whose zero point is folded in (the VNNI
// int8 GEMM), window code sums, requantization of int32 accumulators straight to the next
// layer's codes by per-channel thresholds, and max pooling on codes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/kernels/int8_gemm.hpp"

namespace mixq::deploy::detail {

/// Row-major (h, w, c) window geometry for the float ops and the code sums.
struct window_geometry {
  std::size_t n, h, w, c, oh, ow, k, stride, pad;
};

/// Convolution weights as signed bytes for the int8 GEMM on the raw u8 activation codes.
/// Folded (the usual case): byte = m * (code - zero point), m = 1 when every zero point is an
/// integer, 2 when they are half-integers such as DoReFa's (2^b - 1) / 2, so the GEMM gives m
/// times the real-valued accumulator with no correction term (zero padding is code 0 and adds
/// nothing). When those bytes overflow (8-bit DoReFa: 2 c - 255), byte = code - offset (offset
/// 128 for unsigned 8-bit codes) and m * real = m * GEMM + correction[o] * (window code sum),
/// correction[o] = m * (offset - zero point). One packed matrix per group, rows = the group's
/// outputs, columns = the (kh, kw, cin/groups) patch padded to a multiple of 4.
struct int8_conv_weights {
  std::vector<kernels::packed_int8_weights> groups;
  std::size_t patch = 0, patch4 = 0;
  int multiplier = 1;
  bool uses_sums = false;
  std::vector<std::int32_t> correction;
};

/// nullopt when neither form fits signed bytes (or m * zero point is not an integer).
inline std::optional<int8_conv_weights> make_int8_weights(const std::vector<std::int32_t>& ohwi,
                                                          std::size_t out, std::size_t patch,
                                                          std::size_t groups,
                                                          const std::vector<float>& zero_point) {
  auto z_of = [&](std::size_t o) { return zero_point[zero_point.size() == 1 ? 0 : o]; };
  int m = 1;
  for (float z : zero_point)
    if (z != std::nearbyint(z)) m = 2;
  for (float z : zero_point)
    if (float(m) * z != std::nearbyint(float(m) * z) || std::fabs(z) > 512.0f) return std::nullopt;
  int8_conv_weights w;
  w.patch = patch;
  w.patch4 = (patch + 3) / 4 * 4;
  w.multiplier = m;
  auto fits = [&](auto&& value_of) {
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t t = 0; t < patch; ++t) {
        const long v = value_of(o, ohwi[o * patch + t]);
        if (v < -128 || v > 127) return false;
      }
    return true;
  };
  auto folded = [&](std::size_t o, std::int32_t c) {
    return long(m) * long(c) - std::lround(double(m) * double(z_of(o)));
  };
  long offset = 0;
  for (std::int32_t c : ohwi) offset = c > 127 ? 128 : offset;
  auto shifted = [&](std::size_t, std::int32_t c) { return long(c) - offset; };
  if (!fits(folded)) {
    if (!fits(shifted)) return std::nullopt;
    w.uses_sums = true;
    w.correction.resize(out);
    for (std::size_t o = 0; o < out; ++o)
      w.correction[o] = std::int32_t(long(m) * offset - std::lround(double(m) * double(z_of(o))));
  }
  const std::size_t opg = out / groups;
  std::vector<std::int8_t> rows(opg * w.patch4);
  for (std::size_t g = 0; g < groups; ++g) {
    std::fill(rows.begin(), rows.end(), std::int8_t(0));
    for (std::size_t j = 0; j < opg; ++j) {
      const std::size_t o = g * opg + j;
      for (std::size_t t = 0; t < patch; ++t) {
        const std::int32_t c = ohwi[o * patch + t];
        rows[j * w.patch4 + t] = std::int8_t(w.uses_sums ? shifted(o, c) : folded(o, c));
      }
    }
    w.groups.push_back(kernels::packed_int8_weights::pack(opg, w.patch4, rows.data(), w.patch4));
  }
  return w;
}

/// Bytes a buffer that im2col_codes reads or writes needs past its end: spans are copied in
/// 16-byte pieces that may run over (the overrun is rewritten or is padding).
inline constexpr std::size_t im2col_slack = 64;

/// Copies n bytes as 16-byte pieces (fixed-size memcpy: plain vector moves, no call); may
/// read and write up to 15 bytes past n.
inline void copy_over(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  for (std::size_t o = 0; o < n; o += 16) std::memcpy(dst + o, src + o, 16);
}

/// Im2col of group `c0 .. c0 + cin_g` of NHWC u8 codes: row m (output pixel) holds the
/// (kh, kw, cin_g) patch, padded taps and the tail up to `patch4` are code 0. `in` and `out`
/// need im2col_slack bytes past their ends. A row of kw taps whose pixels are all inside is
/// one contiguous span of the input when the group is all channels.
inline void im2col_codes(const std::uint8_t* in, const window_geometry& g, std::size_t c0,
                         std::size_t cin_g, std::size_t patch4, std::uint8_t* out) {
  const std::size_t k = g.k, patch = k * k * cin_g, span = k * cin_g;
  const bool whole = cin_g == g.c;
  std::size_t m = 0;
  for (std::size_t b = 0; b < g.n; ++b)
    for (std::size_t oy = 0; oy < g.oh; ++oy)
      for (std::size_t ox = 0; ox < g.ow; ++ox, ++m) {
        std::uint8_t* row = out + m * patch4;
        const long x0 = long(ox * g.stride) - long(g.pad);
        const bool cols_in = x0 >= 0 && x0 + long(k) <= long(g.w);
        for (std::size_t ky = 0; ky < k; ++ky) {
          const long iy = long(oy * g.stride + ky) - long(g.pad);
          std::uint8_t* dst = row + ky * span;
          if (iy < 0 || iy >= long(g.h)) {
            std::memset(dst, 0, span);
            continue;
          }
          const std::uint8_t* line = in + (b * g.h + std::size_t(iy)) * g.w * g.c + c0;
          if (cols_in && whole) {
            copy_over(dst, line + std::size_t(x0) * g.c, span);
            continue;
          }
          for (std::size_t kx = 0; kx < k; ++kx) {
            const long ix = x0 + long(kx);
            std::uint8_t* d = dst + kx * cin_g;
            if (ix < 0 || ix >= long(g.w))
              std::memset(d, 0, cin_g);
            else
              std::memcpy(d, line + std::size_t(ix) * g.c, cin_g);
          }
        }
        if (patch4 > patch) std::memset(row + patch, 0, patch4 - patch);
      }
}

/// acc (NHWC int32, m times the real accumulator) = conv of NHWC u8 codes with the int8
/// weights. A 1x1, stride 1, unpadded, ungrouped conv whose channels are a multiple of 4 reads
/// the codes in place; the others go through `scratch` (im2col).
inline void int8_conv(const std::uint8_t* codes, const window_geometry& g,
                      const int8_conv_weights& w, std::size_t out_channels,
                      std::vector<std::uint8_t>& scratch, std::int32_t* acc) {
  const std::size_t groups = w.groups.size(), cin_g = g.c / groups, opg = out_channels / groups;
  const std::size_t M = g.n * g.oh * g.ow;
  kernels::gemm_options single;
  single.num_threads = 1;  // integer_model threads over the batch
  if (groups == 1 && g.k == 1 && g.stride == 1 && g.pad == 0 && g.c == w.patch4) {
    kernels::gemm_u8s8s32(M, codes, g.c, w.groups[0], acc, out_channels, single);
    return;
  }
  if (scratch.size() < M * w.patch4 + im2col_slack) scratch.resize(M * w.patch4 + im2col_slack);
  for (std::size_t grp = 0; grp < groups; ++grp) {
    im2col_codes(codes, g, grp * cin_g, cin_g, w.patch4, scratch.data());
    kernels::gemm_u8s8s32(M, scratch.data(), w.patch4, w.groups[grp], acc + grp * opg, out_channels,
                          single);
  }
}

/// Depthwise convolution of NHWC u8 codes (one output per channel) with int32 weights
/// w[tap * C + c]: out[pixel][c] = sum over the window's inside taps of code * weight. The
/// channels go in blocks of 16 held in a local accumulator (one vector register), the window
/// is clipped to the image once per pixel rather than tested per tap.
inline void depthwise_codes(const std::uint8_t* in, const window_geometry& g, const std::int32_t* w,
                            std::int32_t* out) {
  const std::size_t C = g.c, k = g.k;
  for (std::size_t b = 0; b < g.n; ++b)
    for (std::size_t oy = 0; oy < g.oh; ++oy) {
      const long y0 = long(oy * g.stride) - long(g.pad);
      const std::size_t ky0 = std::size_t(std::max(0L, -y0));
      const std::size_t ky1 = std::size_t(std::min(long(k), long(g.h) - y0));
      for (std::size_t ox = 0; ox < g.ow; ++ox) {
        const long x0 = long(ox * g.stride) - long(g.pad);
        const std::size_t kx0 = std::size_t(std::max(0L, -x0));
        const std::size_t kx1 = std::size_t(std::min(long(k), long(g.w) - x0));
        std::int32_t* o = out + ((b * g.oh + oy) * g.ow + ox) * C;
        std::size_t c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) {
          std::int32_t acc[16] = {};
          for (std::size_t ky = ky0; ky < ky1; ++ky) {
            const std::uint8_t* row = in + ((b * g.h + std::size_t(y0 + long(ky))) * g.w) * C + c0;
            for (std::size_t kx = kx0; kx < kx1; ++kx) {
              const std::uint8_t* a = row + std::size_t(x0 + long(kx)) * C;
              const std::int32_t* wt = w + (ky * k + kx) * C + c0;
              for (int j = 0; j < 16; ++j) acc[j] += std::int32_t(a[j]) * wt[j];
            }
          }
          for (int j = 0; j < 16; ++j) o[c0 + std::size_t(j)] = acc[j];
        }
        for (std::size_t c = c0; c < C; ++c) {
          std::int32_t acc = 0;
          for (std::size_t ky = ky0; ky < ky1; ++ky)
            for (std::size_t kx = kx0; kx < kx1; ++kx)
              acc += std::int32_t(in[((b * g.h + std::size_t(y0 + long(ky))) * g.w +
                                      std::size_t(x0 + long(kx))) *
                                         C +
                                     c]) *
                     w[(ky * k + kx) * C + c];
          o[c] = acc;
        }
      }
    }
}

/// Sum of the input codes of each output pixel's window, per group (padding adds 0), into
/// `out` (N*OH*OW*groups): channel sums of each input pixel first (in `pixel`), then the
/// window sums of those.
inline void window_code_sums(const std::uint8_t* codes, const window_geometry& g,
                             std::size_t groups, std::vector<std::int32_t>& pixel,
                             std::vector<std::int32_t>& out) {
  const std::size_t cin_g = g.c / groups;
  pixel.resize(g.n * g.h * g.w * groups);
  for (std::size_t p = 0; p < g.n * g.h * g.w; ++p)
    for (std::size_t gi = 0; gi < groups; ++gi) {
      const std::uint8_t* src = codes + p * g.c + gi * cin_g;
      std::int32_t sum = 0;
      for (std::size_t c = 0; c < cin_g; ++c) sum += src[c];
      pixel[p * groups + gi] = sum;
    }
  out.assign(g.n * g.oh * g.ow * groups, 0);
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
}

/// Requantization by thresholds: the next layer's code of channel c is the number of levels
/// k = 1..L with sign[c] * acc >= t[(k - 1) * channels + c]. Exact for any chain of monotone
/// per-channel float steps (scale and shift, affine, ReLU, PACT or LSQ encoding) ending in a code,
/// because such a chain is monotone in the accumulator: the thresholds are where it steps.
struct requant_thresholds {
  int levels = 0;
  std::size_t channels = 0;
  std::vector<std::int32_t> sign, t;
  /// sign and t repeated for `tile` pixels (t level-major: [level][tile * channels]), so the
  /// requantization loops run over long rows whatever the channel count.
  std::size_t tile = 0;
  std::vector<std::int32_t> tiled_sign, tiled_t;

  void make_tiles() {
    tile = std::max<std::size_t>(1, 256 / std::max<std::size_t>(1, channels));
    const std::size_t w = tile * channels;
    tiled_sign.resize(w);
    tiled_t.resize(std::size_t(levels) * w);
    for (std::size_t j = 0; j < w; ++j) {
      const std::size_t c = j % channels;
      tiled_sign[j] = sign[c];
      for (int k = 0; k < levels; ++k)
        tiled_t[std::size_t(k) * w + j] = t[std::size_t(k) * channels + c];
    }
  }
};

/// Thresholds of `code_of(c, a)` (the code of accumulator a on channel c, monotone in a, in
/// 0..levels), found by binary search on each step; exact for |a| < 2^31 - 1.
template <class CodeOf>
requant_thresholds make_thresholds(std::size_t channels, int levels, CodeOf&& code_of) {
  // The accumulator domain is [lo, hi] (a real layer stays far inside it); a level that
  // even hi does not reach gets threshold INT32_MAX, one that lo reaches INT32_MIN.
  constexpr std::int32_t hi = std::numeric_limits<std::int32_t>::max() - 1, lo = -hi;
  requant_thresholds r;
  r.levels = levels;
  r.channels = channels;
  r.sign.assign(channels, 1);
  r.t.assign(std::size_t(levels) * channels, hi);
  for (std::size_t c = 0; c < channels; ++c) {
    const std::int32_t s = code_of(c, lo) <= code_of(c, hi) ? 1 : -1;
    r.sign[c] = s;
    auto g = [&](std::int32_t v) { return code_of(c, s * v); };  // non-decreasing in v
    for (int k = 1; k <= levels; ++k) {
      std::int32_t& t = r.t[std::size_t(k - 1) * channels + c];
      if (g(hi) < k) {
        t = std::numeric_limits<std::int32_t>::max();
        continue;
      }
      if (g(lo) >= k) {
        t = std::numeric_limits<std::int32_t>::min();
        continue;
      }
      std::int64_t a = lo, b = hi;  // g(a) < k <= g(b)
      while (b - a > 1) {
        const std::int64_t mid = a + (b - a) / 2;
        if (g(std::int32_t(mid)) >= k)
          b = mid;
        else
          a = mid;
      }
      t = std::int32_t(b);
    }
  }
  r.make_tiles();
  return r;
}

namespace requant {
// n values of one tile: code = number of levels whose threshold sign * acc reaches.
template <int Levels>
inline void tile_fixed(const std::int32_t* acc, std::size_t n, const requant_thresholds& r,
                       std::uint8_t* out) {
  const std::size_t w = r.tile * r.channels;
  const std::int32_t* sign = r.tiled_sign.data();
  const std::int32_t* t = r.tiled_t.data();
  for (std::size_t j = 0; j < n; ++j) {
    // sign * a with wrap-around (a = INT32_MIN cannot come out of a real layer).
    const std::int32_t v = std::int32_t(std::uint32_t(sign[j]) * std::uint32_t(acc[j]));
    std::int32_t code = 0;
    for (int k = 0; k < Levels; ++k) code += v >= t[std::size_t(k) * w + j] ? 1 : 0;
    out[j] = std::uint8_t(code);
  }
}
// Level by level over the whole tile (vectorises for any level count; the per-value loop
// over 7 or 15 levels does not). `v` and `cnt` hold n values each.
inline void tile_any(const std::int32_t* acc, std::size_t n, const requant_thresholds& r,
                     std::uint8_t* out, std::int32_t* v, std::int32_t* cnt) {
  const std::size_t w = r.tile * r.channels;
  const std::int32_t* sign = r.tiled_sign.data();
  for (std::size_t j = 0; j < n; ++j) {
    v[j] = std::int32_t(std::uint32_t(sign[j]) * std::uint32_t(acc[j]));
    cnt[j] = 0;
  }
  for (int k = 0; k < r.levels; ++k) {
    const std::int32_t* t = r.tiled_t.data() + std::size_t(k) * w;
    for (std::size_t j = 0; j < n; ++j) cnt[j] += v[j] >= t[j] ? 1 : 0;
  }
  for (std::size_t j = 0; j < n; ++j) out[j] = std::uint8_t(cnt[j]);
}
}  // namespace requant

/// codes (pixels x channels u8) from accumulators by the thresholds; `scratch` is reused.
inline void requantize(const std::int32_t* acc, std::size_t pixels, const requant_thresholds& r,
                       std::uint8_t* codes, std::vector<std::int32_t>& scratch) {
  const std::size_t C = r.channels;
  if (scratch.size() < 2 * r.tile * C) scratch.resize(2 * r.tile * C);
  for (std::size_t m = 0; m < pixels; m += r.tile) {
    const std::size_t n = std::min(r.tile, pixels - m) * C;
    const std::int32_t* a = acc + m * C;
    std::uint8_t* out = codes + m * C;
    switch (r.levels) {  // 1 and 2 bits: unrolled per value
      case 1:
        requant::tile_fixed<1>(a, n, r, out);
        break;
      case 3:
        requant::tile_fixed<3>(a, n, r, out);
        break;
      default:
        requant::tile_any(a, n, r, out, scratch.data(), scratch.data() + r.tile * C);
    }
  }
}

/// Max pooling of NHWC codes (padded taps do not take part, as -inf padding in float): exact,
/// because encoding is monotone, so the max of the codes is the code of the max.
inline void max_pool_codes(const std::uint8_t* in, const window_geometry& g, std::uint8_t* out) {
  for (std::size_t b = 0; b < g.n; ++b)
    for (std::size_t oy = 0; oy < g.oh; ++oy)
      for (std::size_t ox = 0; ox < g.ow; ++ox) {
        std::uint8_t* o = out + ((b * g.oh + oy) * g.ow + ox) * g.c;
        std::memset(o, 0, g.c);
        for (std::size_t ky = 0; ky < g.k; ++ky) {
          const long iy = long(oy * g.stride + ky) - long(g.pad);
          if (iy < 0 || iy >= long(g.h)) continue;
          for (std::size_t kx = 0; kx < g.k; ++kx) {
            const long ix = long(ox * g.stride + kx) - long(g.pad);
            if (ix < 0 || ix >= long(g.w)) continue;
            const std::uint8_t* p =
                in + ((b * g.h + std::size_t(iy)) * g.w + std::size_t(ix)) * g.c;
            for (std::size_t c = 0; c < g.c; ++c) o[c] = std::max(o[c], p[c]);
          }
        }
      }
}

}  // namespace mixq::deploy::detail
