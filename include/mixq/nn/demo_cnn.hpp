// demo_cnn: a small CNN of quantized layers for 1x28x28 inputs (Fashion-MNIST): six
// quantizable layers (conv, strided conv, depthwise conv, pointwise conv, strided conv, FC),
// each conv followed by batch norm and ReLU. The model the examples print cost tables for.
#pragma once

#include <memory>
#include <random>

#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"

namespace mixq::nn {

/// conv3x3 1->16, conv3x3/2 16->32 (14x14), depthwise 3x3 32 (14x14), pointwise 32->64,
/// conv3x3/2 64->64 (7x7), global average pool, FC 64->classes with bias. Convs have no bias
/// (batch norm follows). `width` multiplies every channel count.
inline std::shared_ptr<sequential> demo_cnn(std::size_t classes = 10, std::size_t width = 1,
                                            std::mt19937& rng = detail::default_rng()) {
  if (classes == 0 || width == 0)
    throw shape_error(
        mixq::detail::cat("demo_cnn: classes ", classes, " and width ", width, " must be >= 1"));
  const std::size_t c1 = 16 * width, c2 = 32 * width, c3 = 64 * width;
  auto net = std::make_shared<sequential>();
  auto conv_bn_relu = [&](std::size_t in, std::size_t out, std::size_t k, std::size_t stride,
                          std::size_t groups) {
    net->add(std::make_shared<quantized_conv2d>(in, out, k, stride, k / 2, groups, false, rng));
    net->add(std::make_shared<batch_norm2d>(out));
    net->add(std::make_shared<relu>());
  };
  conv_bn_relu(1, c1, 3, 1, 1);
  conv_bn_relu(c1, c2, 3, 2, 1);
  conv_bn_relu(c2, c2, 3, 1, c2);
  conv_bn_relu(c2, c3, 1, 1, 1);
  conv_bn_relu(c3, c3, 3, 2, 1);
  net->add(std::make_shared<global_avg_pool2d>());
  net->add(std::make_shared<quantized_linear>(c3, classes, true, rng));
  return net;
}

}  // namespace mixq::nn
