// quantized_residual_block: the ResNet basic block with quantized convolutions,
// relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut a quantized 1x1 conv +
// batch norm when the stride or channel count changes, else the identity. Its quantized
// layers are discovered by quantized_layers() in the order conv1, conv2, down_conv.
#pragma once

#include <memory>
#include <random>

#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"

namespace mixq::nn {

class quantized_residual_block : public module {
 public:
  /// 3x3 convs (padding 1, no bias: batch norm follows), the first with `stride`; a
  /// downsampling shortcut when stride != 1 or in != out (or when `force_downsample`).
  quantized_residual_block(std::size_t in, std::size_t out, std::size_t stride = 1,
                           std::mt19937& rng = detail::default_rng(),
                           bool force_downsample = false) {
    if (in == 0 || out == 0 || stride == 0)
      throw shape_error(mixq::detail::cat("quantized_residual_block: channels ", in, " -> ", out,
                                          " and stride ", stride, " must be >= 1"));
    conv1 = register_module(
        "conv1", std::make_shared<quantized_conv2d>(in, out, 3, stride, 1, 1, false, rng));
    bn1 = register_module("bn1", std::make_shared<batch_norm2d>(out));
    conv2 = register_module("conv2",
                            std::make_shared<quantized_conv2d>(out, out, 3, 1, 1, 1, false, rng));
    bn2 = register_module("bn2", std::make_shared<batch_norm2d>(out));
    if (stride != 1 || in != out || force_downsample) {
      down_conv = register_module(
          "down_conv", std::make_shared<quantized_conv2d>(in, out, 1, stride, 0, 1, false, rng));
      down_bn = register_module("down_bn", std::make_shared<batch_norm2d>(out));
    }
  }

  var forward(const var& x) override {
    var h = autodiff::relu((*bn1)((*conv1)(x)));
    h = (*bn2)((*conv2)(h));
    const var s = down_conv ? (*down_bn)((*down_conv)(x)) : x;
    return autodiff::relu(autodiff::add(h, s));
  }

  std::shared_ptr<quantized_conv2d> conv1, conv2, down_conv;
  std::shared_ptr<batch_norm2d> bn1, bn2, down_bn;
};

}  // namespace mixq::nn
