// The bit-serial GEMM: C[m * N + n] = sum_k a[m][k] * w[n][k] as exact int32 from two bit-plane
// matrices (unsigned, two's complement or binary {-1, +1}, 1..8 bits each), on the fastest
// instruction-set path of the CPU, threaded over the library pool; `packed_bitserial_weights`
// lays a weight matrix out once for the many calls of a layer.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "mixq/core/aligned.hpp"
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

/// W (N x K, any bit-width) laid out once for repeated bit-serial GEMMs against it, as a layer's
/// weights are: an owned copy of its planes, their row sums and, on CPUs with the AVX-512 or
/// AVX2 path, the 8-row interleaved layout those paths read. A call then skips the per-call
/// interleave and row sums, which are bound by cold reads of W (15-20 us at N = K = 1024, 1-bit).
class packed_bitserial_weights {
 public:
  packed_bitserial_weights() = default;

  /// Copies W (bits_error / shape_error as bitserial_gemm's operand checks).
  static packed_bitserial_weights pack(const bitplane_view& W) {
    detail::check_view(W, "W");
    packed_bitserial_weights p;
    const std::size_t words = W.rows * W.type.bits * W.words_per_plane;
    p.planes_.assign(W.data, W.data + words);
    p.type_ = W.type;
    p.rows_ = W.rows;
    p.cols_ = W.cols;
    p.words_per_plane_ = W.words_per_plane;
    p.row_sums_ = detail::plane_row_sums(p.view());
    // The AVX-512 and AVX2 paths read the same interleaved layout.
    if (isa_supported(isa::avx2) || isa_supported(isa::avx512_vpopcntdq))
      p.interleaved_ = detail::interleave_by_8(p.view());
    return p;
  }
  template <quantized_type Q>
  static packed_bitserial_weights pack(const bitplane_matrix<Q>& W) {
    return pack(bitplane_view(W));
  }

  /// The weights as a plain operand (valid while this object lives and is not modified).
  bitplane_view view() const noexcept {
    return bitplane_view(type_, rows_, cols_, words_per_plane_, planes_.data());
  }
  std::size_t rows() const noexcept { return rows_; }
  std::size_t cols() const noexcept { return cols_; }
  bitwidth type() const noexcept { return type_; }
  /// sum_k (w[n][k] - offset) of row n (offset -1 for binary weights, else 0).
  std::int64_t row_sum(std::size_t n) const noexcept { return row_sums_[n]; }

 private:
  friend void bitserial_gemm(const bitplane_view&, const packed_bitserial_weights&,
                             std::span<std::int32_t>, const gemm_options&);

  aligned_vector<std::uint64_t> planes_;
  bitwidth type_{1, false};
  std::size_t rows_ = 0, cols_ = 0, words_per_plane_ = 0;
  std::vector<std::int64_t> row_sums_;
  detail::interleaved_planes interleaved_;
};

/// bitserial_gemm against prepacked weights: same contract and result as the plain entry.
inline void bitserial_gemm(const bitplane_view& A, const packed_bitserial_weights& W,
                           std::span<std::int32_t> C, const gemm_options& options = {}) {
  const bitplane_view w = W.view();
  detail::check_gemm_shapes(A, w, C.size(), "bitserial_gemm");
  const detail::bitserial_path& path = detail::bitserial_path_for(options.path);
  if (path.run_interleaved != nullptr) {
    path.run_interleaved(A, w, W.interleaved_, &W.row_sums_, C.data(), options.num_threads);
    return;
  }
  path.run(A, w, C.data(), options.num_threads);
}

/// The name of the micro-kernel a call with these options would use (for benchmarks).
inline const char* bitserial_gemm_kernel_name(const gemm_options& options = {}) {
  return detail::bitserial_path_for(options.path).name;
}

}  // namespace mixq::kernels
