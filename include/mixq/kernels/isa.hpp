// Instruction-set paths of the kernels and run-time CPU detection: `isa` names a path,
// `best_isa()` is what the CPU offers (detected once, cached), `force_isa()` pins a path for
// tests and benchmarks. Only the dispatch headers read these; no vector type crosses an entry.
#pragma once

#include <atomic>
#include <optional>
#include <string>

#include "mixq/core/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace mixq::kernels {

/// Kernel paths, slowest first.
enum class isa : int { portable = 0, avx2 = 1, avx512_vpopcntdq = 2 };

inline constexpr isa all_isas[] = {isa::portable, isa::avx2, isa::avx512_vpopcntdq};

inline const char* isa_name(isa i) noexcept {
  switch (i) {
    case isa::portable:
      return "portable";
    case isa::avx2:
      return "avx2";
    case isa::avx512_vpopcntdq:
      return "avx512_vpopcntdq";
  }
  return "unknown";
}

/// CPU features the kernels care about, read once.
struct cpu_features {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false,
       avx512_vpopcntdq = false, avx512_vnni = false, avx_vnni = false;
};

inline const cpu_features& detected_cpu_features() {
  static const cpu_features f = [] {
    cpu_features c;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    // libgcc's detection also checks that the OS saves the AVX / AVX-512 register state.
    c.avx2 = __builtin_cpu_supports("avx2");
    c.fma = __builtin_cpu_supports("fma");
    c.avx512f = __builtin_cpu_supports("avx512f");
    c.avx512bw = __builtin_cpu_supports("avx512bw");
    c.avx512vl = __builtin_cpu_supports("avx512vl");
    c.avx512_vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
    c.avx512_vnni = __builtin_cpu_supports("avx512vnni");
    // AVX-VNNI (CPUID.(7,1):EAX bit 4) read directly: clang 14's __builtin_cpu_supports does
    // not know "avxvnni". The VEX form needs only the AVX state that avx2 already implies.
    {
      unsigned a = 0, b = 0, cx = 0, d = 0;
      c.avx_vnni = c.avx2 && __get_cpuid_count(7, 1, &a, &b, &cx, &d) && ((a >> 4) & 1u);
    }
#endif
    return c;
  }();
  return f;
}

/// Whether this CPU can run path i.
inline bool isa_supported(isa i) noexcept {
  const cpu_features& f = detected_cpu_features();
  switch (i) {
    case isa::portable:
      return true;
    case isa::avx2:
      return f.avx2;
    case isa::avx512_vpopcntdq:
      return f.avx512f && f.avx512bw && f.avx512_vpopcntdq;
  }
  return false;
}

/// The fastest path this CPU supports.
inline isa best_isa() noexcept {
  static const isa best = [] {
    for (int i = 2; i >= 0; --i)
      if (isa_supported(static_cast<isa>(i))) return static_cast<isa>(i);
    return isa::portable;
  }();
  return best;
}

namespace detail {
inline std::atomic<int>& forced_isa_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}
inline void check_isa(isa i) {
  if (!isa_supported(i))
    throw value_error(
        mixq::detail::cat("instruction set path ", isa_name(i),
                          " is not supported by this CPU; expected one of the supported paths "
                          "(best here: ",
                          isa_name(best_isa()), ")"));
}
}  // namespace detail

/// Pins every kernel to path i (value_error if the CPU lacks it); std::nullopt restores the
/// best path. For tests and benchmarks.
inline void force_isa(std::optional<isa> i) {
  if (i) detail::check_isa(*i);
  detail::forced_isa_slot().store(i ? static_cast<int>(*i) : -1, std::memory_order_relaxed);
}

/// The path kernels use now: the forced one, else the best.
inline isa active_isa() noexcept {
  const int f = detail::forced_isa_slot().load(std::memory_order_relaxed);
  return f < 0 ? best_isa() : static_cast<isa>(f);
}

/// Whether the AVX-512 VNNI int8 path (vpdpbusd) can run.
inline bool has_avx512_vnni() noexcept {
  const cpu_features& f = detected_cpu_features();
  return f.avx512f && f.avx512bw && f.avx512_vnni;
}

/// Whether the AVX-VNNI int8 path (VEX-encoded 256-bit vpdpbusd) can run.
inline bool has_avx_vnni() noexcept {
  const cpu_features& f = detected_cpu_features();
  return f.avx2 && f.avx_vnni;
}

}  // namespace mixq::kernels
