// trace_costs: reads the cost descriptor (model_desc) of a real nn model by one shape-tracing
// forward pass: params and MACs of every quantized layer from its geometry and the output
// shape it recorded, biases, and the batch norms that follow a layer.
#pragma once

#include <string>
#include <vector>

#include "mixq/autodiff/var.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/nn/quantized_residual.hpp"
#include "mixq/search/cost.hpp"

namespace mixq::search {

namespace detail {
/// Depth first in registration order (as nn::quantized_layers): every quantized layer with its
/// dotted name, and every batch norm's channel count charged to the quantized layer registered
/// last before it (conv -> bn in ResNet and MobileNet blocks).
inline void walk_for_costs(nn::module& m, const std::string& name,
                           std::vector<std::pair<std::string, nn::quantized_layer*>>& layers,
                           std::vector<std::int64_t>& bn_params) {
  if (auto* q = dynamic_cast<nn::quantized_layer*>(&m)) {
    layers.emplace_back(name.empty() ? std::string("layer") : name, q);
    bn_params.push_back(0);
  } else if (auto* bn = dynamic_cast<nn::batch_norm2d*>(&m)) {
    if (!bn_params.empty()) bn_params.back() += std::int64_t(bn->weight.size() + bn->bias.size());
  }
  for (auto& [child_name, child] : m.children())
    walk_for_costs(*child, name.empty() ? child_name : name + "." + child_name, layers, bn_params);
}
}  // namespace detail

/// The cost descriptor of `model` for inputs of shape `input` (batch included; use batch 1).
/// Runs one forward pass in eval mode under no_grad on a zero input (an attached policy takes
/// part; training mode is restored afterwards), then per quantized layer: params = weight
/// values, MACs = params * H_out * W_out (linear: 1x1), bias_params = C_out if it has a bias,
/// bn_params = 2 C per batch norm registered after it and before the next quantized layer.
/// shared_input_groups: conv1 and down_conv of every quantized_residual_block with a
/// downsampling shortcut (both read the block's input); other sharing is not detected.
/// Throws shape_error when the model has no quantized layer or a layer has never run.
inline model_desc trace_costs(nn::module& model, const shape_t& input, std::string name = "model") {
  std::vector<std::pair<std::string, nn::quantized_layer*>> layers;
  std::vector<std::int64_t> bn;
  detail::walk_for_costs(model, "", layers, bn);
  if (layers.empty())
    throw shape_error(
        "trace_costs: the model has no quantized layer; expected "
        "quantized_conv2d or quantized_linear modules");
  if (input.empty() || shape_numel(input) == 0)
    throw shape_error(detail::cat("trace_costs: input shape ", shape_string(input),
                                  " is empty; expected e.g. [1, C, H, W]"));
  const bool was_training = model.is_training();
  model.eval();
  try {
    autodiff::no_grad ng;
    (void)model(autodiff::constant(autodiff::ftensor(input, 0.0f)));
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);

  model_desc d;
  d.name = std::move(name);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& [lname, q] = layers[i];
    const shape_t& out = q->output_shape();
    layer_cost l;
    l.name = lname;
    l.in_channels = std::int64_t(q->in_channels());
    l.out_channels = std::int64_t(q->out_channels());
    l.kernel = std::int64_t(q->kernel_size());
    l.stride = std::int64_t(q->stride());
    l.groups = std::int64_t(q->groups());
    switch (q->kind()) {
      case nn::quantized_kind::conv:
        l.kind = layer_kind::conv;
        break;
      case nn::quantized_kind::depthwise_conv:
        l.kind = layer_kind::depthwise_conv;
        break;
      case nn::quantized_kind::linear:
        l.kind = layer_kind::linear;
        break;
    }
    if (q->kind() == nn::quantized_kind::linear) {
      if (out.size() != 2)
        throw shape_error(detail::cat("trace_costs: layer ", i, " (", lname,
                                      ") did not run in the traced forward pass"));
      l.out_h = l.out_w = 1;
    } else {
      if (out.size() != 4)
        throw shape_error(detail::cat("trace_costs: layer ", i, " (", lname,
                                      ") did not run in the traced forward pass"));
      l.out_h = std::int64_t(out[2]);
      l.out_w = std::int64_t(out[3]);
    }
    l.params = std::int64_t(q->weight_params());
    l.bias_params = q->bias.defined() ? std::int64_t(q->bias.size()) : 0;
    l.bn_params = bn[i];
    l.macs = l.params * l.out_h * l.out_w;
    d.layers.push_back(std::move(l));
  }
  auto index_of = [&](const nn::quantized_layer* q) {
    for (std::size_t i = 0; i < layers.size(); ++i)
      if (layers[i].second == q) return i;
    return layers.size();
  };
  std::vector<nn::module*> stack{&model};
  while (!stack.empty()) {
    nn::module* m = stack.back();
    stack.pop_back();
    if (auto* b = dynamic_cast<nn::quantized_residual_block*>(m); b && b->down_conv)
      d.shared_input_groups.push_back({index_of(b->conv1.get()), index_of(b->down_conv.get())});
    for (auto it = m->children().rbegin(); it != m->children().rend(); ++it)
      stack.push_back(it->second.get());
  }
  return d;
}

}  // namespace mixq::search
