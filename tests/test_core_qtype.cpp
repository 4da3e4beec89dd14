// qtype, the quantized_type concept, bitwidth and the runtime dispatch.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "mixq/core/qtype.hpp"

using namespace mixq;

// What the compiler can check is checked by the compiler.
static_assert(valid_qtype<1, false> && valid_qtype<8, true> && valid_qtype<4, false>);
static_assert(!valid_qtype<0, false> && !valid_qtype<9, false> && !valid_qtype<9, true>);
static_assert(!valid_qtype<-1, true> && !valid_qtype<16, false>);
static_assert(quantized_type<qint<3>> && quantized_type<const quint<8>>);
static_assert(!quantized_type<int> && !quantized_type<std::int8_t>);
static_assert(qint<8>::min == -128 && qint<8>::max == 127 && qint<8>::levels == 256);
static_assert(quint<8>::min == 0 && quint<8>::max == 255);
static_assert(qint<2>::min == -2 && qint<2>::max == 1);
static_assert(quint<1>::min == 0 && quint<1>::max == 1 && quint<1>::levels == 2);
static_assert(qbinary::is_binary && qbinary::min == -1 && qbinary::max == 1);
static_assert(qbinary::levels == 2 && !qbinary::contains(0) && qbinary::contains(-1));
static_assert(std::is_same_v<qint<5>::storage_type, std::int8_t>);
static_assert(std::is_same_v<quint<5>::storage_type, std::uint8_t>);
static_assert(qint<3>::encode(-1) == 0b111 && qint<3>::decode(0b111) == -1);
static_assert(qint<3>::encode(-4) == 0b100 && qint<3>::decode(0b100) == -4);
static_assert(qbinary::encode(1) == 1 && qbinary::encode(-1) == 0 && qbinary::decode(0) == -1);
static_assert(bitwidth_of<qint<4>>() == bitwidth{4, true});

template <int B, bool S>
void check_type() {
  using Q = qtype<B, S>;
  CAPTURE(B);
  CAPTURE(S);
  int count = 0;
  for (int v = -300; v <= 300; ++v) {
    if (!Q::contains(v)) continue;
    ++count;
    CHECK(v >= Q::min);
    CHECK(v <= Q::max);
    CHECK(Q::encode(v) <= Q::code_mask);
    CHECK(Q::decode(Q::encode(v)) == v);
    // The value fits the storage type.
    CHECK(static_cast<int>(static_cast<typename Q::storage_type>(v)) == v);
  }
  CHECK(count == Q::levels);
  // Every code decodes to a distinct value of the type.
  std::set<int> seen;
  for (unsigned c = 0; c < unsigned(Q::levels); ++c) {
    const int v = Q::decode(static_cast<std::uint8_t>(c));
    CHECK(Q::contains(v));
    seen.insert(v);
  }
  CHECK(seen.size() == std::size_t(Q::levels));
}

TEST_CASE("every qtype holds exactly its levels and round-trips its codes") {
  [&]<int... B>(std::integer_sequence<int, B...>) {
    (check_type<B + 1, false>(), ...);
    (check_type<B + 1, true>(), ...);
  }
  (std::make_integer_sequence<int, 8>{});
}

TEST_CASE("dispatch maps runtime bit-widths onto the instantiations") {
  for (int b = 1; b <= 8; ++b)
    for (bool s : {false, true}) {
      const bitwidth bw{b, s};
      CAPTURE(bw.name());
      const auto got = dispatch(
          [](auto tag) {
            using Q = typename decltype(tag)::type;
            return bitwidth_of<Q>();
          },
          bw);
      CHECK(got == bw);
    }
  // Pairs: every (a, w) combination reaches the matching pair of types.
  int calls = 0;
  for (int a = 1; a <= 8; ++a)
    for (int w = 1; w <= 8; ++w) {
      const int prod = dispatch(
          [&](auto ta, auto tw) {
            ++calls;
            return decltype(ta)::type::bits * 10 + decltype(tw)::type::bits;
          },
          bitwidth{a, true}, bitwidth{w, false});
      CHECK(prod == a * 10 + w);
    }
  CHECK(calls == 64);
  // Void visitors and three operands.
  int seen = 0;
  dispatch([&](auto, auto, auto t3) { seen = decltype(t3)::type::bits; }, bitwidth{1, false},
           bitwidth{2, true}, bitwidth{7, false});
  CHECK(seen == 7);
}

TEST_CASE("runtime bit-widths out of range raise bits_error naming the value") {
  CHECK_THROWS_AS(bitwidth({0, false}).validate(), bits_error);
  CHECK_THROWS_AS(bitwidth({9, true}).validate(), bits_error);
  try {
    dispatch([](auto, auto) { return 0; }, bitwidth{2, false}, bitwidth{12, false});
    FAIL("expected bits_error");
  } catch (const bits_error& e) {
    CHECK(std::string(e.what()).find("12") != std::string::npos);
    CHECK(std::string(e.what()).find("1..8") != std::string::npos);
  }
  // The error is a mixq::error and a std::runtime_error.
  CHECK_THROWS_AS(bitwidth({-3, false}).validate(), mixq::error);
  CHECK_THROWS_AS(bitwidth({-3, false}).validate(), std::runtime_error);
  CHECK(bitwidth{1, true}.name() == "binary1");
  CHECK(bitwidth{3, true}.name() == "int3");
  CHECK(bitwidth{3, false}.name() == "uint3");
}
