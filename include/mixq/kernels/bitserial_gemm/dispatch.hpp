// The one place a bit-serial path is chosen: the requested path (or the active one) mapped to
// its micro-kernel.
#pragma once

#include <optional>

#include "mixq/kernels/bitserial_gemm/avx2.hpp"
#include "mixq/kernels/bitserial_gemm/avx512.hpp"
#include "mixq/kernels/bitserial_gemm/common.hpp"
#include "mixq/kernels/bitserial_gemm/portable.hpp"
#include "mixq/kernels/isa.hpp"

namespace mixq::kernels::detail {

inline void run_bitserial_gemm_portable(const bitplane_view& A, const bitplane_view& W,
                                        std::int32_t* C, std::size_t threads) {
  run_bitserial_gemm(bitserial_portable_4x4, A, W, C, threads);
}
inline constexpr bitserial_path bitserial_portable{&run_bitserial_gemm_portable,
                                                   bitserial_portable_4x4.name};

/// The path `requested` (value_error if unsupported) or the active path.
inline const bitserial_path& bitserial_path_for(std::optional<isa> requested) {
  isa path = active_isa();
  if (requested) {
    check_isa(*requested);
    path = *requested;
  }
  switch (path) {
#if defined(MIXQ_HAS_AVX512_BITSERIAL)
    case isa::avx512_vpopcntdq:
      return bitserial_avx512_vpopcntdq_6x4;
#endif
#if defined(MIXQ_HAS_AVX2_BITSERIAL)
    case isa::avx2:
      return bitserial_avx2;
#endif
    default:
      return bitserial_portable;
  }
}

}  // namespace mixq::kernels::detail
