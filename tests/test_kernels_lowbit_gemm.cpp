// The int8 path (VNNI and portable) and the lowbit_gemm front door against the scalar
// reference for every qtype pair; gemm_u8s8s32 against plain dot products; kernel tables.
#include <doctest/doctest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/kernels.hpp"
#include "test_util.hpp"

namespace mk = mixq::kernels;
using mixq::bitwidth;

using mixq::test::all_bitwidths;
using mixq::test::supported_paths;

namespace {
struct operand {
  bitwidth type;
  std::size_t rows, k, words;
  mixq::aligned_vector<std::uint64_t> bits;
  operand(bitwidth t, std::size_t r, std::size_t kk, int mode, std::mt19937_64& rng)
      : type(t), rows(r), k(kk), words((kk + 511) / 512 * 8), bits(r * t.bits * words, 0) {
    for (std::size_t pr = 0; pr < r * t.bits; ++pr)
      for (std::size_t w = 0; w * 64 < kk; ++w) {
        // mode 0 random codes, 1 all-zero bits, 2 all-one bits (extreme codes).
        std::uint64_t x = mode == 0 ? rng() : (mode == 1 ? 0 : ~std::uint64_t(0));
        // For two's complement, all-one bits except the sign plane gives max, sign alone min.
        if (mode == 3) x = (pr % t.bits == std::size_t(t.bits - 1)) ? ~std::uint64_t(0) : 0;
        if (kk - w * 64 < 64) x &= (std::uint64_t(1) << (kk - w * 64)) - 1;
        bits[pr * words + w] = x;
      }
  }
  mk::bitplane_view view() const { return {type, rows, k, words, bits.data()}; }
};

}  // namespace

TEST_CASE("gemm_u8s8s32 against dot products, ragged shapes and strides") {
  std::mt19937 rng(9);
  for (auto [M, N, K] : {std::array<std::size_t, 3>{1, 1, 1},
                         {7, 17, 3},
                         {13, 33, 65},
                         {6, 64, 4},
                         {20, 70, 4097},
                         {3, 5, 0}})
    for (mk::isa path : supported_paths()) {
      const std::size_t lda = K + 3, ldw = K + 1, ldc = N + 2;
      std::vector<std::uint8_t> A(M * lda);
      std::vector<std::int8_t> W(N * ldw);
      for (auto& x : A) x = std::uint8_t(rng());
      for (auto& x : W) x = std::int8_t(rng());
      std::vector<std::int32_t> C(M * ldc, 777);
      mk::gemm_u8s8s32(M, N, K, A.data(), lda, W.data(), ldw, C.data(), ldc, {1, path});
      int bad = 0;
      for (std::size_t m = 0; m < M; ++m) {
        for (std::size_t n = 0; n < N; ++n) {
          std::int32_t s = 0;
          for (std::size_t k = 0; k < K; ++k) s += std::int32_t(A[m * lda + k]) * W[n * ldw + k];
          bad += C[m * ldc + n] != s;
        }
        for (std::size_t n = N; n < ldc; ++n) bad += C[m * ldc + n] != 777;
      }
      CAPTURE(M);
      CAPTURE(N);
      CAPTURE(K);
      CAPTURE(mk::isa_name(path));
      CHECK(bad == 0);
    }
  std::vector<std::uint8_t> a(10);
  std::vector<std::int8_t> w(10);
  std::vector<std::int32_t> c(10);
  CHECK_THROWS_AS(mk::gemm_u8s8s32(2, 2, 5, a.data(), 4, w.data(), 5, c.data(), 2),
                  mixq::shape_error);
}

TEST_CASE("int8_gemm and lowbit_gemm: every qtype pair, every path, extreme codes") {
  std::mt19937_64 rng(10);
  int bad = 0;
  for (bitwidth at : all_bitwidths())
    for (bitwidth wt : all_bitwidths())
      for (auto [M, N, K, mode] : {std::array<std::size_t, 4>{7, 19, 65, 0},
                                   {3, 5, 1, 0},
                                   {2, 17, 63, 2},
                                   {2, 3, 64, 1},
                                   {5, 2, 130, 3}}) {
        const operand A(at, M, K, int(mode), rng), W(wt, N, K, int(mode), rng);
        std::vector<std::int32_t> ref(M * N), got(M * N);
        mk::bitserial_gemm_reference(A.view(), W.view(), std::span<std::int32_t>(ref));
        for (mk::isa path : supported_paths()) {
          std::fill(got.begin(), got.end(), -5);
          mk::int8_gemm(A.view(), W.view(), std::span<std::int32_t>(got), {1, path});
          if (got != ref) {
            CAPTURE(at.name());
            CAPTURE(wt.name());
            CAPTURE(M);
            CAPTURE(N);
            CAPTURE(K);
            CAPTURE(mode);
            CAPTURE(mk::isa_name(path));
            CHECK(got == ref);
            ++bad;
          }
          std::fill(got.begin(), got.end(), -5);
          mk::lowbit_gemm(A.view(), W.view(), std::span<std::int32_t>(got), {1, path});
          bad += got != ref;
        }
      }
  CHECK(bad == 0);
}

