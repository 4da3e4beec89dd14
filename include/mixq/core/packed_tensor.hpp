// packed_tensor<Q>: quantized values packed bit-contiguously (value i occupies bits
// [i*B, (i+1)*B) of a little-endian bit stream), so a tensor of n values takes exactly
// ceil(n*B/8) payload bytes: the storage a deployed model really needs. Serializes with a
// fixed header.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/tensor.hpp"

namespace mixq {

/// Bytes needed for n values of `bits` bits each.
constexpr std::size_t packed_bytes(std::size_t n, int bits) noexcept {
  return (n / 8) * static_cast<std::size_t>(bits) + ((n % 8) * static_cast<std::size_t>(bits) + 7) / 8;
}

template <quantized_type Q>
class packed_tensor {
 public:
  using storage_type = typename Q::storage_type;
  static constexpr std::size_t max_rank = 6;
  /// Serialized header: magic "MQPT", bits, signedness, rank, reserved, 6 x u64 dimensions.
  static constexpr std::size_t header_bytes = 8 + 8 * max_rank;

  packed_tensor() = default;

  /// Packs values (each must be a value of Q; value_error otherwise).
  packed_tensor(shape_t shape, std::span<const storage_type> values) : shape_(std::move(shape)) {
    check_rank(shape_.size());
    const std::size_t n = shape_numel(shape_);
    if (n != values.size())
      throw shape_error(detail::cat("packed_tensor of shape ", shape_string(shape_), " needs ",
                                    n, " values, got ", values.size()));
    bytes_.assign(packed_bytes(n, Q::bits), 0);
    for (std::size_t i = 0; i < n; ++i) {
      if (!Q::contains(values[i]))
        throw value_error(detail::cat("value ", int(values[i]), " at index ", i,
                                      " is not a value of ", bitwidth_of<Q>().name(),
                                      ": expected ", Q::min, "..", Q::max));
      put(i, Q::encode(values[i]));
    }
  }
  explicit packed_tensor(const tensor<storage_type>& t) : packed_tensor(t.shape(), t.span()) {}

  const shape_t& shape() const noexcept { return shape_; }
  std::size_t size() const noexcept { return shape_numel(shape_); }
  /// The packed payload: exactly packed_bytes(size(), Q::bits) bytes.
  std::span<const std::uint8_t> bytes() const noexcept { return bytes_; }
  /// Payload plus the fixed header: what serialize() writes.
  std::size_t serialized_bytes() const noexcept { return header_bytes + bytes_.size(); }

  /// The value at flat index i (unchecked).
  storage_type operator[](std::size_t i) const noexcept {
    return static_cast<storage_type>(Q::decode(get(i)));
  }
  tensor<storage_type> unpack() const {
    tensor<storage_type> t(shape_);
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = (*this)[i];
    return t;
  }

  std::vector<std::uint8_t> serialize() const {
    std::vector<std::uint8_t> out(header_bytes, 0);
    std::memcpy(out.data(), "MQPT", 4);
    out[4] = Q::bits;
    out[5] = Q::is_signed;
    out[6] = static_cast<std::uint8_t>(shape_.size());
    for (std::size_t d = 0; d < shape_.size(); ++d) {
      const std::uint64_t v = shape_[d];
      for (int b = 0; b < 8; ++b) out[8 + 8 * d + b] = static_cast<std::uint8_t>(v >> (8 * b));
    }
    out.insert(out.end(), bytes_.begin(), bytes_.end());
    return out;
  }

  /// Inverse of serialize(); every header field and the length are checked (format_error).
  static packed_tensor deserialize(std::span<const std::uint8_t> in) {
    if (in.size() < header_bytes)
      throw format_error(detail::cat("packed tensor: ", in.size(), " bytes, expected at least a ",
                                     header_bytes, "-byte header"));
    if (std::memcmp(in.data(), "MQPT", 4) != 0)
      throw format_error("packed tensor: bad magic, expected \"MQPT\"");
    if (in[4] != Q::bits || in[5] != Q::is_signed)
      throw format_error(detail::cat("packed tensor: holds ", int(in[4]), "-bit ",
                                     in[5] ? "signed" : "unsigned", " values, expected ",
                                     bitwidth_of<Q>().name()));
    if (in[6] > max_rank || in[7] != 0)
      throw format_error(detail::cat("packed tensor: rank ", int(in[6]), " invalid, expected <= ",
                                     max_rank));
    packed_tensor t;
    for (std::size_t d = 0; d < in[6]; ++d) {
      std::uint64_t v = 0;
      for (int b = 0; b < 8; ++b) v |= std::uint64_t(in[8 + 8 * d + b]) << (8 * b);
      t.shape_.push_back(static_cast<std::size_t>(v));
    }
    std::size_t n = 0;
    try {
      n = shape_numel(t.shape_);
    } catch (const shape_error&) {
      throw format_error("packed tensor: dimensions overflow");
    }
    // Compare sizes before allocating, so a corrupt header cannot request a huge buffer.
    if (n > (in.size() - header_bytes) * 8 || packed_bytes(n, Q::bits) != in.size() - header_bytes)
      throw format_error(detail::cat("packed tensor: payload has ", in.size() - header_bytes,
                                     " bytes, expected ", packed_bytes(n, Q::bits), " for shape ",
                                     shape_string(t.shape_)));
    t.bytes_.assign(in.begin() + header_bytes, in.end());
    return t;
  }

  friend bool operator==(const packed_tensor&, const packed_tensor&) = default;

 private:
  static void check_rank(std::size_t r) {
    if (r > max_rank)
      throw shape_error(detail::cat("packed_tensor rank ", r, " exceeds the maximum ", max_rank));
  }
  void put(std::size_t i, std::uint8_t code) {
    const std::size_t bit = i * Q::bits;
    // A code spans at most two bytes, since Q::bits <= 8.
    const unsigned v = unsigned(code) << (bit % 8);
    bytes_[bit / 8] |= static_cast<std::uint8_t>(v);
    if ((bit % 8) + Q::bits > 8) bytes_[bit / 8 + 1] |= static_cast<std::uint8_t>(v >> 8);
  }
  std::uint8_t get(std::size_t i) const noexcept {
    const std::size_t bit = i * Q::bits;
    unsigned v = bytes_[bit / 8];
    if ((bit % 8) + Q::bits > 8) v |= unsigned(bytes_[bit / 8 + 1]) << 8;
    return static_cast<std::uint8_t>((v >> (bit % 8)) & Q::code_mask);
  }

  shape_t shape_;
  std::vector<std::uint8_t> bytes_;
};

}  // namespace mixq
