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

/// The micro-kernel of path `requested` (value_error if unsupported) or of the active path.
inline const popcount_microkernel& bitserial_microkernel(std::optional<isa> requested) {
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
      return bitserial_avx2_2x2;
#endif
    default:
      return bitserial_portable_4x4;
  }
}

}  // namespace mixq::kernels::detail