TEST_CASE("int8_gemm and lowbit_gemm with K = 0 or no rows") {
  for (auto [M, N] : {std::pair<std::size_t, std::size_t>{3, 4}, {0, 4}, {3, 0}}) {
    const mixq::bitplane_matrix<mixq::qint<8>> A(M, 0);
    const mixq::bitplane_matrix<mixq::qbinary> W(N, 0);
    for (mk::isa path : supported_paths()) {
      std::vector<std::int32_t> c(M * N, 5);
      mk::int8_gemm(A, W, std::span<std::int32_t>(c), {1, path});
      for (int v : c) CHECK(v == 0);
      std::fill(c.begin(), c.end(), 5);
      mk::lowbit_gemm(A, W, std::span<std::int32_t>(c), {1, path});
      for (int v : c) CHECK(v == 0);
    }
  }
}

TEST_CASE("int8_gemm large K and two threads") {
  std::mt19937_64 rng(11);
  mk::set_num_threads(2);
  for (auto [at, wt] : {std::pair{bitwidth{8, false}, bitwidth{8, false}},
                        {bitwidth{8, true}, bitwidth{8, true}},
                        {bitwidth{1, true}, bitwidth{5, true}}}) {
    const operand A(at, 31, 4097, 0, rng), W(wt, 50, 4097, 0, rng);
    std::vector<std::int32_t> ref(31 * 50), got(31 * 50);
    mk::bitserial_gemm_reference(A.view(), W.view(), std::span<std::int32_t>(ref));
    mk::int8_gemm(A.view(), W.view(), std::span<std::int32_t>(got), {2, std::nullopt});
    CHECK(got == ref);
  }
  mk::set_num_threads(1);
}

TEST_CASE("int8_gemm and lowbit_gemm bad inputs") {
  const mixq::bitplane_matrix<mixq::qint<2>> A(3, 10), A2(3, 11);
  const mixq::bitplane_matrix<mixq::quint<4>> W(4, 10);
  std::vector<std::int32_t> c(12), small(11);
  CHECK_THROWS_AS(mk::int8_gemm(A2, W, std::span<std::int32_t>(c)), mixq::shape_error);
  CHECK_THROWS_AS(mk::int8_gemm(A, W, std::span<std::int32_t>(small)), mixq::shape_error);
  CHECK_THROWS_AS(mk::lowbit_gemm(A2, W, std::span<std::int32_t>(c)), mixq::shape_error);
  CHECK_THROWS_AS(mk::lowbit_gemm(A, W, std::span<std::int32_t>(small)), mixq::shape_error);
  mk::bitplane_view bad(A);
  bad.type.bits = 9;
  CHECK_THROWS_AS(mk::int8_gemm(bad, W, std::span<std::int32_t>(c)), mixq::bits_error);
  CHECK_THROWS_AS(mk::lowbit_gemm(W, bad, std::span<std::int32_t>(c)), mixq::bits_error);
  CHECK_THROWS_AS(mk::choose_kernel({0, false}, {2, false}), mixq::bits_error);
}

