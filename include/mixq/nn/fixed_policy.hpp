// fixed_policy: the precision_policy of a fixed bit_config (quantization-aware training of a
// chosen or searched configuration). Weights: DoReFa by default (or per-channel symmetric
// uniform, or LSQ); activations: PACT with a learnable alpha per layer by default (or dynamic
// asymmetric uniform, or LSQ). The codes of every layer's weights are available for deployment.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "mixq/nn/quantized.hpp"
#include "mixq/quant.hpp"
#include "mixq/quant/bit_config.hpp"

namespace mixq::nn {

enum class weight_quantizer {
  dorefa,             ///< DoReFa (tanh, layer max, {-1..1} grid); 1 bit = +-1
  uniform_symmetric,  ///< per-output-channel symmetric signed grid from the weight range
  lsq,                ///< LSQ with a learnable step per output channel (signed)
};
enum class activation_quantizer {
  pact,                ///< PACT with a learnable alpha per layer
  uniform_asymmetric,  ///< dynamic per-tensor asymmetric grid from the batch range
  lsq,  ///< LSQ, a learnable step per layer set from the first training batch (two-sided: signed)
};

struct fixed_policy_options {
  weight_quantizer weights = weight_quantizer::dorefa;
  activation_quantizer activations = activation_quantizer::pact;
  /// PACT settings for every layer (the alpha gradient variant; see docs/quant.md).
  quant::pact_options pact{};
  /// Layers whose input can be negative (e.g. a first conv reading a normalised image): PACT
  /// clips them to [-alpha, alpha] and LSQ uses a signed grid.
  std::vector<std::size_t> two_sided_layers{};
  /// Initial PACT alpha of conv layers and of linear layers (FracBits: 8 and 10).
  float conv_alpha = 8.0f;
  float linear_alpha = 10.0f;
  /// PACT uses max(alpha, min_alpha): a learned alpha can cross 0 (at 1-bit activations the
  /// residual gradient pushes it down), and PACT needs a clipping value > 0. Below the floor
  /// alpha gets no gradient, as with autodiff::maximum.
  float min_alpha = 1e-3f;
};

/// A precision_policy that quantizes layer i's weights to config.w_bits[i] and its input to
/// config.a_bits[i]. attach_policy() checks the config against the model (shape_error for a
/// length mismatch, bits_error for bits outside 1..8) and creates the per-layer quantizer
/// parameters returned by parameters().
class fixed_policy : public precision_policy {
 public:
  explicit fixed_policy(quant::bit_config config, fixed_policy_options options = {})
      : config_(std::move(config)), options_(std::move(options)) {
    config_.validate(config_.w_bits.size());  // equal lengths, bits 1..8
    if (!(options_.conv_alpha > 0.0f) || !(options_.linear_alpha > 0.0f))
      throw value_error(mixq::detail::cat("fixed_policy: initial alphas ", options_.conv_alpha,
                                          " and ", options_.linear_alpha,
                                          " are invalid: expected values > 0"));
    if (!(options_.min_alpha > 0.0f) || !std::isfinite(options_.min_alpha))
      throw value_error(mixq::detail::cat("fixed_policy: min_alpha ", options_.min_alpha,
                                          " is invalid: expected a finite value > 0"));
  }

