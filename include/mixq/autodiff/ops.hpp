// Differentiable ops on var: broadcasting arithmetic, matmul/linear, pointwise functions,
// straight-through rounding, shape ops, reductions, softmax and losses. Each op is one
// function: forward, node, and the backward closure (derivative as a comment) side by side.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "mixq/autodiff/parallel.hpp"
#include "mixq/autodiff/var.hpp"
#include "mixq/kernels/gemm_f32.hpp"

namespace mixq::autodiff {

namespace detail {

/// Numpy broadcasting of two shapes (aligned at the right); shape_error when incompatible.
inline shape_t broadcast_shapes(const shape_t& a, const shape_t& b, const char* op) {
  const std::size_t r = std::max(a.size(), b.size());
  shape_t out(r);
  for (std::size_t i = 0; i < r; ++i) {
    const std::size_t da = i + a.size() >= r ? a[i + a.size() - r] : 1;
    const std::size_t db = i + b.size() >= r ? b[i + b.size() - r] : 1;
    if (da != db && da != 1 && db != 1)
      throw shape_error(cat(op, ": shapes ", shape_string(a), " and ", shape_string(b),
                            " do not broadcast (dimension ", i, ": ", da, " vs ", db, ")"));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// Strides of `s` viewed in an output of rank r, 0 along broadcast dimensions.
inline std::vector<std::size_t> broadcast_strides(const shape_t& s, const shape_t& out) {
  const std::size_t r = out.size();
  std::vector<std::size_t> st(r, 0);
  std::size_t stride = 1;
  for (std::size_t i = s.size(); i-- > 0;) {
    const std::size_t oi = i + r - s.size();
    st[oi] = s[i] == 1 ? 0 : stride;
    stride *= s[i];
  }
  return st;
}

/// Calls f(out_index, a_index, b_index) for every element of the broadcast output, walking
/// the innermost dimension in a tight loop.
template <class F>
void broadcast_walk(const shape_t& out, const std::vector<std::size_t>& sa,
                    const std::vector<std::size_t>& sb, F&& f) {
  const std::size_t r = out.size();
  const std::size_t total = shape_numel(out);
  if (total == 0) return;
  if (r == 0) {
    f(std::size_t{0}, std::size_t{0}, std::size_t{0});
    return;
  }
  const std::size_t inner = out[r - 1], ia = sa[r - 1], ib = sb[r - 1];
  std::vector<std::size_t> idx(r, 0);
  std::size_t oa = 0, ob = 0;
  for (std::size_t o = 0; o < total; o += inner) {
    for (std::size_t j = 0; j < inner; ++j) f(o + j, oa + j * ia, ob + j * ib);
    for (std::size_t d = r - 1; d-- > 0;) {  // odometer over the outer dimensions
      ++idx[d];
      oa += sa[d];
      ob += sb[d];
      if (idx[d] < out[d]) break;
      oa -= sa[d] * out[d];
      ob -= sb[d] * out[d];
      idx[d] = 0;
    }
  }
}

/// Shared body of the four broadcasting binary ops. Fwd(a, b) -> y; Da(a, b, y) and
/// Db(a, b, y) are the local derivatives dy/da and dy/db.
template <class Fwd, class Da, class Db>
var binary_op(const var& a, const var& b, const char* op, Fwd fwd, Da da, Db db) {
  const shape_t out = broadcast_shapes(a.shape(), b.shape(), op);
  auto sa = broadcast_strides(a.shape(), out), sb = broadcast_strides(b.shape(), out);
  ftensor y = detail::cache().take(out);
  const float *pa = a.value().data(), *pb = b.value().data();
  float* py = y.data();
  broadcast_walk(out, sa, sb,
                 [&](std::size_t o, std::size_t i, std::size_t j) { py[o] = fwd(pa[i], pb[j]); });
  return make_result(std::move(y), {a, b}, op, [out, sa, sb, da, db](node& self) {
    const float* pa = self.parents[0]->value.data();
    const float* pb = self.parents[1]->value.data();
    const float *py = self.value.data(), *g = self.grad.data();
    ftensor* ga = parent_grad(self, 0);
    ftensor* gb = parent_grad(self, 1);
    // Gradients of broadcast operands sum over the dimensions they were repeated along.
    if (ga)
      broadcast_walk(out, sa, sb, [&, p = ga->data()](std::size_t o, std::size_t i, std::size_t j) {
        p[i] += g[o] * da(pa[i], pb[j], py[o]);
      });
    if (gb)
      broadcast_walk(out, sa, sb, [&, p = gb->data()](std::size_t o, std::size_t i, std::size_t j) {
        p[j] += g[o] * db(pa[i], pb[j], py[o]);
      });
  });
}

/// Shared body of pointwise unary ops: y = f(x), dy/dx = d(x, y).
template <class Fwd, class D>
var unary_op(const var& x, const char* op, Fwd fwd, D d) {
  ftensor y = detail::cache().take(x.shape());
  const float* px = x.value().data();
  float* py = y.data();
  parallel_chunks_if_large(y.size(), y.size(), [&](std::size_t b, std::size_t e, unsigned) {
    for (std::size_t i = b; i < e; ++i) py[i] = fwd(px[i]);
  });
  return make_result(std::move(y), {x}, op, [d](node& self) {
    const grad_target gx = parent_grad_target(self, 0);
    if (!gx) return;
    const float *px = self.parents[0]->value.data(), *py = self.value.data(), *g = self.grad.data();
    float* p = gx.data;
    const std::size_t n = self.value.size();
    parallel_chunks_if_large(n, n, [&](std::size_t b, std::size_t e, unsigned) {
      if (gx.fresh)
        for (std::size_t i = b; i < e; ++i) p[i] = g[i] * d(px[i], py[i]);
      else
        for (std::size_t i = b; i < e; ++i) p[i] += g[i] * d(px[i], py[i]);
    });
  });
}

/// Resolves a possibly negative axis against a rank.
inline std::size_t resolve_axis(int axis, std::size_t rank, const char* op) {
  const long a = axis < 0 ? long(rank) + axis : axis;
  if (a < 0 || a >= long(rank))
    throw shape_error(cat(op, ": axis ", axis, " out of range for a rank-", rank, " tensor"));
  return std::size_t(a);
}

/// Splits a shape around an axis: outer * n * inner.
struct axis_split {
  std::size_t outer = 1, n = 1, inner = 1;
};
inline axis_split split_at(const shape_t& s, std::size_t axis) {
  axis_split r;
  for (std::size_t i = 0; i < axis; ++i) r.outer *= s[i];
  r.n = s[axis];
  for (std::size_t i = axis + 1; i < s.size(); ++i) r.inner *= s[i];
  return r;
}
}  // namespace detail

// ---- broadcasting arithmetic ------------------------------------------------------------

/// a + b with broadcasting. d/da = 1, d/db = 1.
inline var add(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "add", [](float x, float y) { return x + y; }, [](float, float, float) { return 1.0f; },
      [](float, float, float) { return 1.0f; });
}
/// a - b with broadcasting. d/da = 1, d/db = -1.
inline var sub(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "sub", [](float x, float y) { return x - y; }, [](float, float, float) { return 1.0f; },
      [](float, float, float) { return -1.0f; });
}
/// a * b with broadcasting. d/da = b, d/db = a.
inline var mul(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "mul", [](float x, float y) { return x * y; }, [](float, float y, float) { return y; },
      [](float x, float, float) { return x; });
}
/// a / b with broadcasting. d/da = 1/b, d/db = -a/b^2.
inline var div(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "div", [](float x, float y) { return x / y; },
      [](float, float y, float) { return 1.0f / y; },
      [](float x, float y, float) { return -x / (y * y); });
}
/// Elementwise maximum / minimum with broadcasting; the gradient goes to the larger (smaller)
/// operand, to `a` on ties.
inline var maximum(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "maximum", [](float x, float y) { return x >= y ? x : y; },
      [](float x, float y, float) { return x >= y ? 1.0f : 0.0f; },
      [](float x, float y, float) { return x >= y ? 0.0f : 1.0f; });
}
inline var minimum(const var& a, const var& b) {
  return detail::binary_op(
      a, b, "minimum", [](float x, float y) { return x <= y ? x : y; },
      [](float x, float y, float) { return x <= y ? 1.0f : 0.0f; },
      [](float x, float y, float) { return x <= y ? 0.0f : 1.0f; });
}

