// The nn layer: modules (linear, conv2d, batch_norm2d, pools, sequential, residual block),
// ready-made networks (fashion_cnn), optimizers and lr schedules, parameter files, and a
// training loop with a progress bar.
#pragma once

#include "mixq/nn/demo_cnn.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "mixq/nn/models.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/optim.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/nn/quantized_residual.hpp"
#include "mixq/nn/serialize.hpp"
#include "mixq/nn/train.hpp"