  void on_attach(std::span<quantized_layer* const> layers) override {
    config_.validate(layers.size());
    for (std::size_t l : options_.two_sided_layers)
      if (l >= layers.size())
        throw shape_error(mixq::detail::cat("fixed_policy: two-sided layer ", l,
                                            " does not exist; the model has ", layers.size(),
                                            " quantized layers"));
    layers_.assign(layers.begin(), layers.end());
    alphas_.clear();
    steps_w_.clear();
    steps_a_.clear();
    act_initialised_.assign(layers.size(), false);
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const bool is_linear = layers[i]->kind() == quantized_kind::linear;
      if (options_.activations == activation_quantizer::pact)
        alphas_.push_back(autodiff::var::parameter(
            ftensor({1}, is_linear ? options_.linear_alpha : options_.conv_alpha)));
      if (options_.activations == activation_quantizer::lsq)
        steps_a_.push_back(autodiff::var::parameter(ftensor({1}, 1.0f)));  // set on first use
      if (options_.weights == weight_quantizer::lsq) {
        // One step per output channel, initialised from that channel's weights.
        const ftensor& w = layers[i]->weight.value();
        const std::size_t out = w.shape()[0], block = w.size() / out;
        ftensor s({out});
        for (std::size_t c = 0; c < out; ++c) {
          ftensor wc({block});
          std::copy_n(w.data() + c * block, block, wc.data());
          s[c] =
              config_.w_bits[i] >= 2 ? quant::lsq_initial_step(wc, config_.w_bits[i], true) : 1.0f;
        }
        steps_w_.push_back(autodiff::var::parameter(std::move(s)));
      }
    }
  }

  var quantize_weights(std::size_t layer, const var& w) override {
    const int b = config_.w_bits.at(layer);
    switch (options_.weights) {
      case weight_quantizer::dorefa:
        return quant::dorefa_weights(w, b);
      case weight_quantizer::uniform_symmetric:
        if (b == 1)
          return quant::binary_sign(w, quant::binary_scaling::mean_abs,
                                    quant::granularity::per_channel);
        return quant::uniform_quantize(w, bitwidth{b, true}, quant_scheme::symmetric,
                                       quant::granularity::per_channel);
      case weight_quantizer::lsq:
        if (b == 1)
          return quant::binary_sign(w, quant::binary_scaling::mean_abs,
                                    quant::granularity::per_channel);
        return quant::lsq(w, steps_w_.at(layer), b, true);
    }
    return w;
  }

  var quantize_activations(std::size_t layer, const var& x) override {
    const int b = config_.a_bits.at(layer);
    const bool two = is_two_sided(layer);
    switch (options_.activations) {
      case activation_quantizer::pact: {
        quant::pact_options o = options_.pact;
        o.two_sided = o.two_sided || two;
        const var floor = autodiff::constant(ftensor({1}, options_.min_alpha));
        return quant::pact(x, autodiff::maximum(alphas_.at(layer), floor), b, o);
      }
      case activation_quantizer::uniform_asymmetric:
        return quant::uniform_quantize(x, bitwidth{b, false}, quant_scheme::asymmetric);
      case activation_quantizer::lsq: {
        const bool sgn = two && b >= 2;
        if (!act_initialised_.at(layer) && layers_.at(layer)->is_training()) {
          // LSQ initialises its step from the first training batch (not from an eval pass
          // such as trace_costs' zero input).
          steps_a_.at(layer).value()[0] = quant::lsq_initial_step(x.value(), b, sgn);
          act_initialised_[layer] = true;
        }
        return quant::lsq(x, steps_a_.at(layer), b, sgn);
      }
    }
    return x;
  }

  /// PACT alphas or LSQ steps, trained with the weights.
  std::vector<var> parameters() override {
    std::vector<var> out = alphas_;
    out.insert(out.end(), steps_w_.begin(), steps_w_.end());
    out.insert(out.end(), steps_a_.begin(), steps_a_.end());
    return out;
  }

  const quant::bit_config& config() const noexcept { return config_; }
  const fixed_policy_options& options() const noexcept { return options_; }
  std::size_t layers() const noexcept { return layers_.size(); }

  /// Layer i's PACT alpha (PACT activations only).
  var alpha(std::size_t layer) const {
    if (alphas_.empty())
      throw value_error("fixed_policy::alpha: the activations are not quantized with PACT");
    return alphas_.at(checked(layer));
  }
  /// The clipping value PACT uses on layer i's input: max(alpha(i), options().min_alpha).
  float clip_value(std::size_t layer) const {
    return std::max(alpha(layer).value()[0], options_.min_alpha);
  }