/// x + c, x * c for a float c. d/dx = 1, c.
inline var add(const var& x, float c) {
  return detail::unary_op(
      x, "add_scalar", [c](float v) { return v + c; }, [](float, float) { return 1.0f; });
}
inline var mul(const var& x, float c) {
  return detail::unary_op(
      x, "mul_scalar", [c](float v) { return v * c; }, [c](float, float) { return c; });
}
inline var neg(const var& x) {
  return mul(x, -1.0f);
}

inline var operator+(const var& a, const var& b) {
  return add(a, b);
}
inline var operator-(const var& a, const var& b) {
  return sub(a, b);
}
inline var operator*(const var& a, const var& b) {
  return mul(a, b);
}
inline var operator/(const var& a, const var& b) {
  return div(a, b);
}
inline var operator+(const var& a, float c) {
  return add(a, c);
}
inline var operator+(float c, const var& a) {
  return add(a, c);
}
inline var operator-(const var& a, float c) {
  return add(a, -c);
}
inline var operator-(float c, const var& a) {
  return add(neg(a), c);
}
inline var operator*(const var& a, float c) {
  return mul(a, c);
}
inline var operator*(float c, const var& a) {
  return mul(a, c);
}
inline var operator/(const var& a, float c) {
  return mul(a, 1.0f / c);
}
inline var operator-(const var& a) {
  return neg(a);
}

