// Cost tables: the per-layer shapes of the demo CNN (read by a shape-tracing forward pass),
// its BitOps and weight size at a few bit configurations under each counting convention, and
// the ResNet-18 / MobileNetV2 (224x224) totals of the uniform configurations (algorithms.md §9.3).
#include <cstdio>
#include <string>
#include <vector>

#include "mixq/nn.hpp"
#include "mixq/nn/demo_cnn.hpp"
#include "mixq/search/cost.hpp"
#include "mixq/search/model_zoo.hpp"
#include "mixq/search/trace.hpp"

namespace {

using mixq::quant::bit_config;
using namespace mixq::search;

struct named_convention {
  const char* name;
  cost_conventions conv;
};

std::vector<named_convention> conventions() {
  return {{"all layers", cost_conventions::all_layers()},
          {"first+last W8A8", cost_conventions::hawq_v3()},
          {"FracBits", cost_conventions::fracbits()},
          {"EdMIPS (middle)", cost_conventions::edmips()}};
}

const char* kind_name(layer_kind k) {
  return k == layer_kind::linear ? "linear" : k == layer_kind::depthwise_conv ? "dwconv" : "conv";
}

void print_layers(const model_desc& m) {
  std::printf("%-4s %-6s %-6s %9s %3s %3s %4s %7s %9s %11s\n", "#", "name", "kind", "in->out", "k",
              "s", "g", "out", "params", "MACs");
  for (std::size_t i = 0; i < m.size(); ++i) {
    const auto& l = m.layers[i];
    const std::string io = std::to_string(l.in_channels) + "->" + std::to_string(l.out_channels);
    const std::string out = std::to_string(l.out_h) + "x" + std::to_string(l.out_w);
    std::printf("%-4zu %-6s %-6s %9s %3lld %3lld %4lld %7s %9lld %11lld\n", i, l.name.c_str(),
                kind_name(l.kind), io.c_str(), (long long)l.kernel, (long long)l.stride,
                (long long)l.groups, out.c_str(), (long long)l.params, (long long)l.macs);
  }
  std::printf("total: %lld weights (+%lld bias, +%lld batch-norm), %lld MACs\n\n",
              (long long)m.weight_params(), (long long)m.bias_params(), (long long)m.bn_params(),
              (long long)m.macs());
}

}  // namespace

int main() {
  // 1. The demo CNN's layer table, traced from the model itself.
  auto net = mixq::nn::demo_cnn();
  const model_desc demo = trace_costs(*net, {1, 1, 28, 28}, "demo_cnn");
  std::printf("demo CNN (Fashion-MNIST 1x28x28), traced:\n");
  print_layers(demo);

  // 2. Bit configurations: uniform W8A8 / W4A4 / W2A2 and a mixed one (8-bit edges, low-bit
  //    middle, 2-bit weights on the largest conv).
  const std::size_t n = demo.size();
  const std::vector<std::pair<const char*, bit_config>> configs{
      {"W8A8", bit_config::uniform(n, 8, 8)},
      {"W4A4", bit_config::uniform(n, 4, 4)},
      {"W2A2", bit_config::uniform(n, 2, 2)},
      {"mixed", bit_config{{8, 4, 6, 3, 2, 8}, {8, 4, 4, 4, 3, 4}}}};
  std::printf("per-layer MBitOps (all layers counted):\n%-7s", "config");
  for (std::size_t i = 0; i < n; ++i) std::printf(" %8zu", i);
  std::printf("\n");
  for (const auto& [name, cfg] : configs) {
    const cost_report r = evaluate(demo, cfg);
    std::printf("%-7s", name);
    for (double b : r.layer_bitops) std::printf(" %8.3f", b * 1e-6);
    std::printf("   (%s)\n", cfg.to_string().c_str());
  }
  std::printf("\ndemo CNN totals: MBitOps / weight KiB under each convention\n%-7s", "config");
  for (const auto& c : conventions()) std::printf(" %22s", c.name);
  std::printf("\n");
  for (const auto& [name, cfg] : configs) {
    std::printf("%-7s", name);
    for (const auto& c : conventions()) {
      const cost_report r = evaluate(demo, cfg, c.conv);
      std::printf("   %9.3f / %8.3f", r.bitops * 1e-6, r.size_bits / 8.0 / 1024.0);
    }
    std::printf("\n");
  }

  // 3. ImageNet networks: the uniform reference rows of algorithms.md §9.3.
  std::printf("\nImageNet 224x224 totals: GBitOps / size (MiB; FracBits in MB incl. FC bias)\n");
  for (const model_desc& m : {resnet18(), mobilenet_v2()}) {
    std::printf("%s: %lld MACs, %lld params (torchvision count)\n", m.name.c_str(),
                (long long)m.macs(), (long long)m.total_params());
    std::printf("  %-5s", "W/A");
    for (const auto& c : conventions()) std::printf(" %22s", c.name);
    std::printf("\n");
    for (const auto& [w, a] : {std::pair{8, 8}, {4, 8}, {4, 4}, {3, 3}, {2, 2}}) {
      std::printf("  W%dA%d", w, a);
      for (const auto& c : conventions()) {
        const cost_report r = evaluate(m, bit_config::uniform(m.size(), w, a), c.conv);
        std::printf("   %9.2f / %8.2f", r.gbitops(), r.size);
      }
      std::printf("\n");
    }
  }
  return 0;
}
