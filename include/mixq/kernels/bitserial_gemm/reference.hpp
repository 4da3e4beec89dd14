// The plain scalar bit-serial GEMM: the oracle every fast path is tested against. Never tuned.
// C[m * N + n] = sum_k a[m][k] * w[n][k], exact, with a and w decoded value by value; typed
// (bitplane_matrix) and run-time (bitplane_view) forms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"

namespace mixq::kernels {

namespace detail {
/// The value at (r, c) of a view, decoded from its planes.
inline int view_value(const bitplane_view& v, std::size_t r, std::size_t c) noexcept {
  const int b = v.type.bits;
  int code = 0;
  for (int p = 0; p < b; ++p) code |= int((v.plane_row(r * b + p)[c / 64] >> (c % 64)) & 1u) << p;
  if (v.type.is_binary()) return code ? 1 : -1;
  if (v.type.is_signed && code >= (1 << (b - 1))) return code - (1 << b);
  return code;
}

template <class GetA, class GetW>
void reference_loop(std::size_t M, std::size_t N, std::size_t K, GetA get_a, GetW get_w,
                    std::span<std::int32_t> C) {
  std::vector<int> a(K);
  for (std::size_t m = 0; m < M; ++m) {
    for (std::size_t k = 0; k < K; ++k) a[k] = get_a(m, k);
    for (std::size_t n = 0; n < N; ++n) {
      std::int64_t sum = 0;
      for (std::size_t k = 0; k < K; ++k) sum += std::int64_t(a[k]) * get_w(n, k);
      C[m * N + n] = static_cast<std::int32_t>(sum);
    }
  }
}

inline void check_reference_shapes(std::size_t M, std::size_t KA, std::size_t N, std::size_t KW,
                                   std::size_t c_size) {
  if (KW != KA)
    throw shape_error(mixq::detail::cat("bitserial_gemm_reference: A is ", M, " x ", KA,
                                        " but W is ", N, " x ", KW, ": expected the same K"));
  if (c_size != M * N)
    throw shape_error(mixq::detail::cat("bitserial_gemm_reference: C has ", c_size,
                                        " elements, expected M * N = ", M * N));
}
}  // namespace detail

template <quantized_type AT, quantized_type WT>
void bitserial_gemm_reference(const bitplane_matrix<AT>& A, const bitplane_matrix<WT>& W,
                              std::span<std::int32_t> C) {
  detail::check_reference_shapes(A.rows(), A.cols(), W.rows(), W.cols(), C.size());
  detail::reference_loop(
      A.rows(), W.rows(), A.cols(), [&](std::size_t m, std::size_t k) { return int(A.at(m, k)); },
      [&](std::size_t n, std::size_t k) { return int(W.at(n, k)); }, C);
}

/// The run-time form (bits_error for a bit-width outside 1..8).
inline void bitserial_gemm_reference(const bitplane_view& A, const bitplane_view& W,
                                     std::span<std::int32_t> C) {
  A.type.validate();
  W.type.validate();
  detail::check_reference_shapes(A.rows, A.cols, W.rows, W.cols, C.size());
  detail::reference_loop(
      A.rows, W.rows, A.cols,
      [&](std::size_t m, std::size_t k) { return detail::view_value(A, m, k); },
      [&](std::size_t n, std::size_t k) { return detail::view_value(W, n, k); }, C);
}

}  // namespace mixq::kernels