// ---- pointwise functions ------------------------------------------------------------------

/// max(x, 0). dy/dx = [x > 0].
inline var relu(const var& x) {
  return detail::unary_op(
      x, "relu", [](float v) { return v > 0.0f ? v : 0.0f; },
      [](float v, float) { return v > 0.0f ? 1.0f : 0.0f; });
}
/// min(max(x, lo), hi). dy/dx = [lo <= x <= hi]. (A learnable bound, as in PACT, is
/// relu(x) - relu(x - alpha) or minimum/maximum with a var.)
inline var clip(const var& x, float lo, float hi) {
  if (!(lo <= hi))
    throw value_error(detail::cat("clip: lower bound ", lo, " must not exceed upper bound ", hi));
  return detail::unary_op(
      x, "clip", [lo, hi](float v) { return std::clamp(v, lo, hi); },
      [lo, hi](float v, float) { return v >= lo && v <= hi ? 1.0f : 0.0f; });
}
/// dy/dx = 1 - y^2.
inline var tanh(const var& x) {
  return detail::unary_op(
      x, "tanh", [](float v) { return std::tanh(v); }, [](float, float y) { return 1.0f - y * y; });
}
/// dy/dx = y.
inline var exp(const var& x) {
  return detail::unary_op(
      x, "exp", [](float v) { return std::exp(v); }, [](float, float y) { return y; });
}
/// dy/dx = 1/x.
inline var log(const var& x) {
  return detail::unary_op(
      x, "log", [](float v) { return std::log(v); }, [](float v, float) { return 1.0f / v; });
}
/// dy/dx = sign(x) (0 at 0).
inline var abs(const var& x) {
  return detail::unary_op(
      x, "abs", [](float v) { return std::fabs(v); },
      [](float v, float) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); });
}
/// x^p. dy/dx = p x^(p-1).
inline var pow(const var& x, float p) {
  return detail::unary_op(
      x, "pow", [p](float v) { return std::pow(v, p); },
      [p](float v, float) { return p * std::pow(v, p - 1.0f); });
}
/// dy/dx = 1 / (2 y).
inline var sqrt(const var& x) {
  return detail::unary_op(
      x, "sqrt", [](float v) { return std::sqrt(v); }, [](float, float y) { return 0.5f / y; });
}
/// dy/dx = y (1 - y).
inline var sigmoid(const var& x) {
  return detail::unary_op(
      x, "sigmoid", [](float v) { return 1.0f / (1.0f + std::exp(-v)); },
      [](float, float y) { return y * (1.0f - y); });
}

/// Straight-through rounding (half to even): forward round(x), backward dy/dx = 1.
inline var round_ste(const var& x) {
  return detail::unary_op(
      x, "round_ste", [](float v) { return std::nearbyint(v); }, [](float, float) { return 1.0f; });
}
/// Straight-through floor: forward floor(x), backward dy/dx = 1.
inline var floor_ste(const var& x) {
  return detail::unary_op(
      x, "floor_ste", [](float v) { return std::floor(v); }, [](float, float) { return 1.0f; });
}
/// floor(x) with its true derivative 0 (FracBits' mixing weight uses both kinds).
inline var floor(const var& x) {
  return detail::unary_op(
      x, "floor", [](float v) { return std::floor(v); }, [](float, float) { return 0.0f; });
}
/// The same value cut from the graph: no gradient flows back through it.
inline var detach(const var& x) {
  return constant(x.value());
}

