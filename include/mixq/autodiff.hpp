// The autodiff layer: a define-by-run graph of var nodes, backward(), no_grad, and the ops
// (arithmetic with broadcasting, matmul/linear, conv2d, pools, batch norm, softmax, losses).
#pragma once

#include "mixq/autodiff/conv.hpp"
#include "mixq/autodiff/ops.hpp"
#include "mixq/autodiff/parallel.hpp"
#include "mixq/autodiff/var.hpp"
