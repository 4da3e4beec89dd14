// Quantized layers and the precision-policy hook: quantized_conv2d / quantized_linear keep
// float master weights and ask the attached precision_policy, at every forward, for their
// quantized weights and input activations (search policies and fixed configs plug in here).
#pragma once

#include <cstddef>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "mixq/nn/module.hpp"

namespace mixq::nn {

class quantized_layer;

/// How quantized layers quantize. A policy is attached to a model with attach_policy() and
/// must outlive the attachment; layer indices follow quantized_layers() order.
class precision_policy {
 public:
  virtual ~precision_policy() = default;
  /// The (fake-)quantized or relaxed weight of layer `layer` from its float master `w`.
  virtual var quantize_weights(std::size_t layer, const var& w) = 0;
  /// The (fake-)quantized or relaxed input activation of layer `layer`.
  virtual var quantize_activations(std::size_t layer, const var& x) = 0;
  /// The whole forward of a layer. The default quantizes input and weight and runs the layer's
  /// float op once; policies that mix several branches (DNAS) override it.
  virtual var forward(quantized_layer& layer, const var& x);
  /// Quantizer parameters trained with the weights (e.g. PACT clip levels).
  virtual std::vector<var> parameters() { return {}; }
  /// Search-state parameters (logits, strengths, fractional bit-widths).
  virtual std::vector<var> architecture_parameters() { return {}; }
  /// Called by attach_policy() with the model's quantized layers, so the policy can size its
  /// per-layer state.
  virtual void on_attach(std::span<quantized_layer* const> layers) { (void)layers; }
};

enum class quantized_kind { conv, depthwise_conv, linear };

/// Base of quantized_conv2d and quantized_linear. Without a policy it runs in full precision.
class quantized_layer : public module {
 public:
  var weight, bias;

  /// The layer's float op with the given input and weight (bias added if present).
  virtual var compute(const var& x, const var& w) const = 0;

  var forward(const var& x) override {
    input_shape_ = x.shape();
    var y = policy_ ? policy_->forward(*this, x) : compute(x, weight);
    output_shape_ = y.shape();
    return y;
  }

  quantized_kind kind() const noexcept { return kind_; }
  /// Position among the model's quantized layers (set by attach_policy).
  std::size_t index() const noexcept { return index_; }
  precision_policy* policy() const noexcept { return policy_; }

  std::size_t in_channels() const noexcept { return in_; }
  std::size_t out_channels() const noexcept { return out_; }
  /// Square kernel side (1 for linear).
  std::size_t kernel_size() const noexcept { return kernel_; }
  std::size_t stride() const noexcept { return stride_; }
  std::size_t padding() const noexcept { return padding_; }
  std::size_t groups() const noexcept { return groups_; }
  /// Number of weight values (bias excluded).
  std::size_t weight_params() const noexcept { return weight.value().size(); }
  /// Input and output shapes of the last forward (empty before the first one).
  const shape_t& input_shape() const noexcept { return input_shape_; }
  const shape_t& output_shape() const noexcept { return output_shape_; }

 protected:
  quantized_layer(quantized_kind kind, std::size_t in, std::size_t out, std::size_t kernel,
                  std::size_t stride, std::size_t padding, std::size_t groups)
      : kind_(kind),
        in_(in),
        out_(out),
        kernel_(kernel),
        stride_(stride),
        padding_(padding),
        groups_(groups) {}

 private:
  friend void attach_policy(module&, precision_policy&);
  friend void detach_policy(module&);

  quantized_kind kind_;
  std::size_t in_, out_, kernel_, stride_, padding_, groups_;
  std::size_t index_ = 0;
  precision_policy* policy_ = nullptr;
  shape_t input_shape_, output_shape_;
};

inline var precision_policy::forward(quantized_layer& layer, const var& x) {
  return layer.compute(quantize_activations(layer.index(), x),
                       quantize_weights(layer.index(), layer.weight));
}

/// Quantizable 2-D convolution, weight [out, in/groups, k, k] (depthwise when groups == in ==
/// out).
class quantized_conv2d : public quantized_layer {
 public:
  quantized_conv2d(std::size_t in, std::size_t out, std::size_t kernel, std::size_t stride = 1,
                   std::size_t padding = 0, std::size_t groups = 1, bool bias = false,
                   std::mt19937& rng = detail::default_rng())
      : quantized_layer(groups > 1 && groups == in && groups == out ? quantized_kind::depthwise_conv
                                                                    : quantized_kind::conv,
                        in, out, kernel, stride, padding, groups) {
    if (groups == 0 || in % groups || out % groups || kernel == 0 || stride == 0)
      throw shape_error(mixq::detail::cat(
          "nn::quantized_conv2d: groups=", groups, " must divide", " in channels ", in,
          " and out channels ", out, "; kernel ", kernel, " and stride ", stride, " must be >= 1"));
    const std::size_t fan_in = in / groups * kernel * kernel;
    weight = register_parameter(
        "weight", detail::kaiming_uniform({out, in / groups, kernel, kernel}, fan_in, rng));
    if (bias) this->bias = register_parameter("bias", ftensor({out}, 0.0f));
  }
  var compute(const var& x, const var& w) const override {
    return autodiff::conv2d(x, w, bias, stride(), padding(), groups());
  }
};

/// Quantizable fully connected layer, y = x w^T + b with w [out, in].
class quantized_linear : public quantized_layer {
 public:
  quantized_linear(std::size_t in, std::size_t out, bool bias = true,
                   std::mt19937& rng = detail::default_rng())
      : quantized_layer(quantized_kind::linear, in, out, 1, 1, 0, 1) {
    weight = register_parameter("weight", detail::kaiming_uniform({out, in}, in, rng));
    if (bias) this->bias = register_parameter("bias", ftensor({out}, 0.0f));
  }
  var compute(const var& x, const var& w) const override { return autodiff::linear(x, w, bias); }
};

namespace detail {
inline void collect_quantized(module& m, std::vector<quantized_layer*>& out) {
  if (auto* q = dynamic_cast<quantized_layer*>(&m)) out.push_back(q);
  for (auto& [name, child] : m.children()) collect_quantized(*child, out);
}
}  // namespace detail

/// The model's quantized layers, depth first in registration order (the layer index order of
/// bit_configs and policies).
inline std::vector<quantized_layer*> quantized_layers(module& model) {
  std::vector<quantized_layer*> out;
  detail::collect_quantized(model, out);
  return out;
}

/// Routes every quantized layer of `model` through `policy` (replacing any previous one).
/// Throws shape_error when the model has no quantized layer.
inline void attach_policy(module& model, precision_policy& policy) {
  auto layers = quantized_layers(model);
  if (layers.empty())
    throw shape_error(
        "attach_policy: the model has no quantized layer; expected quantized_conv2d or "
        "quantized_linear modules");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layers[i]->index_ = i;
    layers[i]->policy_ = &policy;
  }
  policy.on_attach(layers);
}

/// Back to full precision for every quantized layer of `model`.
inline void detach_policy(module& model) {
  for (auto* l : quantized_layers(model)) l->policy_ = nullptr;
}

}  // namespace mixq::nn
