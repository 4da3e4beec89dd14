// deploy::compile: turns a trained model with quantized layers and its precision policy (a
// deployable_policy: nn::fixed_policy, search::bmpq_policy) into an integer_model. Weight
// codes and activation grids come from the policy's own quantizers (one definition for
// simulation and inference); batch norms fold into the preceding layer's output map; the
// kernel of each layer is picked from the measured kernel table at run time.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <string>
#include <typeinfo>
#include <vector>

#include "mixq/deploy/integer_model.hpp"
#include "mixq/nn/fixed_policy.hpp"
#include "mixq/nn/module.hpp"
#include "mixq/nn/quantized.hpp"
#include "mixq/nn/quantized_residual.hpp"

namespace mixq::deploy {

/// Why compile cannot take layer i's input quantizer, or "" when its grid is one-sided PACT
/// (code = rint(L clip(x, 0, alpha) / alpha)) or one-sided LSQ (code = rint(clip(x / step, 0,
/// L))), the grids integer models encode (zero padding is code 0 on both). The customisation
/// point of deployable_policy; other policies overload it in their own namespace (ADL).
inline std::string deploy_input_problem(const nn::fixed_policy& p, std::size_t layer) {
  const auto& opt = p.options();
  if (opt.activations == nn::activation_quantizer::uniform_asymmetric)
    return "quantizes its input with the dynamic asymmetric uniform quantizer (its grid "
           "depends on each batch); integer models take one-sided PACT or LSQ activations";
  const bool listed = std::find(opt.two_sided_layers.begin(), opt.two_sided_layers.end(), layer) !=
                      opt.two_sided_layers.end();
  if (listed || (opt.activations == nn::activation_quantizer::pact && opt.pact.two_sided))
    return "quantizes its input on a two-sided grid (fixed_policy_options::two_sided_layers or "
           "pact.two_sided); integer models take one-sided PACT or LSQ activations, whose zero "
           "padding is code 0";
  return {};
}

/// What compile reads from a precision policy: the number of attached layers, the bit_config,
/// each layer's weight codes (equal on dequantisation to the weights its forward uses), the
/// one-sided grid of its input (quant::activation_grid: PACT's or LSQ's), and
/// deploy_input_problem() saying whether that grid is one. nn::fixed_policy and
/// search::bmpq_policy model it.
template <class P>
concept deployable_policy = requires(const P& p, std::size_t i) {
  { p.layers() } -> std::convertible_to<std::size_t>;
  { p.config() } -> std::convertible_to<const quant::bit_config&>;
  { p.weight_codes(i) } -> std::convertible_to<quant::code_tensor>;
  { p.input_grid(i) } -> std::convertible_to<quant::activation_grid>;
  { deploy_input_problem(p, i) } -> std::convertible_to<std::string>;
};
static_assert(deployable_policy<nn::fixed_policy>);

namespace detail {

template <class P>
struct compile_state {
  const P& policy;
  std::vector<layer> out;
  std::vector<nn::quantized_layer*> quantized;  // the model's quantized layers, by index
  // Activation shape after the last op: {C, H, W} for images, {F} after flatten.
  std::vector<std::size_t> shape;
  // Set by a flatten of a {C, H, W} map with H * W > 1: the next fully connected layer's
  // columns go from (c, h, w) order to the integer model's (h, w, c) order.
  std::array<std::size_t, 3> flattened{0, 0, 0};
};

// A leaf module of a sequential model, in forward order (nested sequentials are opened).
inline void collect_leaves(nn::module& m, const std::string& name,
                           std::vector<std::pair<std::string, nn::module*>>& out) {
  if (auto* s = dynamic_cast<nn::sequential*>(&m)) {
    for (auto& [n, c] : s->children()) collect_leaves(*c, name.empty() ? n : name + "." + n, out);
    return;
  }
  out.emplace_back(name, &m);
}

inline std::size_t pooled(std::size_t in, std::size_t k, std::size_t s, std::size_t p,
                          const std::string& who) {
  if (in + 2 * p < k || s == 0)
    throw shape_error(cat("deploy::compile: ", who, ": window ", k, " does not fit ", in,
                          " pixels with padding ", p));
  return (in + 2 * p - k) / s + 1;
}

template <class P>
void add_quantized(compile_state<P>& st, nn::quantized_layer& q, const std::string& name) {
  const std::size_t i = q.index();
  bool attached = i < st.quantized.size() && st.quantized[i] == &q;
  if constexpr (std::derived_from<P, nn::precision_policy>)
    attached = attached && q.policy() == &st.policy;
  if (!attached)
    throw value_error(cat("deploy::compile: layer ", name,
                          " is not attached to the given policy (attach_policy first)"));
  if (const std::string why = deploy_input_problem(st.policy, i); !why.empty())
    throw value_error(cat("deploy::compile: layer ", name, " ", why));
  layer l = layer::of_kind(op_kind::quantized, name);
  const bool linear = q.kind() == nn::quantized_kind::linear;
  l.is_linear = linear;
  l.in_channels = std::uint32_t(q.in_channels());
  l.out_channels = std::uint32_t(q.out_channels());
  l.groups = std::uint32_t(q.groups());
  l.window = std::uint32_t(q.kernel_size());
  l.stride = std::uint32_t(q.stride());
  l.padding = std::uint32_t(q.padding());
  l.input.bits = st.policy.config().a_bits.at(i);
  l.input.grid = st.policy.input_grid(i);

  const quant::code_tensor w = st.policy.weight_codes(i);
  l.weight_type = w.type;
  l.weight_scale = w.scale;
  l.weight_zero_point = w.zero_point;
  const std::size_t out = q.out_channels(), k = linear ? 1 : q.kernel_size();
  const std::size_t cin_g = linear ? q.in_channels() : q.in_channels() / q.groups();
  if (w.codes.size() != out * k * k * cin_g)
    throw shape_error(cat("deploy::compile: layer ", name, " has ", w.codes.size(),
                          " weight codes; expected ", out * k * k * cin_g));
  l.weight_codes.resize(w.codes.size());
  if (linear) {
    if (st.shape.size() != 1 || st.shape[0] != q.in_channels())
      throw shape_error(cat("deploy::compile: fully connected layer ", name, " takes ",
                            q.in_channels(), " features; the model gives it ",
                            shape_string(shape_t(st.shape.begin(), st.shape.end())),
                            " (flatten first)"));
    const auto [c, h, wd] = st.flattened;
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t f = 0; f < cin_g; ++f) {
        std::size_t src = f;  // (h, w, c) position f reads the float model's (c, h, w) column
        if (c) src = (f % c) * h * wd + (f / c);
        l.weight_codes[o * cin_g + f] = w.codes[o * cin_g + src];
      }
    st.flattened = {0, 0, 0};
    st.shape = {out};
  } else {
    if (st.shape.size() != 3 || st.shape[0] != q.in_channels())
      throw shape_error(cat("deploy::compile: convolution ", name, " takes ", q.in_channels(),
                            " channels; the model gives it ",
                            shape_string(shape_t(st.shape.begin(), st.shape.end()))));
    // OIHW (the float model) to OHWI (the kernels).
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t ci = 0; ci < cin_g; ++ci)
        for (std::size_t y = 0; y < k; ++y)
          for (std::size_t x = 0; x < k; ++x)
            l.weight_codes[((o * k + y) * k + x) * cin_g + ci] =
                w.codes[((o * cin_g + ci) * k + y) * k + x];
    st.shape = {out, pooled(st.shape[1], k, q.stride(), q.padding(), name),
                pooled(st.shape[2], k, q.stride(), q.padding(), name)};
  }
  l.mul.assign(out, 1.0f);
  l.add.assign(out, 0.0f);
  if (q.bias.defined())
    for (std::size_t o = 0; o < out; ++o) l.add[o] = q.bias.value()[o];
  st.out.push_back(std::move(l));
}

