// tensor<T>: a dense, row-major, owning n-dimensional array with a checked shape. Small on
// purpose: the kernels take spans of it and the autodiff graph stores its values in it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"

namespace mixq {

using shape_t = std::vector<std::size_t>;

/// Product of the dimensions; throws shape_error when it overflows size_t.
inline std::size_t shape_numel(std::span<const std::size_t> shape) {
  std::size_t n = 1;
  for (std::size_t d : shape) {
    if (d != 0 && n > static_cast<std::size_t>(-1) / d)
      throw shape_error("shape's element count overflows size_t");
    n *= d;
  }
  return n;
}

inline std::string shape_string(std::span<const std::size_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

template <class T>
class tensor {
 public:
  using value_type = T;

  tensor() = default;
  explicit tensor(shape_t shape, T fill = T{})
      : shape_(std::move(shape)), data_(shape_numel(shape_), fill) {}
  tensor(shape_t shape, std::span<const T> values) : shape_(std::move(shape)) {
    if (shape_numel(shape_) != values.size())
      throw shape_error(detail::cat("tensor of shape ", shape_string(shape_), " needs ",
                                    shape_numel(shape_), " values, got ", values.size()));
    data_.assign(values.begin(), values.end());
  }
  tensor(shape_t shape, std::initializer_list<T> values)
      : tensor(std::move(shape), std::span<const T>(values.begin(), values.size())) {}

  const shape_t& shape() const noexcept { return shape_; }
  std::size_t rank() const noexcept { return shape_.size(); }
  std::size_t size() const noexcept { return data_.size(); }
  bool empty() const noexcept { return data_.empty(); }
  /// Dimension i; throws shape_error when i >= rank().
  std::size_t dim(std::size_t i) const {
    if (i >= shape_.size())
      throw shape_error(detail::cat("dimension ", i, " requested of a rank-", shape_.size(),
                                    " tensor ", shape_string(shape_)));
    return shape_[i];
  }

  T* data() noexcept { return data_.data(); }
  const T* data() const noexcept { return data_.data(); }
  std::span<T> span() noexcept { return {data_.data(), data_.size()}; }
  std::span<const T> span() const noexcept { return {data_.data(), data_.size()}; }
  auto begin() noexcept { return data_.begin(); }
  auto end() noexcept { return data_.end(); }
  auto begin() const noexcept { return data_.begin(); }
  auto end() const noexcept { return data_.end(); }

  /// Flat element access, unchecked.
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }

  /// Row-major offset of a multi-index, checked against the shape.
  template <class... I>
  std::size_t offset(I... idx) const {
    if (sizeof...(I) != shape_.size())
      throw shape_error(detail::cat(sizeof...(I), " indices given for a rank-", shape_.size(),
                                    " tensor"));
    const std::size_t ix[] = {static_cast<std::size_t>(idx)...};
    std::size_t off = 0;
    for (std::size_t d = 0; d < sizeof...(I); ++d) {
      if (ix[d] >= shape_[d])
        throw shape_error(detail::cat("index ", ix[d], " out of range for dimension ", d,
                                      " of size ", shape_[d]));
      off = off * shape_[d] + ix[d];
    }
    return off;
  }
  /// Checked multi-index access: t.at(n, c, h, w).
  template <class... I>
  T& at(I... idx) {
    return data_[offset(idx...)];
  }
  template <class... I>
  const T& at(I... idx) const {
    return data_[offset(idx...)];
  }

  /// The same data under another shape with the same element count.
  tensor reshaped(shape_t shape) const& {
    tensor t = *this;
    t.reshape(std::move(shape));
    return t;
  }
  tensor reshaped(shape_t shape) && {
    reshape(std::move(shape));
    return std::move(*this);
  }
  void reshape(shape_t shape) {
    if (shape_numel(shape) != data_.size())
      throw shape_error(detail::cat("cannot reshape ", shape_string(shape_), " (", data_.size(),
                                    " elements) to ", shape_string(shape)));
    shape_ = std::move(shape);
  }
  void fill(T v) { std::fill(data_.begin(), data_.end(), v); }

  friend bool operator==(const tensor& a, const tensor& b) {
    return a.shape_ == b.shape_ && std::equal(a.data_.begin(), a.data_.end(), b.data_.begin());
  }

 private:
  shape_t shape_;
  aligned_vector<T> data_;
};

/// Throws shape_error unless `t` has exactly `expected` as its shape; `what` names the operand.
template <class T>
void expect_shape(const tensor<T>& t, std::span<const std::size_t> expected, const char* what) {
  if (!std::equal(t.shape().begin(), t.shape().end(), expected.begin(), expected.end()))
    throw shape_error(detail::cat(what, " has shape ", shape_string(t.shape()), ", expected ",
                                  shape_string(expected)));
}

template <class T>
std::ostream& operator<<(std::ostream& os, const tensor<T>& t) {
  return os << "tensor" << shape_string(t.shape());
}

}  // namespace mixq