// ---- matrix products ----------------------------------------------------------------------

/// [M, K] x [K, N] -> [M, N]. dA = dY B^T, dB = A^T dY.
inline var matmul(const var& a, const var& b) {
  using kernels::transpose;
  if (a.shape().size() != 2 || b.shape().size() != 2 || a.shape()[1] != b.shape()[0])
    throw shape_error(detail::cat("matmul: needs [M, K] x [K, N], got ", shape_string(a.shape()),
                                  " x ", shape_string(b.shape())));
  const std::size_t M = a.shape()[0], K = a.shape()[1], N = b.shape()[1];
  ftensor y = detail::cache().take({M, N});
  kernels::gemm_f32(transpose::no, transpose::no, M, N, K, 1.0f, a.value().data(), K,
                    b.value().data(), N, 0.0f, y.data(), N);
  return detail::make_result(std::move(y), {a, b}, "matmul", [M, N, K](node& self) {
    const float *A = self.parents[0]->value.data(), *B = self.parents[1]->value.data();
    const float* G = self.grad.data();
    if (const auto ga = detail::parent_grad_target(self, 0))
      kernels::gemm_f32(transpose::no, transpose::yes, M, K, N, 1.0f, G, N, B, N,
                        ga.fresh ? 0.0f : 1.0f, ga.data, K);
    if (const auto gb = detail::parent_grad_target(self, 1))
      kernels::gemm_f32(transpose::yes, transpose::no, K, N, M, 1.0f, A, K, G, N,
                        gb.fresh ? 0.0f : 1.0f, gb.data, N);
  });
}

/// Fully connected: x [N, in], w [out, in], optional b [out] -> x w^T + b.
/// dx = dY w, dw = dY^T x, db = sum over rows of dY.
inline var linear(const var& x, const var& w, const var& b = var()) {
  using kernels::transpose;
  if (x.shape().size() != 2 || w.shape().size() != 2 || x.shape()[1] != w.shape()[1])
    throw shape_error(detail::cat("linear: needs x [N, in] and w [out, in], got x ",
                                  shape_string(x.shape()), " and w ", shape_string(w.shape())));
  const std::size_t N = x.shape()[0], I = x.shape()[1], O = w.shape()[0];
  const bool has_b = b.defined();
  if (has_b && (b.shape().size() != 1 || b.shape()[0] != O))
    throw shape_error(
        detail::cat("linear: bias has shape ", shape_string(b.shape()), ", expected [", O, "]"));
  ftensor y = detail::cache().take({N, O});
  if (has_b)
    for (std::size_t n = 0; n < N; ++n) std::copy_n(b.value().data(), O, y.data() + n * O);
  kernels::gemm_f32(transpose::no, transpose::yes, N, O, I, 1.0f, x.value().data(), I,
                    w.value().data(), I, has_b ? 1.0f : 0.0f, y.data(), O);
  std::vector<var> parents{x, w};
  if (has_b) parents.push_back(b);
  return detail::make_result(std::move(y), std::move(parents), "linear", [N, I, O](node& self) {
    const float *X = self.parents[0]->value.data(), *W = self.parents[1]->value.data();
    const float* G = self.grad.data();
    if (const auto gx = detail::parent_grad_target(self, 0))
      kernels::gemm_f32(transpose::no, transpose::no, N, I, O, 1.0f, G, O, W, I,
                        gx.fresh ? 0.0f : 1.0f, gx.data, I);
    if (const auto gw = detail::parent_grad_target(self, 1))
      kernels::gemm_f32(transpose::yes, transpose::no, O, I, N, 1.0f, G, O, X, I,
                        gw.fresh ? 0.0f : 1.0f, gw.data, I);
    if (self.parents.size() > 2)
      if (ftensor* gb = detail::parent_grad(self, 2))
        for (std::size_t n = 0; n < N; ++n)
          for (std::size_t o = 0; o < O; ++o) (*gb)[o] += G[n * O + o];
  });
}

// ---- shape ops ----------------------------------------------------------------------------

