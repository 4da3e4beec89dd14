// The deploy layer: integer models that run the packed low-bit kernels, their model files,
// and compile() from a trained quantized model.
#pragma once

#include "mixq/deploy/integer_model.hpp"
#include "mixq/deploy/compile.hpp"
#include "mixq/deploy/model_file.hpp"