TEST_CASE("kernel tables: default, text and file round trip, bad files, calibrate") {
  const auto d = mk::kernel_table::default_table();
  CHECK(d.at(1, 1) == mk::gemm_kernel::bitserial);
  CHECK(d.at(2, 2) == mk::gemm_kernel::bitserial);
  CHECK(d.at(1, 4) == mk::gemm_kernel::bitserial);
  CHECK(d.at(8, 8) == (mk::has_avx512_vnni() ? mk::gemm_kernel::int8 : mk::gemm_kernel::bitserial));
  mk::kernel_table t;
  t.at(3, 5) = mk::gemm_kernel::int8;
  CHECK(mk::kernel_table::from_string(t.to_string()) == t);
  const std::string path = "test_kernels_lowbit_gemm_table.txt";
  t.save(path);
  CHECK(mk::kernel_table::load(path) == t);
  mk::load_kernel_table(path);
  CHECK(mk::active_kernel_table() == t);
  CHECK(mk::choose_kernel({3, true}, {5, false}) == mk::gemm_kernel::int8);
  CHECK(mk::choose_kernel({5, true}, {3, false}) == mk::gemm_kernel::bitserial);
  std::remove(path.c_str());
  CHECK_THROWS_AS(mk::kernel_table::load("no/such/dir/table.txt"), mixq::io_error);
  CHECK_THROWS_AS(mk::kernel_table::from_string("mixq-kernel-table 2\n"), mixq::format_error);
  CHECK_THROWS_AS(mk::kernel_table::from_string("mixq-kernel-table 1\nbbbb\n"), mixq::format_error);
  CHECK_THROWS_AS(mk::kernel_table::from_string("mixq-kernel-table 1\nbbbbbbbx\n"),
                  mixq::format_error);
  const std::string cpath = "test_kernels_lowbit_gemm_calibrated.txt";
  const auto c = mk::calibrate(8, 8, 64, 1, cpath);
  CHECK(mk::kernel_table::load(cpath) == c);
  CHECK(mk::active_kernel_table() == c);
  std::remove(cpath.c_str());
  mk::set_kernel_table(mk::kernel_table::default_table());
}

TEST_CASE("packed_int8_weights: packed once, reused across calls, every path") {
  std::mt19937_64 rng(12);
  int bad = 0;
  // N = 83: one full 4-block AVX-512 tile plus tails; K = 4200: two K blocks (1024 + 26 groups).
  for (auto [at, wt] : {std::pair{bitwidth{4, false}, bitwidth{4, true}},
                        {bitwidth{8, true}, bitwidth{8, false}},
                        {bitwidth{3, true}, bitwidth{1, true}},
                        {bitwidth{8, false}, bitwidth{2, false}}})
    for (std::size_t K : {std::size_t(131), std::size_t(4200)}) {
      const std::size_t N = 83;
      const operand W(wt, N, K, 0, rng);
      const auto packed = mk::packed_int8_weights::pack(W.view());
      CHECK(packed.rows() == N);
      CHECK(packed.cols() == K);
      for (std::size_t M : {std::size_t(1), std::size_t(13)}) {
        const operand A(at, M, K, 0, rng);
        std::vector<std::int32_t> ref(M * N), got(M * N);
        mk::bitserial_gemm_reference(A.view(), W.view(), std::span<std::int32_t>(ref));
        for (mk::isa path : supported_paths()) {
          std::fill(got.begin(), got.end(), -5);
          mk::int8_gemm(A.view(), packed, std::span<std::int32_t>(got), {1, path});
          CAPTURE(at.name());
          CAPTURE(wt.name());
          CAPTURE(K);
          CAPTURE(M);
          CAPTURE(mk::int8_gemm_kernel_name({1, path}));
          CHECK(got == ref);
          bad += got != ref;
        }
      }
    }
  CHECK(bad == 0);
}

TEST_CASE("packed_int8_weights from bytes: gemm_u8s8s32 with strides, kernels per path") {
  std::mt19937 rng(13);
  for (auto [M, N, K] : {std::array<std::size_t, 3>{13, 83, 4200}, {7, 16, 8}, {1, 33, 5}}) {
    const std::size_t lda = K + 5, ldw = K + 2, ldc = N + 1;
    std::vector<std::uint8_t> A(M * lda);
    std::vector<std::int8_t> W(N * ldw);
    for (auto& x : A) x = std::uint8_t(rng());
    for (auto& x : W) x = std::int8_t(rng());
    const auto packed = mk::packed_int8_weights::pack(N, K, W.data(), ldw);
    for (std::size_t n = 0; n < N; ++n) {
      std::int64_t s = 0;
      for (std::size_t k = 0; k < K; ++k) s += W[n * ldw + k];
      CHECK(packed.row_sum(n) == s);
    }
    for (mk::isa path : supported_paths()) {
      std::vector<std::int32_t> C(M * ldc, 99);
      mk::gemm_u8s8s32(M, A.data(), lda, packed, C.data(), ldc, {1, path});
      int bad = 0;
      for (std::size_t m = 0; m < M; ++m) {
        for (std::size_t n = 0; n < N; ++n) {
          std::int32_t s = 0;
          for (std::size_t k = 0; k < K; ++k) s += std::int32_t(A[m * lda + k]) * W[n * ldw + k];
          bad += C[m * ldc + n] != s;
        }
        bad += C[m * ldc + N] != 99;
      }
      CAPTURE(mk::int8_gemm_kernel_name({1, path}));
      CHECK(bad == 0);
    }
  }
  // The kernel each path takes on this CPU.
  CHECK(std::string(mk::int8_gemm_kernel_name({1, mk::isa::portable})) == "portable");
  if (mk::isa_supported(mk::isa::avx2))
    CHECK(std::string(mk::int8_gemm_kernel_name({1, mk::isa::avx2})) ==
          (mk::has_avx_vnni() ? "avx_vnni" : "portable"));
  if (mk::isa_supported(mk::isa::avx512_vpopcntdq) && mk::has_avx512_vnni())
    CHECK(std::string(mk::int8_gemm_kernel_name({1, mk::isa::avx512_vpopcntdq})) == "avx512_vnni");
}