/// The same elements under another shape. dx = reshape(dy).
inline var reshape(const var& x, shape_t shape) {
  if (shape_numel(shape) != x.size())
    throw shape_error(detail::cat("reshape: cannot reshape ", shape_string(x.shape()), " (",
                                  x.size(), " elements) to ", shape_string(shape)));
  ftensor y = detail::cache().take(std::move(shape));
  std::copy(x.value().begin(), x.value().end(), y.begin());
  return detail::make_result(std::move(y), {x}, "reshape", [](node& self) {
    if (const auto gx = detail::parent_grad_target(self, 0)) {
      const float* g = self.grad.data();
      if (gx.fresh)
        std::copy(g, g + self.grad.size(), gx.data);
      else
        for (std::size_t i = 0; i < self.grad.size(); ++i) gx.data[i] += g[i];
    }
  });
}
/// [N, ...] -> [N, prod(...)].
inline var flatten(const var& x) {
  if (x.shape().empty()) throw shape_error("flatten: needs a tensor of rank >= 1, got a scalar");
  const std::size_t n = x.shape()[0];
  return reshape(x, {n, n ? x.size() / n : 0});
}

/// Joins tensors along `axis`; all other dimensions must agree. dx_i = slice_i(dy).
inline var concat(const std::vector<var>& xs, int axis = 0) {
  if (xs.empty()) throw shape_error("concat: needs at least one tensor");
  const shape_t& s0 = xs[0].shape();
  const std::size_t ax = detail::resolve_axis(axis, s0.size(), "concat");
  shape_t out = s0;
  out[ax] = 0;
  for (const auto& x : xs) {
    const shape_t& s = x.shape();
    bool ok = s.size() == s0.size();
    for (std::size_t d = 0; ok && d < s.size(); ++d) ok = d == ax || s[d] == s0[d];
    if (!ok)
      throw shape_error(detail::cat("concat: shape ", shape_string(s), " does not match ",
                                    shape_string(s0), " outside axis ", ax));
    out[ax] += s[ax];
  }
  const auto sp = detail::split_at(out, ax);
  ftensor y = detail::cache().take(out);
  std::size_t off = 0;
  std::vector<std::size_t> offsets;
  for (const auto& x : xs) {
    const std::size_t w = x.shape()[ax] * sp.inner;
    offsets.push_back(off);
    for (std::size_t o = 0; o < sp.outer; ++o)
      std::copy_n(x.value().data() + o * w, w, y.data() + o * sp.n * sp.inner + off);
    off += w;
  }
  return detail::make_result(std::move(y), xs, "concat", [sp, offsets](node& self) {
    for (std::size_t i = 0; i < self.parents.size(); ++i) {
      ftensor* gx = detail::parent_grad(self, i);
      if (!gx) continue;
      const std::size_t w = gx->size() / std::max<std::size_t>(sp.outer, 1);
      for (std::size_t o = 0; o < sp.outer; ++o)
        for (std::size_t j = 0; j < w; ++j)
          (*gx)[o * w + j] += self.grad[o * sp.n * sp.inner + offsets[i] + j];
    }
  });
}

