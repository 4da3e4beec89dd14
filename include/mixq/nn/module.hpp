// nn modules: `module` (named parameters and buffers, children, train/eval mode, a forward
// hook), and the layers a small CNN or ResNet needs: linear, conv2d, batch_norm2d, relu,
// pools, flatten, sequential and a residual basic block.
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "mixq/autodiff.hpp"

namespace mixq::nn {

using autodiff::ftensor;
using autodiff::var;

/// A layer or a network. Parameters are trainable leaf vars; buffers are state saved with
/// the parameters but not trained (batch-norm running statistics).
class module {
 public:
  virtual ~module() = default;
  virtual var forward(const var& x) = 0;

  /// forward(), then the forward hook if one is set (search policies record features).
  var operator()(const var& x) {
    var y = forward(x);
    if (hook_) hook_(*this, x, y);
    return y;
  }
  using hook_fn = std::function<void(module&, const var& input, const var& output)>;
  void set_forward_hook(hook_fn hook) { hook_ = std::move(hook); }

  /// Every parameter of this module and its children, named "child.sub.name".
  std::vector<std::pair<std::string, var>> named_parameters() const {
    std::vector<std::pair<std::string, var>> out;
    collect(out, "", false);
    return out;
  }
  /// Every buffer of this module and its children, named like parameters.
  std::vector<std::pair<std::string, var>> named_buffers() const {
    std::vector<std::pair<std::string, var>> out;
    collect(out, "", true);
    return out;
  }
  std::vector<var> parameters() const {
    std::vector<var> out;
    for (auto& [n, p] : named_parameters()) out.push_back(p);
    return out;
  }
  const std::vector<std::pair<std::string, std::shared_ptr<module>>>& children() const {
    return children_;
  }

  /// Training mode (batch norm uses batch statistics) for this module and its children.
  void train(bool on = true) {
    training_ = on;
    for (auto& [n, c] : children_) c->train(on);
  }
  void eval() { train(false); }
  bool is_training() const noexcept { return training_; }
  void zero_grad() {
    for (auto& p : parameters()) p.zero_grad();
  }

 protected:
  var register_parameter(std::string name, ftensor init) {
    params_.emplace_back(std::move(name), var::parameter(std::move(init)));
    return params_.back().second;
  }
  var register_buffer(std::string name, ftensor init) {
    buffers_.emplace_back(std::move(name), autodiff::constant(std::move(init)));
    return buffers_.back().second;
  }
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> m) {
    children_.emplace_back(std::move(name), m);
    return m;
  }

 private:
  void collect(std::vector<std::pair<std::string, var>>& out, const std::string& prefix,
               bool buffers) const {
    for (auto& [n, p] : buffers ? buffers_ : params_) out.emplace_back(prefix + n, p);
    for (auto& [n, c] : children_) c->collect(out, prefix + n + ".", buffers);
  }

  std::vector<std::pair<std::string, var>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<module>>> children_;
  bool training_ = true;
  hook_fn hook_;
};

namespace detail {
/// Kaiming-uniform initialisation (bound sqrt(6 / fan_in)) for layers followed by ReLU.
inline ftensor kaiming_uniform(shape_t shape, std::size_t fan_in, std::mt19937& rng) {
  ftensor t(std::move(shape));
  const float bound = std::sqrt(6.0f / float(std::max<std::size_t>(fan_in, 1)));
  std::uniform_real_distribution<float> u(-bound, bound);
  for (auto& v : t) v = u(rng);
  return t;
}
/// Default seed source for layers constructed without an explicit generator.
inline std::mt19937& default_rng() {
  thread_local std::mt19937 rng(0x6d697871);
  return rng;
}
}  // namespace detail

/// y = x w^T + b, x [N, in].
class linear : public module {
 public:
  linear(std::size_t in, std::size_t out, bool bias = true,
         std::mt19937& rng = detail::default_rng())
      : in_(in), out_(out) {
    weight = register_parameter("weight", detail::kaiming_uniform({out, in}, in, rng));
    if (bias) this->bias = register_parameter("bias", ftensor({out}, 0.0f));
  }
  var forward(const var& x) override { return autodiff::linear(x, weight, bias); }
  std::size_t in_features() const noexcept { return in_; }
  std::size_t out_features() const noexcept { return out_; }
  var weight, bias;

 private:
  std::size_t in_, out_;
};

/// 2-D convolution, weight [out, in/groups, k, k].
class conv2d : public module {
 public:
  conv2d(std::size_t in, std::size_t out, std::size_t kernel, std::size_t stride = 1,
         std::size_t padding = 0, std::size_t groups = 1, bool bias = true,
         std::mt19937& rng = detail::default_rng())
      : in_(in), out_(out), kernel_(kernel), stride_(stride), padding_(padding), groups_(groups) {
    if (groups == 0 || in % groups || out % groups)
      throw shape_error(mixq::detail::cat("nn::conv2d: groups=", groups,
                                          " must divide in channels ", in, " and out channels ",
                                          out));
    const std::size_t fan_in = in / groups * kernel * kernel;
    weight = register_parameter(
        "weight", detail::kaiming_uniform({out, in / groups, kernel, kernel}, fan_in, rng));
    if (bias) this->bias = register_parameter("bias", ftensor({out}, 0.0f));
  }
  var forward(const var& x) override {
    return autodiff::conv2d(x, weight, bias, stride_, padding_, groups_);
  }
  std::size_t in_channels() const noexcept { return in_; }
  std::size_t out_channels() const noexcept { return out_; }
  std::size_t kernel_size() const noexcept { return kernel_; }
  std::size_t stride() const noexcept { return stride_; }
  std::size_t padding() const noexcept { return padding_; }
  std::size_t groups() const noexcept { return groups_; }
  var weight, bias;

