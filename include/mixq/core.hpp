// The core layer: quantized value types, tensors, packed storage, quant params, errors.
#pragma once

#include "mixq/core/aligned.hpp"
#include "mixq/core/bitplane_matrix.hpp"
#include "mixq/core/error.hpp"
#include "mixq/core/packed_tensor.hpp"
#include "mixq/core/qtype.hpp"
#include "mixq/core/quant_params.hpp"
#include "mixq/core/tensor.hpp"
#include "mixq/version.hpp"