/// sum_j w[j] * terms[j]: terms of one shape, w a vector with one weight per term. One node
/// instead of a scalar product and a sum per term (the mixtures of DNAS and EBS, whose terms
/// are activation-sized): one output and one gradient per term, no zero-filled buffers.
/// d/dterms[j] = w[j] dy; d/dw[j] = sum(dy * terms[j]).
inline var weighted_sum(const std::vector<var>& terms, const var& w) {
  if (terms.empty()) throw shape_error("weighted_sum: needs at least one term");
  if (w.shape() != shape_t{terms.size()})
    throw shape_error(detail::cat("weighted_sum: weights of shape ", shape_string(w.shape()),
                                  " for ", terms.size(), " terms; expected [", terms.size(), "]"));
  const shape_t& s0 = terms[0].shape();
  for (const auto& t : terms)
    if (t.shape() != s0)
      throw shape_error(detail::cat("weighted_sum: term of shape ", shape_string(t.shape()),
                                    " does not match ", shape_string(s0)));
  ftensor y = detail::cache().take(s0);
  const std::size_t n = y.size();
  const float* pw = w.value().data();
  float* py = y.data();
  for (std::size_t j = 0; j < terms.size(); ++j) {
    const float* pt = terms[j].value().data();
    const float wj = pw[j];
    if (j == 0)
      for (std::size_t i = 0; i < n; ++i) py[i] = wj * pt[i];
    else
      for (std::size_t i = 0; i < n; ++i) py[i] += wj * pt[i];
  }
  std::vector<var> parents = terms;
  parents.push_back(w);
  return detail::make_result(std::move(y), std::move(parents), "weighted_sum", [](node& self) {
    const std::size_t k = self.parents.size() - 1, n = self.value.size();
    const float* g = self.grad.data();
    const float* pw = self.parents[k]->value.data();
    // The weights' gradient first: it reads the terms' values, which a term's own gradient
    // buffer never aliases.
    if (ftensor* gw = detail::parent_grad(self, k))
      for (std::size_t j = 0; j < k; ++j) {
        const float* pt = self.parents[j]->value.data();
        double acc = 0;
        for (std::size_t i = 0; i < n; ++i) acc += double(g[i]) * double(pt[i]);
        (*gw)[j] += float(acc);
      }
    for (std::size_t j = 0; j < k; ++j) {
      const detail::grad_target gt = detail::parent_grad_target(self, j);
      if (!gt) continue;
      const float wj = pw[j];
      if (gt.fresh)
        for (std::size_t i = 0; i < n; ++i) gt.data[i] = wj * g[i];
      else
        for (std::size_t i = 0; i < n; ++i) gt.data[i] += wj * g[i];
    }
  });
}

// ---- reductions ---------------------------------------------------------------------------

/// Sum of all elements -> shape [1]. dx = dy.
inline var sum(const var& x) {
  double s = 0;
  for (float v : x.value()) s += v;
  return detail::make_result(ftensor({1}, float(s)), {x}, "sum", [](node& self) {
    if (ftensor* gx = detail::parent_grad(self, 0))
      for (auto& g : *gx) g += self.grad[0];
  });
}
/// Mean of all elements -> shape [1]. dx = dy / n.
inline var mean(const var& x) {
  if (x.size() == 0) throw shape_error("mean: of an empty tensor");
  return mul(sum(x), 1.0f / float(x.size()));
}

/// Sum along one axis; keepdim keeps it as size 1. dx = dy broadcast along the axis.
inline var sum(const var& x, int axis, bool keepdim = false) {
  const std::size_t ax = detail::resolve_axis(axis, x.shape().size(), "sum");
  const auto sp = detail::split_at(x.shape(), ax);
  shape_t out = x.shape();
  if (keepdim)
    out[ax] = 1;
  else
    out.erase(out.begin() + long(ax));
  ftensor y = detail::cache().take(out, 0.0f);
  const float* px = x.value().data();
  for (std::size_t o = 0; o < sp.outer; ++o)
    for (std::size_t k = 0; k < sp.n; ++k)
      for (std::size_t i = 0; i < sp.inner; ++i)
        y[o * sp.inner + i] += px[(o * sp.n + k) * sp.inner + i];
  return detail::make_result(std::move(y), {x}, "sum_axis", [sp](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    for (std::size_t o = 0; o < sp.outer; ++o)
      for (std::size_t k = 0; k < sp.n; ++k)
        for (std::size_t i = 0; i < sp.inner; ++i)
          (*gx)[(o * sp.n + k) * sp.inner + i] += self.grad[o * sp.inner + i];
  });
}
/// Mean along one axis.
inline var mean(const var& x, int axis, bool keepdim = false) {
  const std::size_t ax = detail::resolve_axis(axis, x.shape().size(), "mean");
  if (x.shape()[ax] == 0) throw shape_error("mean: along an empty axis");
  return mul(sum(x, axis, keepdim), 1.0f / float(x.shape()[ax]));
}

