// Umbrella header: everything mixq offers. mixq/data.hpp needs zlib (link mixq::data).
#pragma once

#include "mixq/autodiff.hpp"
#include "mixq/core.hpp"
#include "mixq/kernels.hpp"
#include "mixq/data.hpp"
#include "mixq/nn.hpp"
#include "mixq/quant.hpp"
#include "mixq/search.hpp"
#include "mixq/deploy.hpp"