 private:
  std::size_t in_, out_, kernel_, stride_, padding_, groups_;
};

/// Batch normalisation over channels of [N, C, H, W] (or [N, C]); running statistics are
/// buffers, used in eval mode.
class batch_norm2d : public module {
 public:
  explicit batch_norm2d(std::size_t channels, float momentum = 0.1f, float eps = 1e-5f)
      : momentum_(momentum), eps_(eps) {
    weight = register_parameter("weight", ftensor({channels}, 1.0f));
    bias = register_parameter("bias", ftensor({channels}, 0.0f));
    running_mean = register_buffer("running_mean", ftensor({channels}, 0.0f));
    running_var = register_buffer("running_var", ftensor({channels}, 1.0f));
  }
  var forward(const var& x) override {
    return autodiff::batch_norm(x, weight, bias, running_mean.value(), running_var.value(),
                                is_training(), momentum_, eps_);
  }
  var weight, bias, running_mean, running_var;
  float eps() const noexcept { return eps_; }
  float momentum() const noexcept { return momentum_; }
  /// The weight of a batch's statistics in the running averages, in (0, 1].
  void set_momentum(float m) {
    if (!(m > 0.0f && m <= 1.0f))
      throw value_error(mixq::detail::cat("batch_norm2d: momentum ", m, "; expected 0 < m <= 1"));
    momentum_ = m;
  }

 private:
  float momentum_, eps_;
};

class relu : public module {
 public:
  var forward(const var& x) override { return autodiff::relu(x); }
};

class max_pool2d : public module {
 public:
  explicit max_pool2d(std::size_t k, std::size_t stride = 0, std::size_t padding = 0)
      : k_(k), stride_(stride), padding_(padding) {}
  var forward(const var& x) override { return autodiff::max_pool2d(x, k_, stride_, padding_); }
  std::size_t kernel_size() const noexcept { return k_; }
  /// The stride (equal to the window when constructed with 0).
  std::size_t stride() const noexcept { return stride_ ? stride_ : k_; }
  std::size_t padding() const noexcept { return padding_; }

 private:
  std::size_t k_, stride_, padding_;
};

class avg_pool2d : public module {
 public:
  explicit avg_pool2d(std::size_t k, std::size_t stride = 0, std::size_t padding = 0)
      : k_(k), stride_(stride), padding_(padding) {}
  var forward(const var& x) override { return autodiff::avg_pool2d(x, k_, stride_, padding_); }
  std::size_t kernel_size() const noexcept { return k_; }
  /// The stride (equal to the window when constructed with 0).
  std::size_t stride() const noexcept { return stride_ ? stride_ : k_; }
  std::size_t padding() const noexcept { return padding_; }

 private:
  std::size_t k_, stride_, padding_;
};

class global_avg_pool2d : public module {
 public:
  var forward(const var& x) override { return autodiff::global_avg_pool2d(x); }
};

class flatten : public module {
 public:
  var forward(const var& x) override { return autodiff::flatten(x); }
};

/// Runs its children in order; they are named "0", "1", ...
class sequential : public module {
 public:
  sequential() = default;
  explicit sequential(std::vector<std::shared_ptr<module>> layers) {
    for (auto& l : layers) add(std::move(l));
  }
  template <class M>
  std::shared_ptr<M> add(std::shared_ptr<M> m) {
    layers_.push_back(m);
    return register_module(std::to_string(layers_.size() - 1), std::move(m));
  }
  var forward(const var& x) override {
    var y = x;
    for (auto& l : layers_) y = (*l)(y);
    return y;
  }
  std::size_t size() const noexcept { return layers_.size(); }
  module& operator[](std::size_t i) const { return *layers_.at(i); }

 private:
  std::vector<std::shared_ptr<module>> layers_;
};

/// ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is a
/// 1x1 conv + batch norm when the stride or the channel count changes, else the identity.
class residual_block : public module {
 public:
  residual_block(std::size_t in, std::size_t out, std::size_t stride = 1,
                 std::mt19937& rng = detail::default_rng()) {
    conv1 =
        register_module("conv1", std::make_shared<conv2d>(in, out, 3, stride, 1, 1, false, rng));
    bn1 = register_module("bn1", std::make_shared<batch_norm2d>(out));
    conv2 = register_module("conv2", std::make_shared<conv2d>(out, out, 3, 1, 1, 1, false, rng));
    bn2 = register_module("bn2", std::make_shared<batch_norm2d>(out));
    if (stride != 1 || in != out) {
      down_conv = register_module("down_conv",
                                  std::make_shared<conv2d>(in, out, 1, stride, 0, 1, false, rng));
      down_bn = register_module("down_bn", std::make_shared<batch_norm2d>(out));
    }
  }
  var forward(const var& x) override {
    var h = autodiff::relu((*bn1)((*conv1)(x)));
    h = (*bn2)((*conv2)(h));
    const var s = down_conv ? (*down_bn)((*down_conv)(x)) : x;
    return autodiff::relu(autodiff::add(h, s));
  }
  std::shared_ptr<conv2d> conv1, conv2, down_conv;
  std::shared_ptr<batch_norm2d> bn1, bn2, down_bn;
};

}  // namespace mixq::nn