/// Largest element -> shape [1]; the gradient goes to the first maximal element.
inline var max(const var& x) {
  if (x.size() == 0) throw shape_error("max: of an empty tensor");
  const auto& v = x.value();
  const std::size_t arg = std::size_t(std::max_element(v.begin(), v.end()) - v.begin());
  return detail::make_result(ftensor({1}, v[arg]), {x}, "max", [arg](node& self) {
    if (ftensor* gx = detail::parent_grad(self, 0)) (*gx)[arg] += self.grad[0];
  });
}
/// Largest element along one axis; the gradient goes to the first maximal element.
inline var max(const var& x, int axis, bool keepdim = false) {
  const std::size_t ax = detail::resolve_axis(axis, x.shape().size(), "max");
  const auto sp = detail::split_at(x.shape(), ax);
  if (sp.n == 0) throw shape_error("max: along an empty axis");
  shape_t out = x.shape();
  if (keepdim)
    out[ax] = 1;
  else
    out.erase(out.begin() + long(ax));
  ftensor y = detail::cache().take(out);
  std::vector<std::uint32_t> arg(y.size(), 0);
  const float* px = x.value().data();
  for (std::size_t o = 0; o < sp.outer; ++o)
    for (std::size_t i = 0; i < sp.inner; ++i) {
      std::size_t best = 0;
      for (std::size_t k = 1; k < sp.n; ++k)
        if (px[(o * sp.n + k) * sp.inner + i] > px[(o * sp.n + best) * sp.inner + i]) best = k;
      y[o * sp.inner + i] = px[(o * sp.n + best) * sp.inner + i];
      arg[o * sp.inner + i] = std::uint32_t(best);
    }
  return detail::make_result(std::move(y), {x}, "max_axis", [sp, arg](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    for (std::size_t o = 0; o < sp.outer; ++o)
      for (std::size_t i = 0; i < sp.inner; ++i)
        (*gx)[(o * sp.n + arg[o * sp.inner + i]) * sp.inner + i] += self.grad[o * sp.inner + i];
  });
}

// ---- softmax and losses -------------------------------------------------------------------

/// Softmax along `axis` (last by default). dx = y * (dy - sum(dy * y)).
inline var softmax(const var& x, int axis = -1) {
  const std::size_t ax = detail::resolve_axis(axis, x.shape().size(), "softmax");
  const auto sp = detail::split_at(x.shape(), ax);
  ftensor y = detail::cache().take(x.shape());
  const float* px = x.value().data();
  for (std::size_t o = 0; o < sp.outer; ++o)
    for (std::size_t i = 0; i < sp.inner; ++i) {
      auto at = [&](std::size_t k) { return (o * sp.n + k) * sp.inner + i; };
      float m = -std::numeric_limits<float>::infinity();
      for (std::size_t k = 0; k < sp.n; ++k) m = std::max(m, px[at(k)]);
      float s = 0;
      for (std::size_t k = 0; k < sp.n; ++k) s += (y[at(k)] = std::exp(px[at(k)] - m));
      for (std::size_t k = 0; k < sp.n; ++k) y[at(k)] /= s;
    }
  return detail::make_result(std::move(y), {x}, "softmax", [sp](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    for (std::size_t o = 0; o < sp.outer; ++o)
      for (std::size_t i = 0; i < sp.inner; ++i) {
        auto at = [&](std::size_t k) { return (o * sp.n + k) * sp.inner + i; };
        float dot = 0;
        for (std::size_t k = 0; k < sp.n; ++k) dot += self.grad[at(k)] * self.value[at(k)];
        for (std::size_t k = 0; k < sp.n; ++k)
          (*gx)[at(k)] += self.value[at(k)] * (self.grad[at(k)] - dot);
      }
  });
}

/// log(softmax(x)) along `axis`, computed stably. dx = dy - softmax(x) * sum(dy).
inline var log_softmax(const var& x, int axis = -1) {
  const std::size_t ax = detail::resolve_axis(axis, x.shape().size(), "log_softmax");
  const auto sp = detail::split_at(x.shape(), ax);
  ftensor y = detail::cache().take(x.shape());
  const float* px = x.value().data();
  for (std::size_t o = 0; o < sp.outer; ++o)
    for (std::size_t i = 0; i < sp.inner; ++i) {
      auto at = [&](std::size_t k) { return (o * sp.n + k) * sp.inner + i; };
      float m = -std::numeric_limits<float>::infinity();
      for (std::size_t k = 0; k < sp.n; ++k) m = std::max(m, px[at(k)]);
      float s = 0;
      for (std::size_t k = 0; k < sp.n; ++k) s += std::exp(px[at(k)] - m);
      const float lse = m + std::log(s);
      for (std::size_t k = 0; k < sp.n; ++k) y[at(k)] = px[at(k)] - lse;
    }
  return detail::make_result(std::move(y), {x}, "log_softmax", [sp](node& self) {
    ftensor* gx = detail::parent_grad(self, 0);
    if (!gx) return;
    for (std::size_t o = 0; o < sp.outer; ++o)
      for (std::size_t i = 0; i < sp.inner; ++i) {
        auto at = [&](std::size_t k) { return (o * sp.n + k) * sp.inner + i; };
        float gs = 0;
        for (std::size_t k = 0; k < sp.n; ++k) gs += self.grad[at(k)];
        for (std::size_t k = 0; k < sp.n; ++k)
          (*gx)[at(k)] += self.grad[at(k)] - std::exp(self.value[at(k)]) * gs;
      }
  });
}