// y = gamma (x - mean) / sqrt(var + eps) + beta as a per-channel (mul, add).
inline std::pair<std::vector<float>, std::vector<float>> batch_norm_affine(
    const nn::batch_norm2d& bn) {
  const auto& g = bn.weight.value();
  const auto& b = bn.bias.value();
  const auto& mean = bn.running_mean.value();
  const auto& var = bn.running_var.value();
  std::vector<float> mul(g.size()), add(g.size());
  for (std::size_t c = 0; c < g.size(); ++c) {
    mul[c] = g[c] / std::sqrt(var[c] + bn.eps());
    add[c] = b[c] - mean[c] * mul[c];
  }
  return {mul, add};
}

// Folds a batch norm into the output map of the quantized layer just added.
template <class P>
void fold_batch_norm(compile_state<P>& st, const nn::batch_norm2d& bn, const std::string& name) {
  auto [mul, add] = batch_norm_affine(bn);
  layer& l = st.out.back();
  if (mul.size() != l.out_channels)
    throw shape_error(cat("deploy::compile: batch norm ", name, " has ", mul.size(),
                          " channels after a layer with ", l.out_channels));
  for (std::size_t c = 0; c < mul.size(); ++c) {
    l.add[c] = mul[c] * l.add[c] + add[c];
    l.mul[c] *= mul[c];
  }
}

