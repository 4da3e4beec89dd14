// The search layer: cost model, built-in model descriptors, bit-allocation solver.
#pragma once

#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/model_zoo.hpp"
