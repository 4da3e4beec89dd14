// The search layer: cost model (traced from a model or built in), relaxed costs as vars,
// bit-allocation solver.
#pragma once

#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/model_zoo.hpp"
#include "mixq/search/relaxed_cost.hpp"
#include "mixq/search/trace.hpp"
