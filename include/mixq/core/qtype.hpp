// Compile-time quantized value types qtype<Bits, Signed> (1..8 bits, unsigned, two's complement,
// and the binary {-1,+1} type), their runtime description `bitwidth`, and the one dispatch
// function that maps runtime bit-widths onto template instantiations.
#pragma once

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "mixq/core/error.hpp"

namespace mixq {

/// A quantized value type of `Bits` bits. Signed types use two's complement, except the
/// signed 1-bit type, which is binary: bit 1 means +1 and bit 0 means -1.
/// Bit-widths outside 1..8 do not name a type (a compile error; see `valid_qtype`).
template <int Bits, bool Signed>
  requires(Bits >= 1 && Bits <= 8)
struct qtype {
  static constexpr int bits = Bits;
  static constexpr bool is_signed = Signed;
  static constexpr bool is_binary = Signed && Bits == 1;
  /// The smallest integer that holds every value.
  using storage_type = std::conditional_t<Signed, std::int8_t, std::uint8_t>;
  static constexpr int levels = 1 << Bits;
  static constexpr int min = is_binary ? -1 : (Signed ? -(1 << (Bits - 1)) : 0);
  static constexpr int max = is_binary ? 1 : (Signed ? (1 << (Bits - 1)) - 1 : (1 << Bits) - 1);
  /// The mask of the code's bits.
  static constexpr std::uint8_t code_mask = static_cast<std::uint8_t>((1u << Bits) - 1u);

  /// True when v is one of the type's values (for binary: exactly -1 or +1).
  static constexpr bool contains(int v) noexcept {
    if constexpr (is_binary) return v == -1 || v == 1;
    return v >= min && v <= max;
  }
  /// The `Bits`-bit code of a value (two's complement low bits; binary: +1 -> 1, -1 -> 0).
  /// Precondition: contains(v).
  static constexpr std::uint8_t encode(int v) noexcept {
    if constexpr (is_binary) return v > 0 ? 1 : 0;
    return static_cast<std::uint8_t>(static_cast<unsigned>(v) & code_mask);
  }
  /// The value of a code (only the low `Bits` bits are read).
  static constexpr int decode(std::uint8_t code) noexcept {
    const int c = code & code_mask;
    if constexpr (is_binary) return c ? 1 : -1;
    if constexpr (Signed) return c >= (1 << (Bits - 1)) ? c - (1 << Bits) : c;
    return c;
  }
};

template <int B>
using qint = qtype<B, true>;
template <int B>
using quint = qtype<B, false>;
/// The binary type {-1, +1}.
using qbinary = qint<1>;

namespace detail {
template <class T>
struct is_qtype : std::false_type {};
template <int B, bool S>
struct is_qtype<qtype<B, S>> : std::true_type {};
}  // namespace detail

/// Exactly the qtype instantiations.
template <class T>
concept quantized_type = detail::is_qtype<std::remove_cv_t<T>>::value;

/// Whether qtype<B, S> names a type (false outside 1..8); lets tests prove misuse fails.
template <int B, bool S>
concept valid_qtype = requires { typename qtype<B, S>; };

/// A bit-width chosen at run time (search results are).
struct bitwidth {
  int bits = 8;
  bool is_signed = false;

  friend constexpr bool operator==(const bitwidth&, const bitwidth&) = default;
  constexpr bool is_binary() const noexcept { return is_signed && bits == 1; }
  /// Throws bits_error unless 1 <= bits <= 8.
  void validate() const {
    if (bits < 1 || bits > 8)
      throw bits_error(detail::cat("bit-width ", bits, " is out of range: expected 1..8"));
  }
  std::string name() const {
    return detail::cat(is_binary() ? "binary" : (is_signed ? "int" : "uint"), bits);
  }
};

/// The runtime description of a compile-time type.
template <quantized_type Q>
constexpr bitwidth bitwidth_of() noexcept {
  return {Q::bits, Q::is_signed};
}

/// A type tag passed to dispatch visitors: `tag.type` names the qtype.
template <quantized_type Q>
struct qtype_tag {
  using type = Q;
};

namespace detail {
template <bool S, class F, int... Bs>
auto visit_bits(int bits, F&& f, std::integer_sequence<int, Bs...>) {
  using R = decltype(f(qtype_tag<qtype<1, S>>{}));
  if constexpr (std::is_void_v<R>) {
    (void)((bits == Bs + 1 ? (f(qtype_tag<qtype<Bs + 1, S>>{}), true) : false) || ...);
  } else {
    // The bits were validated by the caller, so exactly one alternative is taken.
    std::optional<R> result;
    (void)((bits == Bs + 1 ? (result.emplace(f(qtype_tag<qtype<Bs + 1, S>>{})), true) : false) ||
           ...);
    return std::move(*result);
  }
}

template <class F>
auto visit_one(bitwidth b, F&& f) {
  b.validate();
  if (b.is_signed) return visit_bits<true>(b.bits, f, std::make_integer_sequence<int, 8>{});
  return visit_bits<false>(b.bits, f, std::make_integer_sequence<int, 8>{});
}
}  // namespace detail

/// Calls f(qtype_tag<Q1>{}, qtype_tag<Q2>{}, ...) with the qtypes that the runtime bit-widths
/// name, e.g. dispatch(f, a_bits, w_bits). Throws bits_error for bits outside 1..8.
/// Every alternative must return the same type (returned by value).
template <class F>
auto dispatch(F&& f) {
  return f();
}
template <class F, std::convertible_to<bitwidth>... Rest>
auto dispatch(F&& f, bitwidth first, Rest... rest) {
  for (const bitwidth& b : {first, bitwidth(rest)...}) b.validate();
  return detail::visit_one(first, [&](auto tag) {
    return dispatch([&](auto... tags) { return f(tag, tags...); }, rest...);
  });
}

}  // namespace mixq