// A residual block as a linear program over two slots (blocks run one after another, so
// every block reuses them):
//   save 0; conv1+bn1; relu; conv2+bn2; residual_add 0; relu            (identity shortcut)
//   save 0; conv1+bn1; relu; conv2+bn2; save 1; load 0; down_conv+down_bn; residual_add 1;
//   relu                                                                 (downsampling)
template <class P>
void add_residual_block(compile_state<P>& st, nn::quantized_residual_block& b,
                        const std::string& name) {
  if (st.shape.size() != 3)
    throw shape_error(cat("deploy::compile: residual block ", name, " needs an image"));
  const std::vector<std::size_t> input_shape = st.shape;
  st.out.push_back(layer::slot_op(op_kind::save, 0, name + ".input"));
  add_quantized(st, *b.conv1, name + ".conv1");
  fold_batch_norm(st, *b.bn1, name + ".bn1");
  st.out.push_back(layer::of_kind(op_kind::relu, name + ".relu1"));
  add_quantized(st, *b.conv2, name + ".conv2");
  fold_batch_norm(st, *b.bn2, name + ".bn2");
  const std::vector<std::size_t> main_shape = st.shape;
  std::uint32_t shortcut_slot = 0;
  if (b.down_conv) {
    st.out.push_back(layer::slot_op(op_kind::save, 1, name + ".main"));
    st.out.push_back(layer::slot_op(op_kind::load, 0, name + ".shortcut"));
    st.shape = input_shape;
    add_quantized(st, *b.down_conv, name + ".down_conv");
    fold_batch_norm(st, *b.down_bn, name + ".down_bn");
    shortcut_slot = 1;
  }
  if (st.shape != main_shape)
    throw shape_error(cat(
        "deploy::compile: residual block ", name, ": the shortcut gives ",
        shape_string(shape_t(st.shape.begin(), st.shape.end())), ", the main branch ",
        shape_string(shape_t(main_shape.begin(), main_shape.end())), ": expected equal shapes"));
  st.out.push_back(layer::slot_op(op_kind::residual_add, shortcut_slot, name + ".add"));
  st.out.push_back(layer::of_kind(op_kind::relu, name + ".relu"));
}

}  // namespace detail

