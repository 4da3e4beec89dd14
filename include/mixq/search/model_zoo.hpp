// Built-in cost descriptors of ImageNet networks at 224x224 in torchvision's layout: ResNet-18,
// MobileNetV2 (width 1.0) and MobileNetV1, generated from their architecture definitions
// (stage/block loops), so params and MACs follow from the shapes.
#pragma once

#include <array>
#include <string>

#include "mixq/search/cost.hpp"

namespace mixq::search {

/// ResNet-18: conv1 7x7/2, max-pool /2, four stages of two BasicBlocks (3x3 convs; the first
/// block of stages 2-4 has stride 2 and a 1x1/2 downsample conv), FC 512->1000 with bias.
/// Order: conv1, then per block conv1, conv2, downsample; FC last. A downsampling block's
/// conv1 and its downsample read the same tensor: they form a shared_input_group.
inline model_desc resnet18(std::int64_t image_size = 224, std::int64_t classes = 1000) {
  model_desc m;
  m.name = "resnet18";
  m.layers.push_back(make_conv("conv1", 3, 64, 7, 2, 1, image_size));
  std::int64_t size = m.layers.back().out_h;
  size = (size + 2 - 3) / 2 + 1;  // max-pool 3x3, stride 2, padding 1
  std::int64_t in_ch = 64;
  const std::array<std::int64_t, 4> widths{64, 128, 256, 512};
  for (std::size_t stage = 0; stage < widths.size(); ++stage) {
    for (int block = 0; block < 2; ++block) {
      const std::int64_t stride = (stage > 0 && block == 0) ? 2 : 1;
      const std::string prefix = detail::cat("layer", stage + 1, ".", block, ".");
      const std::size_t first = m.layers.size();
      m.layers.push_back(make_conv(prefix + "conv1", in_ch, widths[stage], 3, stride, 1, size));
      const std::int64_t out = m.layers.back().out_h;
      m.layers.push_back(make_conv(prefix + "conv2", widths[stage], widths[stage], 3, 1, 1, out));
      if (stride != 1 || in_ch != widths[stage]) {
        m.layers.push_back(
            make_conv(prefix + "downsample.0", in_ch, widths[stage], 1, stride, 1, size));
        m.shared_input_groups.push_back({first, m.layers.size() - 1});
      }
      in_ch = widths[stage];
      size = out;
    }
  }
  m.layers.push_back(make_linear("fc", in_ch, classes));
  return m;
}

/// One row of MobileNetV2's (t, c, n, s) table: expansion, output channels, repeats, stride of
/// the first block.
struct mobilenet_v2_stage {
  std::int64_t expand, channels, repeats, stride;
};
inline constexpr std::array<mobilenet_v2_stage, 7> mobilenet_v2_stages{{{1, 16, 1, 1},
                                                                        {6, 24, 2, 2},
                                                                        {6, 32, 3, 2},
                                                                        {6, 64, 4, 2},
                                                                        {6, 96, 3, 1},
                                                                        {6, 160, 3, 2},
                                                                        {6, 320, 1, 1}}};

/// MobileNetV2 1.0: conv 3x3/2 to 32, 17 inverted-residual blocks from the (t, c, n, s) table
/// (1x1 expand unless t = 1, 3x3 depthwise with the stride, 1x1 project), 1x1 conv to 1280,
/// FC 1280->1000 with bias.
inline model_desc mobilenet_v2(std::int64_t image_size = 224, std::int64_t classes = 1000) {
  const auto& settings = mobilenet_v2_stages;
  model_desc m;
  m.name = "mobilenet_v2";
  m.layers.push_back(make_conv("features.0", 3, 32, 3, 2, 1, image_size));
  std::int64_t size = m.layers.back().out_h, in_ch = 32;
  int block = 1;
  for (const auto& st : settings) {
    for (std::int64_t r = 0; r < st.repeats; ++r, ++block) {
      const std::int64_t stride = r == 0 ? st.stride : 1;
      const std::int64_t hidden = in_ch * st.expand;
      const std::string prefix = detail::cat("features.", block, ".");
      if (st.expand != 1)
        m.layers.push_back(make_conv(prefix + "expand", in_ch, hidden, 1, 1, 1, size));
      m.layers.push_back(make_conv(prefix + "dw", hidden, hidden, 3, stride, hidden, size));
      size = m.layers.back().out_h;
      m.layers.push_back(make_conv(prefix + "project", hidden, st.channels, 1, 1, 1, size));
      in_ch = st.channels;
    }
  }
  m.layers.push_back(make_conv(detail::cat("features.", block), in_ch, 1280, 1, 1, 1, size));
  m.layers.push_back(make_linear("classifier.1", 1280, classes));
  return m;
}

/// MobileNetV1 1.0: conv 3x3/2 to 32, 13 depthwise-separable blocks (3x3 depthwise with the
/// stride, 1x1 pointwise), global pool, FC 1024->1000 with bias.
inline model_desc mobilenet_v1(std::int64_t image_size = 224, std::int64_t classes = 1000) {
  struct block_setting {
    std::int64_t channels, stride;
  };
  const std::array<block_setting, 13> blocks{{{64, 1},
                                              {128, 2},
                                              {128, 1},
                                              {256, 2},
                                              {256, 1},
                                              {512, 2},
                                              {512, 1},
                                              {512, 1},
                                              {512, 1},
                                              {512, 1},
                                              {512, 1},
                                              {1024, 2},
                                              {1024, 1}}};
  model_desc m;
  m.name = "mobilenet_v1";
  m.layers.push_back(make_conv("conv0", 3, 32, 3, 2, 1, image_size));
  std::int64_t size = m.layers.back().out_h, in_ch = 32;
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    const std::string prefix = detail::cat("block", b + 1, ".");
    m.layers.push_back(make_conv(prefix + "dw", in_ch, in_ch, 3, blocks[b].stride, in_ch, size));
    size = m.layers.back().out_h;
    m.layers.push_back(make_conv(prefix + "pw", in_ch, blocks[b].channels, 1, 1, 1, size));
    in_ch = blocks[b].channels;
  }
  m.layers.push_back(make_linear("fc", in_ch, classes));
  return m;
}

}  // namespace mixq::search
