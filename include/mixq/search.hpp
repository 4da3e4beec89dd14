// The search layer: cost model (traced from a model or built in), relaxed costs as vars, the
// bit-allocation solver, budgets and policy concepts, the search driver, and the policies
// (uniform, DNAS, EBS, FracBits, OMPQ, BMPQ, HAWQ).
#pragma once

#include "mixq/search/allocation_solver.hpp"
#include "mixq/search/bmpq_policy.hpp"
#include "mixq/search/cka.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/dnas_policy.hpp"
#include "mixq/search/driver.hpp"
#include "mixq/search/ebs_policy.hpp"
#include "mixq/search/fracbits_policy.hpp"
#include "mixq/search/hawq_policy.hpp"
#include "mixq/search/model_zoo.hpp"
#include "mixq/search/ompq_policy.hpp"
#include "mixq/search/policy.hpp"
#include "mixq/search/relaxed_cost.hpp"
#include "mixq/search/result.hpp"
#include "mixq/search/trace.hpp"
#include "mixq/search/uniform_policy.hpp"
#include "mixq/search/weight_allocation.hpp"
