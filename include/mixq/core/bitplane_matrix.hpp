// bitplane_matrix<Q>: a rows x K matrix of Q values split into Q::bits bit planes. Each row's
// plane is K bits padded with zero bits to whole 512-bit blocks (zero bits add nothing to an
// AND-popcount), 64-byte aligned: the operand layout of the bit-serial kernels.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"

namespace mixq {

/// Bits per padding block of a plane row (one 512-bit register).
inline constexpr std::size_t bitplane_block_bits = 512;

template <quantized_type Q>
class bitplane_matrix {
 public:
  using storage_type = typename Q::storage_type;
  using qtype = Q;
  static constexpr int planes = Q::bits;

  bitplane_matrix() = default;
  /// An all-zero-bits matrix (for binary Q every value reads -1, for others 0).
  bitplane_matrix(std::size_t rows, std::size_t k)
      : rows_(rows), k_(k), words_(words_for(k)), bits_(checked_words(rows, words_), 0) {}

  /// Packs a row-major rows x k matrix of values (each must be a value of Q).
  static bitplane_matrix pack(std::span<const storage_type> values, std::size_t rows,
                              std::size_t k) {
    if (shape_numel(std::array<std::size_t, 2>{rows, k}) != values.size())
      throw shape_error(detail::cat("bitplane_matrix::pack: ", values.size(),
                                    " values given for a ", rows, " x ", k, " matrix"));
    bitplane_matrix m(rows, k);
    for (std::size_t r = 0; r < rows; ++r) m.set_row(r, values.subspan(r * k, k));
    return m;
  }
  static bitplane_matrix pack(const tensor<storage_type>& t) {
    if (t.rank() != 2)
      throw shape_error(detail::cat("bitplane_matrix::pack: tensor of shape ",
                                    shape_string(t.shape()), " is not a matrix"));
    return pack(t.span(), t.dim(0), t.dim(1));
  }

  /// Overwrites row r with k values (value_error for values outside Q).
  void set_row(std::size_t r, std::span<const storage_type> row) {
    if (r >= rows_ || row.size() != k_)
      throw shape_error(detail::cat("bitplane_matrix::set_row: row ", r, " of ", row.size(),
                                    " values, expected row < ", rows_, " and ", k_, " values"));
    for (int p = 0; p < planes; ++p) {
      std::uint64_t* dst = plane_data(r, p);
      for (std::size_t w = 0; w < words_; ++w) dst[w] = 0;
    }
    for (std::size_t c = 0; c < k_; ++c) {
      if (!Q::contains(row[c]))
        throw value_error(detail::cat("value ", int(row[c]), " at (", r, ", ", c,
                                      ") is not a value of ", bitwidth_of<Q>().name(),
                                      ": expected ", Q::min, "..", Q::max));
      const std::uint8_t code = Q::encode(row[c]);
      for (int p = 0; p < planes; ++p)
        plane_data(r, p)[c / 64] |= std::uint64_t((code >> p) & 1u) << (c % 64);
    }
  }

  std::size_t rows() const noexcept { return rows_; }
  std::size_t cols() const noexcept { return k_; }
  /// 64-bit words per plane row (a multiple of 8: whole 512-bit blocks).
  std::size_t words_per_plane() const noexcept { return words_; }
  /// Words between consecutive rows (all planes of a row are adjacent).
  std::size_t row_stride() const noexcept { return words_ * planes; }

  /// Plane p of row r: words_per_plane() words, 64-byte aligned. Layout: [row][plane][word].
  const std::uint64_t* plane_data(std::size_t r, int p) const noexcept {
    return bits_.data() + r * row_stride() + static_cast<std::size_t>(p) * words_;
  }
  std::uint64_t* plane_data(std::size_t r, int p) noexcept {
    return bits_.data() + r * row_stride() + static_cast<std::size_t>(p) * words_;
  }
  std::span<const std::uint64_t> plane(std::size_t r, int p) const noexcept {
    return {plane_data(r, p), words_};
  }
  const std::uint64_t* data() const noexcept { return bits_.data(); }

  /// The value at (r, c), unchecked.
  storage_type at(std::size_t r, std::size_t c) const noexcept {
    unsigned code = 0;
    for (int p = 0; p < planes; ++p) code |= unsigned((plane_data(r, p)[c / 64] >> (c % 64)) & 1u) << p;
    return static_cast<storage_type>(Q::decode(static_cast<std::uint8_t>(code)));
  }
  /// Back to a rows x k row-major tensor of values.
  tensor<storage_type> unpack() const {
    tensor<storage_type> t({rows_, k_});
    for (std::size_t r = 0; r < rows_; ++r)
      for (std::size_t c = 0; c < k_; ++c) t[r * k_ + c] = at(r, c);
    return t;
  }

  /// Sum of each row's values, read off the planes by popcount:
  /// sum x = sum_p w_p * popcount(X_p), w_p = 2^p (the sign plane -2^(B-1); binary: 2 pop - K).
  std::vector<std::int32_t> row_sums() const {
    std::vector<std::int32_t> s(rows_, 0);
    for (std::size_t r = 0; r < rows_; ++r) {
      std::int64_t acc = 0;
      for (int p = 0; p < planes; ++p) {
        std::int64_t pop = 0;
        for (std::uint64_t w : plane(r, p)) pop += std::popcount(w);
        acc += plane_weight(p) * pop;
      }
      if constexpr (Q::is_binary) acc -= static_cast<std::int64_t>(k_);
      s[r] = static_cast<std::int32_t>(acc);
    }
    return s;
  }

  /// The weight of plane p in a value: 2^p, -2^(B-1) for the two's complement sign plane, and 2
  /// for the binary plane (value = 2 * bit - 1).
  static constexpr std::int64_t plane_weight(int p) noexcept {
    if constexpr (Q::is_binary) return 2;
    if (Q::is_signed && p == Q::bits - 1) return -(std::int64_t(1) << p);
    return std::int64_t(1) << p;
  }

 private:
  static std::size_t words_for(std::size_t k) {
    return (k + bitplane_block_bits - 1) / bitplane_block_bits * (bitplane_block_bits / 64);
  }
  static std::size_t checked_words(std::size_t rows, std::size_t words) {
    return shape_numel(std::array<std::size_t, 3>{rows, words, std::size_t(planes)});
  }

  std::size_t rows_ = 0, k_ = 0, words_ = 0;
  aligned_vector<std::uint64_t> bits_;
};

}  // namespace mixq
