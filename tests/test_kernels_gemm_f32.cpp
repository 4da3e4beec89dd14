// gemm_f32 (every path the CPU has) and gemm_f32_reference against a double-precision
// reference: all transpose combinations, ragged sizes, padded leading dimensions, beta 0/1/other.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mixq/kernels.hpp"

namespace mk = mixq::kernels;

namespace {
/// Max |got - want| / (sum |terms| + 1) over C, with want computed in double.
double check(mk::transpose ta, mk::transpose tb, std::size_t M, std::size_t N, std::size_t K,
             float alpha, float beta, std::size_t pad, std::optional<mk::isa> path, bool reference,
             std::size_t threads, std::mt19937& rng) {
  const bool at = ta == mk::transpose::yes, bt = tb == mk::transpose::yes;
  const std::size_t lda = (at ? M : K) + pad, ldb = (bt ? K : N) + pad, ldc = N + pad;
  std::uniform_real_distribution<float> d(-1, 1);
  std::vector<float> A((at ? K : M) * lda + 1), B((bt ? N : K) * ldb + 1), C(M * ldc + 1);
  for (auto& x : A) x = d(rng);
  for (auto& x : B) x = d(rng);
  for (auto& x : C) x = d(rng);
  const std::vector<float> C0 = C;
  if (reference)
    mk::gemm_f32_reference(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(),
                           ldc);
  else
    mk::gemm_f32(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc,
                 {threads, path});
  double worst = 0;
  for (std::size_t i = 0; i < M; ++i)
    for (std::size_t j = 0; j < N; ++j) {
      double want = beta == 0.0f ? 0.0 : double(beta) * C0[i * ldc + j], mag = std::abs(want);
      for (std::size_t k = 0; k < K; ++k) {
        const double t = double(alpha) * (at ? A[k * lda + i] : A[i * lda + k]) *
                         (bt ? B[j * ldb + k] : B[k * ldb + j]);
        want += t;
        mag += std::abs(t);
      }
      worst = std::max(worst, std::abs(double(C[i * ldc + j]) - want) / (mag + 1));
    }
  // Padding between rows is left alone.
  for (std::size_t i = 0; i < M; ++i)
    for (std::size_t j = N; j < ldc && i * ldc + j < C.size(); ++j)
      if (C[i * ldc + j] != C0[i * ldc + j]) worst = 1;
  if (C.back() != C0.back()) worst = 1;
  return worst;
}
}  // namespace

TEST_CASE("gemm_f32 paths and reference against double precision") {
  std::mt19937 rng(5);
  std::vector<std::optional<mk::isa>> paths = {std::nullopt};
  for (mk::isa i : mk::all_isas)
    if (mk::isa_supported(i)) paths.push_back(i);
  const std::size_t shapes[][3] = {{1, 1, 1},   {5, 7, 3},     {12, 32, 16}, {13, 33, 17},
                                   {11, 31, 1}, {37, 70, 400}, {100, 65, 9}, {0, 4, 5},
                                   {4, 0, 5},   {4, 5, 0}};
  for (auto ta : {mk::transpose::no, mk::transpose::yes})
    for (auto tb : {mk::transpose::no, mk::transpose::yes})
      for (auto& s : shapes)
        for (float beta : {0.0f, 1.0f, -0.5f})
          for (std::size_t pad : {0u, 3u}) {
            CAPTURE(int(ta));
            CAPTURE(int(tb));
            CAPTURE(s[0]);
            CAPTURE(s[1]);
            CAPTURE(s[2]);
            CAPTURE(beta);
            CAPTURE(pad);
            CHECK(check(ta, tb, s[0], s[1], s[2], 0.75f, beta, pad, {}, true, 1, rng) < 1e-6);
            for (auto p : paths) {
              CAPTURE(p ? mk::isa_name(*p) : "active");
              CHECK(check(ta, tb, s[0], s[1], s[2], 0.75f, beta, pad, p, false, 1, rng) < 1e-6);
            }
          }
}

TEST_CASE("gemm_f32 large blocks and two threads") {
  std::mt19937 rng(6);
  mk::set_num_threads(2);
  CHECK(check(mk::transpose::no, mk::transpose::yes, 130, 2100, 390, 1.0f, 0.0f, 1, {}, false, 2,
              rng) < 1e-6);
  CHECK(check(mk::transpose::yes, mk::transpose::no, 200, 40, 800, -2.0f, 1.0f, 0, {}, false, 0,
              rng) < 1e-6);
  mk::set_num_threads(1);
}

TEST_CASE("gemm_f32 bad leading dimensions") {
  std::vector<float> a(100), b(100), c(100);
  CHECK_THROWS_AS(mk::gemm_f32(mk::transpose::no, mk::transpose::no, 4, 4, 5, 1.0f, a.data(), 4,
                               b.data(), 4, 0.0f, c.data(), 4),
                  mixq::shape_error);
  CHECK_THROWS_AS(mk::gemm_f32(mk::transpose::yes, mk::transpose::no, 4, 4, 5, 1.0f, a.data(), 4,
                               b.data(), 3, 0.0f, c.data(), 4),
                  mixq::shape_error);
  CHECK_THROWS_AS(mk::gemm_f32(mk::transpose::no, mk::transpose::yes, 4, 4, 5, 1.0f, a.data(), 5,
                               b.data(), 5, 0.0f, c.data(), 3),
                  mixq::shape_error);
  CHECK_THROWS_AS(mk::gemm_f32_reference(mk::transpose::no, mk::transpose::yes, 4, 4, 5, 1.0f,
                                         a.data(), 5, b.data(), 4, 0.0f, c.data(), 4),
                  mixq::shape_error);
}
