// The quant layer: fake-quant ops with straight-through gradients (uniform, DoReFa, PACT, LSQ,
// binary sign), their integer codes (code_tensor), and FracBits' fractional bit-widths.
#pragma once

#include "mixq/quant/activation_grid.hpp"
#include "mixq/quant/binary.hpp"
#include "mixq/quant/code_tensor.hpp"
#include "mixq/quant/dorefa.hpp"
#include "mixq/quant/fracbits.hpp"
#include "mixq/quant/lsq.hpp"
#include "mixq/quant/pact.hpp"
#include "mixq/quant/uniform.hpp"
