// mixq's error hierarchy: every bad input raises a subclass of mixq::error whose message names
// the offending value and what was expected. Hot loops check nothing; entry points check once.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mixq {

class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Tensor or matrix shapes that do not fit together.
class shape_error : public error {
 public:
  using error::error;
};
/// A bit-width outside what is supported (1..8, or what a kernel covers).
class bits_error : public error {
 public:
  using error::error;
};
/// A numeric parameter or value that is not acceptable (zero scale, NaN, code out of range).
class value_error : public error {
 public:
  using error::error;
};
/// A cost budget that cannot be met.
class budget_error : public error {
 public:
  using error::error;
};
/// A file or byte stream whose content is malformed.
class format_error : public error {
 public:
  using error::error;
};
/// A file that cannot be opened, read or written.
class io_error : public error {
 public:
  using error::error;
};

namespace detail {
/// Builds a message from streamable pieces: cat("K is ", k, ", expected ", e).
template <class... Ts>
std::string cat(const Ts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

}  // namespace mixq