TEST_CASE("packed_int8_weights bad inputs") {
  std::vector<std::int8_t> w(40);
  CHECK_THROWS_AS(mk::packed_int8_weights::pack(4, 10, w.data(), 9), mixq::shape_error);
  const auto packed = mk::packed_int8_weights::pack(4, 10, w.data(), 10);
  std::vector<std::uint8_t> a(30);
  std::vector<std::int32_t> c(12), small(11);
  CHECK_THROWS_AS(mk::gemm_u8s8s32(3, a.data(), 9, packed, c.data(), 4), mixq::shape_error);
  CHECK_THROWS_AS(mk::gemm_u8s8s32(3, a.data(), 10, packed, c.data(), 3), mixq::shape_error);
  const mixq::bitplane_matrix<mixq::qint<2>> A(3, 10), A2(3, 11);
  CHECK_THROWS_AS(mk::int8_gemm(A2, packed, std::span<std::int32_t>(c)), mixq::shape_error);
  CHECK_THROWS_AS(mk::int8_gemm(A, packed, std::span<std::int32_t>(small)), mixq::shape_error);
  mk::bitplane_view bad(A);
  bad.type.bits = 9;
  CHECK_THROWS_AS(mk::int8_gemm(bad, packed, std::span<std::int32_t>(c)), mixq::bits_error);
  CHECK_THROWS_AS(mk::packed_int8_weights::pack(bad), mixq::bits_error);
}

TEST_CASE("unpacking planes to bytes: the AVX-512 BW form against the plain one") {
  // The maps int8_gemm builds (activations shifted into u8, weights into s8) are affine in the
  // plane bits for every qtype, so the vector form is the one taken; both agree byte for byte,
  // padding included, over ragged K.
  std::mt19937_64 rng(21);
  for (bitwidth t : all_bitwidths())
    for (std::size_t K : {1, 63, 64, 65, 130, 511, 700}) {
      const operand v(t, 3, K, 0, rng);
      const std::size_t kpad = (K + 3) / 4 * 4;
      std::array<std::uint8_t, 256> amap{}, wmap{};
      const int pa = t.is_signed ? 128 : 0, pw = (!t.is_signed && t.bits == 8) ? 128 : 0;
      for (unsigned c = 0; c < (1u << t.bits); ++c) {
        amap[c] = static_cast<std::uint8_t>(mk::detail::code_value(t, c) + pa);
        wmap[c] = static_cast<std::uint8_t>(mk::detail::code_value(t, c) - pw);
      }
      for (const auto* map : {&amap, &wmap}) {
        CAPTURE(t.name());
        CAPTURE(K);
        CHECK(mk::detail::map_is_plane_affine(t, *map));
        const auto plain = mk::detail::unpack_codes_portable(v.view(), *map, kpad);
        // Each byte is the mapped code read off the planes bit by bit.
        bool ok = true;
        for (std::size_t r = 0; r < 3; ++r)
          for (std::size_t k = 0; k < kpad; ++k) {
            unsigned c = 0;
            for (int p = 0; p < t.bits && k < K; ++p)
              c |= unsigned((v.bits[(r * t.bits + p) * v.words + k / 64] >> (k % 64)) & 1u) << p;
            ok = ok && plain[r * kpad + k] == (k < K ? (*map)[c] : 0);
          }
        CHECK(ok);
        for (mk::isa path : supported_paths())
          CHECK(mk::detail::unpack_codes(v.view(), *map, kpad, path) == plain);
      }
    }
  // A map that is not plane-affine takes the plain form on every path.
  std::array<std::uint8_t, 256> odd{};
  for (unsigned c = 0; c < 16; ++c) odd[c] = static_cast<std::uint8_t>(c * c);
  CHECK_FALSE(mk::detail::map_is_plane_affine({4, false}, odd));
  const operand v({4, false}, 2, 100, 0, rng);
  for (mk::isa path : supported_paths())
    CHECK(mk::detail::unpack_codes(v.view(), odd, 100, path) ==
          mk::detail::unpack_codes_portable(v.view(), odd, 100));
}
