// Umbrella header: everything mixq offers.
#pragma once

#include "mixq/core.hpp"
#include "mixq/kernels.hpp"
