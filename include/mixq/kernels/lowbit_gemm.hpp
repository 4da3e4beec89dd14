// lowbit_gemm: the front door that runs a low-bit GEMM with the kernel that is fastest for its
// bit pair, bit-serial popcount or the int8 (VNNI) path, read from a kernel table. The default
// table picks bit-serial when w * a <= 4 (see docs/kernels.md); calibrate() measures the
// machine and can save the table to a file that load_kernel_table() reads back.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "mixq/core/aligned.hpp"
#include "mixq/core/error.hpp"
#include "mixq/kernels/bitserial_gemm.hpp"
#include "mixq/kernels/int8_gemm.hpp"

namespace mixq::kernels {

enum class gemm_kernel : std::uint8_t { bitserial, int8 };

/// The kernel per (activation bits, weight bits), 1..8 each.
struct kernel_table {
  std::array<std::array<gemm_kernel, 8>, 8> choice{};

  gemm_kernel& at(int abits, int wbits) { return choice[abits - 1][wbits - 1]; }
  gemm_kernel at(int abits, int wbits) const { return choice[abits - 1][wbits - 1]; }
  friend bool operator==(const kernel_table&, const kernel_table&) = default;

  /// Bit-serial when w * a <= 4, or when the CPU lacks VNNI; int8 otherwise.
  static kernel_table default_table() {
    kernel_table t;
    for (int a = 1; a <= 8; ++a)
      for (int w = 1; w <= 8; ++w)
        t.at(a, w) =
            (a * w <= 4 || !has_avx512_vnni()) ? gemm_kernel::bitserial : gemm_kernel::int8;
    return t;
  }

  /// Text form: a header line, then 8 lines (a = 1..8) of 8 letters (w = 1..8), b or i.
  std::string to_string() const {
    std::string s = "mixq-kernel-table 1\n";
    for (int a = 1; a <= 8; ++a) {
      for (int w = 1; w <= 8; ++w) s += at(a, w) == gemm_kernel::bitserial ? 'b' : 'i';
      s += '\n';
    }
    return s;
  }
  static kernel_table from_string(const std::string& text) {
    std::istringstream in(text);
    std::string header, version;
    in >> header >> version;
    if (header != "mixq-kernel-table" || version != "1")
      throw format_error(mixq::detail::cat("kernel table: header '", header, " ", version,
                                           "', expected 'mixq-kernel-table 1'"));
    kernel_table t;
    for (int a = 1; a <= 8; ++a) {
      std::string row;
      if (!(in >> row) || row.size() != 8)
        throw format_error(mixq::detail::cat("kernel table: line for a = ", a, " is '", row,
                                             "', expected 8 letters b or i"));
      for (int w = 1; w <= 8; ++w) {
        const char c = row[w - 1];
        if (c != 'b' && c != 'i')
          throw format_error(mixq::detail::cat("kernel table: letter '", c, "' at a = ", a,
                                               ", w = ", w, ", expected b or i"));
        t.at(a, w) = c == 'b' ? gemm_kernel::bitserial : gemm_kernel::int8;
      }
    }
    return t;
  }
  void save(const std::string& path) const {
    std::ofstream f(path);
    if (!f) throw io_error(mixq::detail::cat("kernel table: cannot write '", path, "'"));
    f << to_string();
    if (!f) throw io_error(mixq::detail::cat("kernel table: writing '", path, "' failed"));
  }
  static kernel_table load(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw io_error(mixq::detail::cat("kernel table: cannot open '", path, "'"));
    std::ostringstream s;
    s << f.rdbuf();
    return from_string(s.str());
  }
};

namespace detail {
inline std::mutex& kernel_table_mutex() {
  static std::mutex m;
  return m;
}
inline kernel_table& kernel_table_slot() {
  static kernel_table t = kernel_table::default_table();
  return t;
}
}  // namespace detail

/// The table lowbit_gemm reads (the default until set).
inline kernel_table active_kernel_table() {
  std::lock_guard g(detail::kernel_table_mutex());
  return detail::kernel_table_slot();
}
inline void set_kernel_table(const kernel_table& t) {
  std::lock_guard g(detail::kernel_table_mutex());
  detail::kernel_table_slot() = t;
}
/// Reads a table file and makes it active (io_error / format_error).
inline void load_kernel_table(const std::string& path) {
  set_kernel_table(kernel_table::load(path));
}

/// The kernel lowbit_gemm uses for a bit pair (bits_error outside 1..8).
inline gemm_kernel choose_kernel(bitwidth a, bitwidth w) {
  a.validate();
  w.validate();
  return active_kernel_table().at(a.bits, w.bits);
}

/// C = A W^T (as bitserial_gemm) with the table's kernel for the pair.
inline void lowbit_gemm(const bitplane_view& A, const bitplane_view& W, std::span<std::int32_t> C,
                        const gemm_options& options = {}) {
  if (choose_kernel(A.type, W.type) == gemm_kernel::int8)
    int8_gemm(A, W, C, options);
  else
    bitserial_gemm(A, W, C, options);
}
template <quantized_type AT, quantized_type WT>
void lowbit_gemm(const bitplane_matrix<AT>& A, const bitplane_matrix<WT>& W,
                 std::span<std::int32_t> C, const gemm_options& options = {}) {
  lowbit_gemm(bitplane_view(A), bitplane_view(W), C, options);
}

/// Measures both kernels for every bit pair (unsigned activations, signed weights) on an
/// M x N x K problem, best of `repeats`, makes the faster one the table's choice, activates
/// the table and, when `path` is not empty, saves it there.
inline kernel_table calibrate(std::size_t M = 128, std::size_t N = 128, std::size_t K = 1024,
                              int repeats = 3, const std::string& path = {},
                              const gemm_options& options = {}) {
  std::mt19937_64 rng(12345);
  const std::size_t words = (K + 511) / 512 * 8;
  auto planes = [&](std::size_t rows, int bits) {
    aligned_vector<std::uint64_t> v(rows * bits * words, 0);
    for (std::size_t pr = 0; pr < rows * bits; ++pr)
      for (std::size_t w = 0; w * 64 < K; ++w) {
        std::uint64_t x = rng();
        if (K - w * 64 < 64) x &= (std::uint64_t(1) << (K - w * 64)) - 1;
        v[pr * words + w] = x;
      }
    return v;
  };
  std::vector<std::int32_t> C(M * N);
  auto time_of = [&](auto&& run) {
    double best = 1e300;
    for (int r = 0; r < std::max(repeats, 1); ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      run();
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  kernel_table t;
  for (int a = 1; a <= 8; ++a)
    for (int w = 1; w <= 8; ++w) {
      const auto ab = planes(M, a), wb = planes(N, w);
      const bitplane_view A({a, false}, M, K, words, ab.data()),
          W({w, true}, N, K, words, wb.data());
      const double tb = time_of([&] { bitserial_gemm(A, W, std::span<std::int32_t>(C), options); });
      const double ti = time_of([&] { int8_gemm(A, W, std::span<std::int32_t>(C), options); });
      t.at(a, w) = tb <= ti ? gemm_kernel::bitserial : gemm_kernel::int8;
    }
  set_kernel_table(t);
  if (!path.empty()) t.save(path);
  return t;
}

}  // namespace mixq::kernels
