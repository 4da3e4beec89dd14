// The kernels layer: bit-serial GEMM (every qtype pair, run-time ISA dispatch), the int8 VNNI
// path and the lowbit_gemm front door choosing between them, bit-plane packing, FP32 GEMM, the
// thread pool and instruction-set detection.
#pragma once

#include "mixq/kernels/bitserial_gemm.hpp"
#include "mixq/kernels/gemm_f32.hpp"
#include "mixq/kernels/int8_gemm.hpp"
#include "mixq/kernels/isa.hpp"
#include "mixq/kernels/lowbit_gemm.hpp"
#include "mixq/kernels/pack_bitplanes.hpp"
#include "mixq/kernels/thread_pool.hpp"
