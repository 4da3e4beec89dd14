// gemm_f32: single-precision GEMM on row-major matrices with optional transposes,
// C = alpha * op(A) * op(B) + beta * C. The training path and the float baseline use it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "mixq/core/error.hpp"

namespace mixq::kernels {

enum class transpose : bool { no = false, yes = true };

/// C (M x N, leading dimension ldc) = alpha * op(A) * op(B) + beta * C, all row-major.
/// op(A) is M x K: A is M x K (lda >= K) or, transposed, K x M (lda >= M); likewise op(B) is
/// K x N from B of K x N (ldb >= N) or N x K (ldb >= K). beta == 0 ignores C's old contents.
inline void gemm_f32(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                     float alpha, const float* A, std::size_t lda, const float* B, std::size_t ldb,
                     float beta, float* C, std::size_t ldc) {
  const bool at = ta == transpose::yes, bt = tb == transpose::yes;
  if (lda < (at ? M : K) || ldb < (bt ? K : N) || ldc < N)
    throw shape_error(mixq::detail::cat("gemm_f32: leading dimensions lda=", lda, " ldb=", ldb,
                                        " ldc=", ldc, " too small for M=", M, " N=", N, " K=", K));
  // Plain blocked loop (i, k, j) so the inner loop is contiguous over C and B.
  std::vector<float> brow(N);
  for (std::size_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f)
      std::fill(c, c + N, 0.0f);
    else if (beta != 1.0f)
      for (std::size_t j = 0; j < N; ++j) c[j] *= beta;
    for (std::size_t k = 0; k < K; ++k) {
      const float a = alpha * (at ? A[k * lda + i] : A[i * lda + k]);
      if (bt) {
        for (std::size_t j = 0; j < N; ++j) c[j] += a * B[j * ldb + k];
      } else {
        const float* b = B + k * ldb;
        for (std::size_t j = 0; j < N; ++j) c[j] += a * b[j];
      }
    }
  }
}

}  // namespace mixq::kernels