/// Compiles `model` (a sequential of quantized_conv2d / quantized_linear, batch_norm2d, relu,
/// max/avg/global-average pools, flatten and quantized_residual_block, nested sequentials
/// allowed) with the policy attached to it (nn::fixed_policy, search::bmpq_policy or any
/// deployable_policy), for inputs of shape {C, H, W}. Batch norms that follow a quantized layer
/// fold into its output map. value_error for unsupported modules or quantizers, shape_error
/// for inconsistent shapes.
template <deployable_policy P>
integer_model compile(nn::module& model, const P& policy, std::vector<std::size_t> input_chw) {
  if (input_chw.size() != 3)
    throw shape_error(detail::cat("deploy::compile: input shape has ", input_chw.size(),
                                  " dimensions; expected {C, H, W}"));
  detail::compile_state<P> st{policy, {}, nn::quantized_layers(model), std::move(input_chw), {}};
  if (st.quantized.empty() || st.quantized.size() != policy.layers())
    throw value_error(detail::cat("deploy::compile: the policy is attached to ", policy.layers(),
                                  " layers; the model has ", st.quantized.size(),
                                  " quantized layers (attach_policy(model, policy) first)"));
  std::vector<std::pair<std::string, nn::module*>> leaves;
  detail::collect_leaves(model, "", leaves);
  for (std::size_t li = 0; li < leaves.size(); ++li) {
    auto& [name, m] = leaves[li];
    if (auto* q = dynamic_cast<nn::quantized_layer*>(m)) {
      detail::add_quantized(st, *q, name);
      // A batch norm right after it folds into its output map.
      if (li + 1 < leaves.size())
        if (auto* bn = dynamic_cast<nn::batch_norm2d*>(leaves[li + 1].second)) {
          detail::fold_batch_norm(st, *bn, leaves[li + 1].first);
          ++li;
        }
    } else if (auto* rb = dynamic_cast<nn::quantized_residual_block*>(m)) {
      detail::add_residual_block(st, *rb, name);
    } else if (auto* bn = dynamic_cast<nn::batch_norm2d*>(m)) {
      auto [mul, add] = detail::batch_norm_affine(*bn);
      if (st.shape.empty() || st.shape[0] != mul.size() ||
          (st.shape.size() == 1 && st.flattened[0] != 0))
        throw shape_error(detail::cat("deploy::compile: batch norm ", name, " over ", mul.size(),
                                      " channels does not match its input"));
      layer l = layer::affine(std::move(mul), std::move(add));
      l.name = name;
      st.out.push_back(std::move(l));
    } else if (dynamic_cast<nn::relu*>(m)) {
      st.out.push_back(layer::of_kind(op_kind::relu, name));
    } else if (dynamic_cast<nn::max_pool2d*>(m) || dynamic_cast<nn::avg_pool2d*>(m)) {
      if (st.shape.size() != 3)
        throw shape_error(detail::cat("deploy::compile: ", name, " needs an image"));
      auto add_pool = [&](op_kind kind, const auto& pool) {
        const std::size_t k = pool.kernel_size(), s = pool.stride(), p = pool.padding();
        st.out.push_back(layer::pool(kind, std::uint32_t(k), std::uint32_t(s), std::uint32_t(p)));
        st.out.back().name = name;
        st.shape[1] = detail::pooled(st.shape[1], k, s, p, name);
        st.shape[2] = detail::pooled(st.shape[2], k, s, p, name);
      };
      if (auto* mp = dynamic_cast<nn::max_pool2d*>(m))
        add_pool(op_kind::max_pool, *mp);
      else
        add_pool(op_kind::avg_pool, *dynamic_cast<nn::avg_pool2d*>(m));
    } else if (dynamic_cast<nn::global_avg_pool2d*>(m)) {
      if (st.shape.size() != 3)
        throw shape_error(detail::cat("deploy::compile: ", name, " needs an image"));
      st.out.push_back(layer::of_kind(op_kind::global_avg_pool, name));
      st.shape = {st.shape[0]};
    } else if (dynamic_cast<nn::flatten*>(m)) {
      st.out.push_back(layer::of_kind(op_kind::flatten, name));
      if (st.shape.size() == 3) {
        if (st.shape[1] * st.shape[2] > 1) st.flattened = {st.shape[0], st.shape[1], st.shape[2]};
        st.shape = {st.shape[0] * st.shape[1] * st.shape[2]};
      }
    } else {
      throw value_error(
          detail::cat("deploy::compile: module ", name.empty() ? "(root)" : name, " of type ",
                      typeid(*m).name(),
                      " is not supported; expected quantized_conv2d, quantized_linear, "
                      "batch_norm2d, relu, pools, flatten, quantized_residual_block or "
                      "sequential"));
    }
  }
  return integer_model(std::move(st.out));
}

}  // namespace mixq::deploy
