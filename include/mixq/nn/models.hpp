// Ready-made networks shared by the examples, benchmarks and tests, so that a figure quoted
// for "the example CNN" always refers to one definition: `fashion_cnn`, the small
// Fashion-MNIST CNN (two conv-BN-ReLU-pool stages and a linear classifier).
#pragma once

#include <cstddef>
#include <memory>
#include <random>

#include "mixq/nn/module.hpp"

namespace mixq::nn {

/// The Fashion-MNIST example CNN on [N, 1, 28, 28] inputs -> [N, classes] logits:
/// conv 1->32 3x3 (pad 1, no bias), BN, ReLU, max-pool 2, conv 32->64 3x3 (pad 1, no bias),
/// BN, ReLU, max-pool 2, flatten, linear 64*7*7 -> classes. The convs have no bias because
/// the batch norm after each would cancel it. Weights are drawn from `rng`.
inline std::shared_ptr<sequential> fashion_cnn(std::mt19937& rng, std::size_t classes = 10) {
  if (classes == 0) throw shape_error("fashion_cnn: needs at least one class");
  auto net = std::make_shared<sequential>();
  net->add(std::make_shared<conv2d>(1, 32, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<batch_norm2d>(32));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<max_pool2d>(2));
  net->add(std::make_shared<conv2d>(32, 64, 3, 1, 1, 1, false, rng));
  net->add(std::make_shared<batch_norm2d>(64));
  net->add(std::make_shared<relu>());
  net->add(std::make_shared<max_pool2d>(2));
  net->add(std::make_shared<flatten>());
  net->add(std::make_shared<linear>(64 * 7 * 7, classes, true, rng));
  return net;
}

}  // namespace mixq::nn
