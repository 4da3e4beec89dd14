// The data layer: IDX (MNIST-format) files, labelled datasets, seeded mini-batches and
// Fashion-MNIST. Needs zlib: link the mixq::data CMake target.
#pragma once

#include "mixq/data/batches.hpp"
#include "mixq/data/fashion_mnist.hpp"
#include "mixq/data/idx.hpp"