  /// Layer i's input grid when it is one-sided and static: PACT's {clip_value(i)}, or LSQ's
  /// unsigned grid {its step} (activation_codes gives the same codes). value_error for a
  /// two-sided layer (options().two_sided_layers, or pact.two_sided with PACT; a two-sided
  /// 1-bit LSQ layer is refused too, though its grid is unsigned, as any two-sided layer is)
  /// and for the dynamic uniform quantizer, whose grid depends on each input.
  quant::activation_grid input_grid(std::size_t layer) const {
    checked(layer);
    const bool two = is_two_sided(layer) || (options_.activations == activation_quantizer::pact &&
                                             options_.pact.two_sided);
    if (two)
      throw value_error(mixq::detail::cat("fixed_policy::input_grid: layer ", layer,
                                          " quantizes its input on a two-sided grid; a "
                                          "one-sided grid is expected"));
    switch (options_.activations) {
      case activation_quantizer::pact:
        return quant::activation_grid::pact(clip_value(layer));
      case activation_quantizer::lsq:
        return quant::activation_grid::step(steps_a_.at(layer).value()[0]);
      case activation_quantizer::uniform_asymmetric:
        break;
    }
    throw value_error(mixq::detail::cat(
        "fixed_policy::input_grid: layer ", layer,
        " quantizes its input with the dynamic asymmetric uniform quantizer, whose grid "
        "depends on each input; PACT or LSQ activations have a fixed grid"));
  }

  /// The integer codes and affine map of layer i's weights at its configured bits, equal on
  /// dequantisation to the weights the forward pass uses (deployment packs these).
  quant::code_tensor weight_codes(std::size_t layer) const {
    const ftensor& w = layers_.at(checked(layer))->weight.value();
    const int b = config_.w_bits[layer];
    switch (options_.weights) {
      case weight_quantizer::dorefa:
        return quant::dorefa_codes(w, b);
      case weight_quantizer::uniform_symmetric:
        if (b == 1)
          return quant::binary_codes(w, quant::binary_scaling::mean_abs,
                                     quant::granularity::per_channel);
        return quant::uniform_codes(
            w,
            quant::choose_uniform_params(w, bitwidth{b, true}, quant_scheme::symmetric,
                                         quant::granularity::per_channel),
            bitwidth{b, true});
      case weight_quantizer::lsq:
        if (b == 1)
          return quant::binary_codes(w, quant::binary_scaling::mean_abs,
                                     quant::granularity::per_channel);
        return quant::lsq_codes(w, steps_w_.at(layer).value(), b, true);
    }
    return {};
  }

  /// The codes of an input activation x of layer i (static quantizers: PACT, LSQ; the dynamic
  /// uniform one derives its map from x itself).
  quant::code_tensor activation_codes(std::size_t layer, const ftensor& x) const {
    const int b = config_.a_bits.at(checked(layer));
    const bool two = is_two_sided(layer);
    switch (options_.activations) {
      case activation_quantizer::pact:
        return quant::pact_codes(x, clip_value(layer), b, options_.pact.two_sided || two);
      case activation_quantizer::uniform_asymmetric:
        return quant::uniform_codes(
            x, quant::choose_uniform_params(x, bitwidth{b, false}, quant_scheme::asymmetric),
            bitwidth{b, false});
      case activation_quantizer::lsq:
        return quant::lsq_codes(x, steps_a_.at(layer).value(), b, two && b >= 2);
    }
    return {};
  }

 private:
  bool is_two_sided(std::size_t layer) const {
    return std::find(options_.two_sided_layers.begin(), options_.two_sided_layers.end(), layer) !=
           options_.two_sided_layers.end();
  }
  std::size_t checked(std::size_t layer) const {
    if (layer >= layers_.size())
      throw shape_error(mixq::detail::cat("fixed_policy: layer ", layer, " does not exist; ",
                                          layers_.size(), " quantized layers attached"));
    return layer;
  }

  quant::bit_config config_;
  fixed_policy_options options_;
  std::vector<quantized_layer*> layers_;
  std::vector<var> alphas_, steps_w_, steps_a_;
  std::vector<bool> act_initialised_;
};

}  // namespace mixq::nn