/// Mean cross-entropy of logits [N, C] against class labels (N of them, each < C).
/// d/dlogits = (softmax(logits) - onehot(label)) / N.
inline var cross_entropy(const var& logits, std::span<const int> labels) {
  if (logits.shape().size() != 2)
    throw shape_error(
        detail::cat("cross_entropy: logits must be [N, C], got ", shape_string(logits.shape())));
  const std::size_t N = logits.shape()[0], C = logits.shape()[1];
  if (labels.size() != N)
    throw shape_error(detail::cat("cross_entropy: ", labels.size(), " labels for ", N, " rows"));
  if (N == 0) throw shape_error("cross_entropy: empty batch");
  for (std::size_t n = 0; n < N; ++n)
    if (labels[n] < 0 || std::size_t(labels[n]) >= C)
      throw value_error(detail::cat("cross_entropy: label ", labels[n], " at row ", n,
                                    " is outside [0, ", C, ")"));
  ftensor prob({N, C});
  double loss = 0;
  const float* px = logits.value().data();
  for (std::size_t n = 0; n < N; ++n) {
    const float* r = px + n * C;
    const float m = *std::max_element(r, r + C);
    float s = 0;
    for (std::size_t c = 0; c < C; ++c) s += (prob[n * C + c] = std::exp(r[c] - m));
    for (std::size_t c = 0; c < C; ++c) prob[n * C + c] /= s;
    loss += double(m + std::log(s) - r[labels[n]]);
  }
  std::vector<int> lab(labels.begin(), labels.end());
  return detail::make_result(ftensor({1}, float(loss / double(N))), {logits}, "cross_entropy",
                             [prob = std::move(prob), lab = std::move(lab), N, C](node& self) {
                               ftensor* gx = detail::parent_grad(self, 0);
                               if (!gx) return;
                               const float g = self.grad[0] / float(N);
                               for (std::size_t n = 0; n < N; ++n)
                                 for (std::size_t c = 0; c < C; ++c)
                                   (*gx)[n * C + c] +=
                                       g * (prob[n * C + c] - (int(c) == lab[n] ? 1.0f : 0.0f));
                             });
}

/// Mean squared error between two tensors of the same shape.
inline var mse_loss(const var& a, const var& b) {
  if (a.shape() != b.shape())
    throw shape_error(detail::cat("mse_loss: shapes ", shape_string(a.shape()), " and ",
                                  shape_string(b.shape()), " differ"));
  const var d = sub(a, b);
  return mean(mul(d, d));
}

/// Gumbel-softmax over the last axis: softmax((logits + g) / tau) with g = -log(-log(u)),
/// u ~ U(0,1) drawn from `rng`. `hard` returns the one-hot argmax in the forward pass and the
/// soft sample's gradient (hard - detach(soft) + soft).
template <class Rng>
var gumbel_softmax(const var& logits, float tau, Rng& rng, bool hard = false) {
  if (!(tau > 0)) throw value_error(detail::cat("gumbel_softmax: tau ", tau, " must be > 0"));
  std::uniform_real_distribution<float> uni(std::numeric_limits<float>::min(), 1.0f);
  ftensor g(logits.shape());
  for (auto& v : g) v = -std::log(-std::log(uni(rng)));
  const var soft = softmax(mul(add(logits, constant(std::move(g))), 1.0f / tau), -1);
  if (!hard) return soft;
  const auto sp = detail::split_at(soft.shape(), soft.shape().size() - 1);
  ftensor onehot(soft.shape(), 0.0f);
  for (std::size_t o = 0; o < sp.outer; ++o) {
    const float* r = soft.value().data() + o * sp.n;
    onehot[o * sp.n + std::size_t(std::max_element(r, r + sp.n) - r)] = 1.0f;
  }
  return add(sub(constant(std::move(onehot)), detach(soft)), soft);
}

}  // namespace mixq::autodiff
