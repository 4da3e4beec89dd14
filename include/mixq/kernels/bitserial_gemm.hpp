// The bit-serial GEMM: C[m * N + n] = sum_k a[m][k] * w[n][k] as exact int32 from two bit-plane
// matrices (unsigned, two's complement or binary {-1, +1}, 1..8 bits each), on the fastest
// instruction-set path of the CPU, threaded over the library pool.
#pragma once

#include <cstdint>
#include <span>

#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/bitserial_gemm/dispatch.hpp"
#include "mixq/kernels/bitserial_gemm/reference.hpp"

namespace mixq::kernels {

/// The runtime entry: operands whose bit-widths are known at run time (`bitplane_view` is
/// built from any bitplane_matrix, or by hand). A is M x K, W is N x K, C is M x N row-major.
/// shape_error for a K or padding mismatch or C.size() != M * N; bits_error for a view whose
/// bit-width is outside 1..8; value_error for a forced path the CPU lacks.
inline void bitserial_gemm(const bitplane_view& A, const bitplane_view& W,
                           std::span<std::int32_t> C, const gemm_options& options = {}) {
  detail::check_gemm_shapes(A, W, C.size(), "bitserial_gemm");
  detail::bitserial_path_for(options.path).run(A, W, C.data(), options.num_threads);
}

/// The typed entry: C[m * N + n] = sum_k A(m, k) * W(n, k).
template <quantized_type AT, quantized_type WT>
void bitserial_gemm(const bitplane_matrix<AT>& A, const bitplane_matrix<WT>& W,
                    std::span<std::int32_t> C, const gemm_options& options = {}) {
  bitserial_gemm(bitplane_view(A), bitplane_view(W), C, options);
}

/// The name of the micro-kernel a call with these options would use (for benchmarks).
inline const char* bitserial_gemm_kernel_name(const gemm_options& options = {}) {
  return detail::bitserial_path_for(options.path).name;
}

}  // namespace mixq::kernels
