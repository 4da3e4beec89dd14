// Image ops on NCHW tensors: conv2d (stride, padding, groups; im2col + gemm_f32 both ways),
// max/average pooling, global average pooling and batch normalisation (train and eval, with
// running statistics), each with its backward beside the forward.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "mixq/autodiff/parallel.hpp"
#include "mixq/autodiff/var.hpp"
#include "mixq/kernels/gemm_f32.hpp"

namespace mixq::autodiff {

namespace detail {
/// Geometry of one 2-D window op.
struct window_geometry {
  std::size_t N, C, H, W, kh, kw, stride, pad, Ho, Wo;
};

inline window_geometry make_window(const shape_t& x, std::size_t kh, std::size_t kw,
                                   std::size_t stride, std::size_t pad, const char* op) {
  if (x.size() != 4)
    throw shape_error(cat(op, ": input must be [N, C, H, W], got ", shape_string(x)));
  if (stride == 0) throw value_error(cat(op, ": stride must be >= 1"));
  if (kh == 0 || kw == 0) throw shape_error(cat(op, ": kernel size must be >= 1"));
  window_geometry g{x[0], x[1], x[2], x[3], kh, kw, stride, pad, 0, 0};
  if (g.H + 2 * pad < kh || g.W + 2 * pad < kw)
    throw shape_error(cat(op, ": kernel ", kh, "x", kw, " larger than padded input ", g.H + 2 * pad,
                          "x", g.W + 2 * pad));
  g.Ho = (g.H + 2 * pad - kh) / stride + 1;
  g.Wo = (g.W + 2 * pad - kw) / stride + 1;
  return g;
}

/// The output columns [lo, hi) whose input column ox*stride - pad + j lies inside [0, W).
struct valid_columns {
  std::size_t lo, hi;
};
inline valid_columns columns_inside(const window_geometry& g, std::size_t j) {
  const long off = long(j) - long(g.pad), s = long(g.stride), W = long(g.W);
  const long lo = off >= 0 ? 0 : (-off + s - 1) / s;
  const long hi = W - 1 - off < 0 ? 0 : std::min(long(g.Wo), (W - 1 - off) / s + 1);
  return {std::size_t(std::min(lo, hi)), std::size_t(hi)};
}

/// col[(c*kh + i)*kw + j][oy*Wo + ox] = x[c][oy*s - p + i][ox*s - p + j] (0 outside). Each
/// output row is split into its zero borders and the run of columns inside the input, which
/// is a plain copy for stride 1.
inline void im2col(const float* x, std::size_t C, const window_geometry& g, float* col) {
  const std::size_t P = g.Ho * g.Wo;
  for (std::size_t c = 0; c < C; ++c)
    for (std::size_t i = 0; i < g.kh; ++i)
      for (std::size_t j = 0; j < g.kw; ++j) {
        float* dst = col + ((c * g.kh + i) * g.kw + j) * P;
        const auto [lo, hi] = columns_inside(g, j);
        for (std::size_t oy = 0; oy < g.Ho; ++oy) {
          const long iy = long(oy * g.stride + i) - long(g.pad);
          float* d = dst + oy * g.Wo;
          if (iy < 0 || iy >= long(g.H) || lo == hi) {
            std::fill(d, d + g.Wo, 0.0f);
            continue;
          }
          std::fill(d, d + lo, 0.0f);
          std::fill(d + hi, d + g.Wo, 0.0f);
          // Input column of output column ox: ox * stride + j - pad (inside for lo <= ox < hi).
          const float* src = x + (c * g.H + std::size_t(iy)) * g.W + (lo * g.stride + j - g.pad);
          if (g.stride == 1)
            std::copy(src, src + (hi - lo), d + lo);
          else
            for (std::size_t ox = lo; ox < hi; ++ox) d[ox] = src[(ox - lo) * g.stride];
        }
      }
}

/// The adjoint of im2col: adds every column entry back onto the input pixel it came from.
inline void col2im_add(const float* col, std::size_t C, const window_geometry& g, float* x) {
  const std::size_t P = g.Ho * g.Wo;
  for (std::size_t c = 0; c < C; ++c)
    for (std::size_t i = 0; i < g.kh; ++i)
      for (std::size_t j = 0; j < g.kw; ++j) {
        const float* src = col + ((c * g.kh + i) * g.kw + j) * P;
        const auto [lo, hi] = columns_inside(g, j);
        if (lo == hi) continue;
        for (std::size_t oy = 0; oy < g.Ho; ++oy) {
          const long iy = long(oy * g.stride + i) - long(g.pad);
          if (iy < 0 || iy >= long(g.H)) continue;
          float* dst = x + (c * g.H + std::size_t(iy)) * g.W + (lo * g.stride + j - g.pad);
          const float* s = src + oy * g.Wo;
          if (g.stride == 1)
            for (std::size_t ox = lo; ox < hi; ++ox) dst[ox - lo] += s[ox];
          else
            for (std::size_t ox = lo; ox < hi; ++ox) dst[(ox - lo) * g.stride] += s[ox];
        }
      }
}

/// Sum of (p[i] - mean)^2, in float lanes as sum_lanes.
inline double sum_squared_deviation_lanes(const float* p, std::size_t n, double mean) {
  const float m = float(mean);
  float acc[16] = {};
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (std::size_t l = 0; l < 16; ++l) acc[l] += (p[i + l] - m) * (p[i + l] - m);
  double s = 0;
  for (float a : acc) s += a;
  for (; i < n; ++i) s += double(p[i] - m) * double(p[i] - m);
  return s;
}

/// Adds sum(d) and sum(d[i] * (p[i] - mean)) to s_d and s_dp, in float lanes as sum_lanes.
inline void add_sums_dy_dyxc(const float* d, const float* p, std::size_t n, float mean, double& s_d,
                             double& s_dp) {
  float a1[16] = {}, a2[16] = {};
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (std::size_t l = 0; l < 16; ++l) {
      a1[l] += d[i + l];
      a2[l] += d[i + l] * (p[i + l] - mean);
    }
  for (std::size_t l = 0; l < 16; ++l) {
    s_d += a1[l];
    s_dp += a2[l];
  }
  for (; i < n; ++i) {
    s_d += d[i];
    s_dp += double(d[i]) * double(p[i] - mean);
  }
}

/// An uninitialised float buffer for per-thread scratch (im2col columns, partial sums) that
/// is overwritten before it is read; skips the zero-fill a std::vector would do.
inline std::unique_ptr<float[]> scratch(std::size_t n) {
  return n ? std::unique_ptr<float[]>(new float[n]) : nullptr;
}

/// Sum of n floats, in 16 independent lanes (which the compiler vectorises without
/// reassociating) folded into a double.
inline double sum_lanes(const float* p, std::size_t n) {
  float acc[16] = {};
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (std::size_t l = 0; l < 16; ++l) acc[l] += p[i + l];
  double s = 0;
  for (float a : acc) s += a;
  for (; i < n; ++i) s += p[i];
  return s;
}
}  // namespace detail

/// 2-D convolution (cross-correlation): x [N, C, H, W], w [O, C/groups, kh, kw], optional
/// bias [O] -> [N, O, Ho, Wo]. Per sample and group: Y = W col(x); dW += dY col^T;
/// dx = col2im(W^T dY); db = sum of dY over N, Ho, Wo. groups == C == O is depthwise.
inline var conv2d(const var& x, const var& w, const var& b = var(), std::size_t stride = 1,
                  std::size_t padding = 0, std::size_t groups = 1) {
  using kernels::transpose;
  if (w.shape().size() != 4)
    throw shape_error(
        detail::cat("conv2d: weight must be [O, C/groups, kh, kw], got ", shape_string(w.shape())));
  const auto g =
      detail::make_window(x.shape(), w.shape()[2], w.shape()[3], stride, padding, "conv2d");
  const std::size_t O = w.shape()[0];
  if (groups == 0 || g.C % groups || O % groups)
    throw shape_error(detail::cat("conv2d: groups=", groups, " must divide input channels ", g.C,
                                  " and output channels ", O));
  const std::size_t Cg = g.C / groups, Og = O / groups;
  if (w.shape()[1] != Cg)
    throw shape_error(detail::cat("conv2d: weight ", shape_string(w.shape()), " has ", w.shape()[1],
                                  " input channels per group, expected ", Cg, " (input channels ",
                                  g.C, " / groups ", groups, ")"));
  const bool has_b = b.defined();
  if (has_b && (b.shape().size() != 1 || b.shape()[0] != O))
    throw shape_error(
        detail::cat("conv2d: bias has shape ", shape_string(b.shape()), ", expected [", O, "]"));
  const std::size_t P = g.Ho * g.Wo, CKK = Cg * g.kh * g.kw;
  const bool direct = g.kh == 1 && g.kw == 1 && stride == 1 && padding == 0;  // col == x
  ftensor y = detail::cache().take({g.N, O, g.Ho, g.Wo});
  const float *px = x.value().data(), *pw = w.value().data();
  const float* pb = has_b ? b.value().data() : nullptr;
  // Samples are split across threads; each chunk has its own im2col buffer.
  detail::parallel_chunks(g.N, [&](std::size_t n0, std::size_t n1, unsigned) {
    const auto col = detail::scratch(direct ? 0 : CKK * P);
    for (std::size_t n = n0; n < n1; ++n)
      for (std::size_t gr = 0; gr < groups; ++gr) {
        const float* xin = px + (n * g.C + gr * Cg) * g.H * g.W;
        if (!direct) detail::im2col(xin, Cg, g, col.get());
        float* out = y.data() + (n * O + gr * Og) * P;
        kernels::gemm_f32(transpose::no, transpose::no, Og, P, CKK, 1.0f, pw + gr * Og * CKK, CKK,
                          direct ? xin : col.get(), P, 0.0f, out, P);
        if (pb)
          for (std::size_t o = 0; o < Og; ++o)
            for (std::size_t p = 0; p < P; ++p) out[o * P + p] += pb[gr * Og + o];
      }
  });
  std::vector<var> parents{x, w};
  if (has_b) parents.push_back(b);
  return detail::make_result(
      std::move(y), std::move(parents), "conv2d",
      [g, groups, Cg, Og, O, P, CKK, direct](node& self) {
        const float *px = self.parents[0]->value.data(), *pw = self.parents[1]->value.data();
        const float* G = self.grad.data();
        ftensor* gw = detail::parent_grad(self, 1);
        ftensor* gb = self.parents.size() > 2 ? detail::parent_grad(self, 2) : nullptr;
        const detail::grad_target gx = detail::parent_grad_target(self, 0);
        // dW = dY col^T per sample and group, as gemm(dY, col transposed). When the weight
        // has fewer columns than rows (few input channels, as in a first layer), the product
        // is formed transposed, dW^T = col dY^T: the GEMM pads rows to a narrower tile than
        // columns, so the small dimension belongs in the rows.
        const bool dw_transposed = CKK < Og;
        // Samples split across threads: dx slices are disjoint; dW and db go to per-chunk
        // partial sums added up afterwards.
        const std::size_t wsize = self.parents[1]->value.size();
        const unsigned parts = threads();
        const auto dw_part = detail::scratch(gw ? parts * wsize : 0);
        const auto db_part = detail::scratch(gb ? parts * O : 0);
        const unsigned used = detail::parallel_chunks(g.N, [&](std::size_t n0, std::size_t n1,
                                                               unsigned chunk) {
          const auto col = detail::scratch(gw && !direct ? CKK * P : 0);
          const auto dcol = detail::scratch(gx && !direct ? CKK * P : 0);
          float* dw = gw ? dw_part.get() + chunk * wsize : nullptr;
          float* db = gb ? db_part.get() + chunk * O : nullptr;
          if (dw) std::fill(dw, dw + wsize, 0.0f);
          if (db) std::fill(db, db + O, 0.0f);
          for (std::size_t n = n0; n < n1; ++n)
            for (std::size_t gr = 0; gr < groups; ++gr) {
              const std::size_t xoff = (n * g.C + gr * Cg) * g.H * g.W;
              const float* dy = G + (n * O + gr * Og) * P;
              if (dw) {
                const float* c = px + xoff;
                if (!direct) {
                  detail::im2col(px + xoff, Cg, g, col.get());
                  c = col.get();
                }
                if (dw_transposed)  // dw holds [group][CKK][Og] here
                  kernels::gemm_f32(transpose::no, transpose::yes, CKK, Og, P, 1.0f, c, P, dy, P,
                                    1.0f, dw + gr * Og * CKK, Og);
                else
                  kernels::gemm_f32(transpose::no, transpose::yes, Og, CKK, P, 1.0f, dy, P, c, P,
                                    1.0f, dw + gr * Og * CKK, CKK);
              }
              if (gx) {  // a fresh buffer gets this sample's slice zeroed first
                float* dx = gx.data + xoff;
                if (direct) {
                  kernels::gemm_f32(transpose::yes, transpose::no, CKK, P, Og, 1.0f,
                                    pw + gr * Og * CKK, CKK, dy, P, gx.fresh ? 0.0f : 1.0f, dx, P);
                } else {
                  kernels::gemm_f32(transpose::yes, transpose::no, CKK, P, Og, 1.0f,
                                    pw + gr * Og * CKK, CKK, dy, P, 0.0f, dcol.get(), P);
                  if (gx.fresh) std::fill(dx, dx + Cg * g.H * g.W, 0.0f);
                  detail::col2im_add(dcol.get(), Cg, g, dx);
                }
              }
              if (db)
                for (std::size_t o = 0; o < Og; ++o)
                  db[gr * Og + o] += float(detail::sum_lanes(dy + o * P, P));
            }
        });
        for (unsigned c = 0; c < used; ++c) {
          if (gw) {
            const float* dw = dw_part.get() + c * wsize;
            if (dw_transposed) {
              for (std::size_t gr = 0; gr < groups; ++gr)
                for (std::size_t o = 0; o < Og; ++o)
                  for (std::size_t r = 0; r < CKK; ++r)
                    (*gw)[(gr * Og + o) * CKK + r] += dw[(gr * CKK + r) * Og + o];
            } else {
              for (std::size_t i = 0; i < wsize; ++i) (*gw)[i] += dw[i];
            }
          }
          if (gb)
            for (std::size_t o = 0; o < O; ++o) (*gb)[o] += db_part[c * O + o];
        }
      });
}

namespace detail {
/// Offset within its plane of the first maximal element (in row-major window order) of the
/// window of output cell (oy, ox), skipping padding. Forward and backward both use it, so
/// the gradient goes to the element the forward pass picked.
inline std::size_t max_window_offset(const float* plane, const window_geometry& g, std::size_t oy,
                                     std::size_t ox) {
  float best = 0;
  std::size_t bi = 0;
  bool found = false;
  for (std::size_t i = 0; i < g.kh; ++i) {
    const long iy = long(oy * g.stride + i) - long(g.pad);
    if (iy < 0 || iy >= long(g.H)) continue;
    for (std::size_t j = 0; j < g.kw; ++j) {
      const long ix = long(ox * g.stride + j) - long(g.pad);
      if (ix < 0 || ix >= long(g.W)) continue;
      const std::size_t at = std::size_t(iy) * g.W + std::size_t(ix);
      if (!found || plane[at] > best) {
        best = plane[at];
        bi = at;
        found = true;
      }
    }
  }
  return bi;
}
}  // namespace detail

/// Max pooling with a k x k window (stride defaults to k, no padding). The gradient goes to
/// the first maximal element of each window. The 2x2, stride 2, unpadded case has a
/// straight-line path; the backward pass finds each window's maximum again rather than
/// storing its position.
inline var max_pool2d(const var& x, std::size_t k, std::size_t stride = 0,
                      std::size_t padding = 0) {
  if (stride == 0) stride = k;
  const auto g = detail::make_window(x.shape(), k, k, stride, padding, "max_pool2d");
  if (padding * 2 > k)
    throw shape_error(detail::cat("max_pool2d: padding ", padding, " exceeds half the window ", k));
  const bool two_by_two = k == 2 && stride == 2 && padding == 0;
  ftensor y = detail::cache().take({g.N, g.C, g.Ho, g.Wo});
  const float* px = x.value().data();
  // Planes are independent: split them across threads.
  detail::parallel_chunks_if_large(
      g.N * g.C, x.size(), [&](std::size_t p0, std::size_t p1, unsigned) {
        for (std::size_t nc = p0; nc < p1; ++nc) {
          const float* plane = px + nc * g.H * g.W;
          float* out = y.data() + nc * g.Ho * g.Wo;
          if (two_by_two) {
            for (std::size_t oy = 0; oy < g.Ho; ++oy) {
              const float *r0 = plane + 2 * oy * g.W, *r1 = r0 + g.W;
              float* o = out + oy * g.Wo;
              for (std::size_t ox = 0; ox < g.Wo; ++ox) {
                float best = r0[2 * ox];
                best = r0[2 * ox + 1] > best ? r0[2 * ox + 1] : best;
                best = r1[2 * ox] > best ? r1[2 * ox] : best;
                o[ox] = r1[2 * ox + 1] > best ? r1[2 * ox + 1] : best;
              }
            }
            continue;
          }
          for (std::size_t oy = 0; oy < g.Ho; ++oy)
            for (std::size_t ox = 0; ox < g.Wo; ++ox)
              out[oy * g.Wo + ox] = plane[detail::max_window_offset(plane, g, oy, ox)];
        }
      });
  return detail::make_result(std::move(y), {x}, "max_pool2d", [g, two_by_two](node& self) {
    const detail::grad_target gx = detail::parent_grad_target(self, 0);
    if (!gx) return;
    const float* px = self.parents[0]->value.data();
    const std::size_t HW = g.H * g.W;
    detail::parallel_chunks_if_large(
        g.N * g.C, g.N * g.C * HW, [&](std::size_t p0, std::size_t p1, unsigned) {
          for (std::size_t nc = p0; nc < p1; ++nc) {
            const float* plane = px + nc * HW;
            float* dplane = gx.data + nc * HW;
            const float* dy = self.grad.data() + nc * g.Ho * g.Wo;
            if (!two_by_two) {
              if (gx.fresh) std::fill(dplane, dplane + HW, 0.0f);
              for (std::size_t oy = 0; oy < g.Ho; ++oy)
                for (std::size_t ox = 0; ox < g.Wo; ++ox)
                  dplane[detail::max_window_offset(plane, g, oy, ox)] += dy[oy * g.Wo + ox];
              continue;
            }
            // 2x2 windows tile the plane but for an odd last row or column, which gets nothing.
            if (gx.fresh) {
              if (g.H % 2) std::fill(dplane + (g.H - 1) * g.W, dplane + HW, 0.0f);
              if (g.W % 2)
                for (std::size_t iy = 0; iy < 2 * g.Ho; ++iy) dplane[iy * g.W + g.W - 1] = 0.0f;
            }
            // Each window's four cells get dy or 0 by the forward pass's comparison chain (m_k:
            // cell k beat the best so far). The comparisons are data-dependent, so the selection
            // is by bit masks rather than branches, which would mispredict half the time.
            auto windows = [&](auto store) {
              for (std::size_t oy = 0; oy < g.Ho; ++oy) {
                const float *r0 = plane + 2 * oy * g.W, *r1 = r0 + g.W;
                float *d0 = dplane + 2 * oy * g.W, *d1 = d0 + g.W;
                for (std::size_t ox = 0; ox < g.Wo; ++ox) {
                  const float v0 = r0[2 * ox], v1 = r0[2 * ox + 1], v2 = r1[2 * ox],
                              v3 = r1[2 * ox + 1];
                  const float b1 = v1 > v0 ? v1 : v0, b2 = v2 > b1 ? v2 : b1;
                  const std::uint32_t m1 = 0u - std::uint32_t(v1 > v0),
                                      m2 = 0u - std::uint32_t(v2 > b1),
                                      m3 = 0u - std::uint32_t(v3 > b2);
                  const std::uint32_t gv = std::bit_cast<std::uint32_t>(dy[oy * g.Wo + ox]);
                  store(d0[2 * ox], std::bit_cast<float>(gv & ~m1 & ~m2 & ~m3));
                  store(d0[2 * ox + 1], std::bit_cast<float>(gv & m1 & ~m2 & ~m3));
                  store(d1[2 * ox], std::bit_cast<float>(gv & m2 & ~m3));
                  store(d1[2 * ox + 1], std::bit_cast<float>(gv & m3));
                }
              }
            };
            if (gx.fresh)
              windows([](float& d, float v) { d = v; });
            else
              windows([](float& d, float v) { d += v; });
          }
        });
  });
}

/// Average pooling with a k x k window (stride defaults to k); padded cells count as zeros
/// in the average (divisor k*k). dx = dy / (k*k) on every cell of the window.
inline var avg_pool2d(const var& x, std::size_t k, std::size_t stride = 0,
                      std::size_t padding = 0) {
  if (stride == 0) stride = k;
  const auto g = detail::make_window(x.shape(), k, k, stride, padding, "avg_pool2d");
  ftensor y = detail::cache().take({g.N, g.C, g.Ho, g.Wo}, 0.0f);
  const float inv = 1.0f / float(k * k);
  auto each = [g, k, stride, padding](auto&& f) {
    for (std::size_t nc = 0; nc < g.N * g.C; ++nc)
      for (std::size_t oy = 0; oy < g.Ho; ++oy)
        for (std::size_t ox = 0; ox < g.Wo; ++ox)
          for (std::size_t i = 0; i < k; ++i) {
            const long iy = long(oy * stride + i) - long(padding);
            if (iy < 0 || iy >= long(g.H)) continue;
            for (std::size_t j = 0; j < k; ++j) {
              const long ix = long(ox * stride + j) - long(padding);
              if (ix < 0 || ix >= long(g.W)) continue;
              f((nc * g.Ho + oy) * g.Wo + ox, (nc * g.H + std::size_t(iy)) * g.W + std::size_t(ix));
            }
          }
  };
  const float* px = x.value().data();
  each([&](std::size_t o, std::size_t i) { y[o] += px[i] * inv; });
  return detail::make_result(std::move(y), {x}, "avg_pool2d", [each, inv](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    each([&](std::size_t o, std::size_t i) { (*gx)[i] += self.grad[o] * inv; });
  });
}

/// [N, C, H, W] -> [N, C]: the mean over each channel's plane.
inline var global_avg_pool2d(const var& x) {
  if (x.shape().size() != 4)
    throw shape_error(detail::cat("global_avg_pool2d: input must be [N, C, H, W], got ",
                                  shape_string(x.shape())));
  const std::size_t N = x.shape()[0], C = x.shape()[1], HW = x.shape()[2] * x.shape()[3];
  if (HW == 0) throw shape_error("global_avg_pool2d: empty spatial plane");
  ftensor y = detail::cache().take({N, C});
  const float* px = x.value().data();
  for (std::size_t i = 0; i < N * C; ++i) {
    float s = 0;
    for (std::size_t p = 0; p < HW; ++p) s += px[i * HW + p];
    y[i] = s / float(HW);
  }
  return detail::make_result(std::move(y), {x}, "global_avg_pool2d", [HW](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    for (std::size_t i = 0; i < self.grad.size(); ++i)
      for (std::size_t p = 0; p < HW; ++p) (*gx)[i * HW + p] += self.grad[i] / float(HW);
  });
}

/// Batch normalisation over the channel axis 1 of [N, C] or [N, C, H, W] with scale gamma [C]
/// and shift beta [C]. Training: batch mean and biased variance normalise; the running
/// statistics move by `momentum` toward the batch mean and unbiased variance. Eval: the
/// running statistics normalise. Training backward, with xh = (x - mean) * istd and m values
/// per channel: dx = istd / m * (m * dxh - sum(dxh) - xh * sum(dxh * xh)), dxh = dy * gamma.
inline var batch_norm(const var& x, const var& gamma, const var& beta, ftensor& running_mean,
                      ftensor& running_var, bool training, float momentum = 0.1f,
                      float eps = 1e-5f) {
  const shape_t& s = x.shape();
  if (s.size() != 2 && s.size() != 4)
    throw shape_error(
        detail::cat("batch_norm: input must be [N, C] or [N, C, H, W], got ", shape_string(s)));
  const std::size_t N = s[0], C = s[1], HW = s.size() == 4 ? s[2] * s[3] : 1;
  const shape_t cs{C};
  expect_shape(gamma.value(), cs, "batch_norm gamma");
  expect_shape(beta.value(), cs, "batch_norm beta");
  expect_shape(running_mean, cs, "batch_norm running mean");
  expect_shape(running_var, cs, "batch_norm running variance");
  const std::size_t m = N * HW;
  if (training && m < 2)
    throw shape_error(
        detail::cat("batch_norm: training needs more than one value per channel, "
                    "got input ",
                    shape_string(s)));
  std::vector<float> mu(C), istd(C);
  const float* px = x.value().data();
  ftensor y = detail::cache().take(s);
  const float *pg = gamma.value().data(), *pb = beta.value().data();
  // Channels are independent: split them across threads.
  detail::parallel_chunks_if_large(C, x.size(), [&](std::size_t c0, std::size_t c1, unsigned) {
    for (std::size_t c = c0; c < c1; ++c) {
      if (training) {
        // Two passes (mean, then squared deviations) in float lanes summed per plane into
        // doubles: vectorised, and no cancellation when the mean dwarfs the spread.
        double s1 = 0, s2 = 0;
        for (std::size_t n = 0; n < N; ++n) s1 += detail::sum_lanes(px + (n * C + c) * HW, HW);
        const double mean = s1 / double(m);
        for (std::size_t n = 0; n < N; ++n)
          s2 += detail::sum_squared_deviation_lanes(px + (n * C + c) * HW, HW, mean);
        const double var = s2 / double(m);
        mu[c] = float(mean);
        istd[c] = float(1.0 / std::sqrt(var + eps));
        running_mean[c] = (1 - momentum) * running_mean[c] + momentum * float(mean);
        running_var[c] = (1 - momentum) * running_var[c] + momentum * float(s2 / double(m - 1));
      } else {
        mu[c] = running_mean[c];
        istd[c] = 1.0f / std::sqrt(running_var[c] + eps);
      }
      const float a = pg[c] * istd[c], b0 = pb[c] - mu[c] * a;
      for (std::size_t n = 0; n < N; ++n) {
        const float* p = px + (n * C + c) * HW;
        float* q = y.data() + (n * C + c) * HW;
        for (std::size_t i = 0; i < HW; ++i) q[i] = p[i] * a + b0;
      }
    }
  });
  return detail::make_result(
      std::move(y), {x, gamma, beta}, "batch_norm",
      [N, C, HW, m, mu = std::move(mu), istd = std::move(istd), training](node& self) {
        const float *px = self.parents[0]->value.data(), *pg = self.parents[1]->value.data();
        const float* G = self.grad.data();
        ftensor* gg = detail::parent_grad(self, 1);
        ftensor* gb = detail::parent_grad(self, 2);
        const detail::grad_target gx = detail::parent_grad_target(self, 0);
        detail::parallel_chunks_if_large(
            C, N * C * HW, [&](std::size_t c0, std::size_t c1, unsigned) {
              for (std::size_t c = c0; c < c1; ++c) {
                const float mean = mu[c], is = istd[c];
                double s_dy = 0, s_dyxc = 0;  // sum(dy), sum(dy * (x - mean))
                for (std::size_t n = 0; n < N; ++n)
                  detail::add_sums_dy_dyxc(G + (n * C + c) * HW, px + (n * C + c) * HW, HW, mean,
                                           s_dy, s_dyxc);
                const float sdy = float(s_dy), sdyxh = float(s_dyxc * is);  // sum(dy * xh)
                if (gg) (*gg)[c] += sdyxh;
                if (gb) (*gb)[c] += sdy;
                if (!gx) continue;
                // dx = k (dy - mdy - (x - mean) istd mdyxh) = k dy + (x - mean) u + v. In eval mode
                // the statistics are constants: dx = dy * gamma * istd.
                const float k = pg[c] * is;
                const float mdy = training ? sdy / float(m) : 0.0f,
                            mdyxh = training ? sdyxh / float(m) : 0.0f;
                const float u = -k * is * mdyxh, v = -k * mdy;
                for (std::size_t n = 0; n < N; ++n) {
                  const float *p = px + (n * C + c) * HW, *d = G + (n * C + c) * HW;
                  float* q = gx.data + (n * C + c) * HW;
                  if (gx.fresh)
                    for (std::size_t i = 0; i < HW; ++i) q[i] = k * d[i] + (p[i] - mean) * u + v;
                  else
                    for (std::size_t i = 0; i < HW; ++i) q[i] += k * d[i] + (p[i] - mean) * u + v;
                }
              }
            });
      });
}

}  // namespace mixq::autodiff
