// Optimizers over parameter groups (each with its own lr, momentum, weight decay): SGD with
// momentum / Nesterov, and Adam; plus cosine and step learning-rate schedules, which give a
// factor the optimizer multiplies every group's base lr by.
#pragma once

#include <cmath>
#include <numbers>
#include <vector>

#include "mixq/autodiff/var.hpp"

namespace mixq::nn {

/// Parameters that share optimizer settings (e.g. no weight decay on biases and BN scales,
/// or a separate lr for architecture parameters).
struct param_group {
  std::vector<autodiff::var> params;
  float lr = 0.01f;
  float momentum = 0.0f;      // SGD only
  float weight_decay = 0.0f;  // L2: grad += weight_decay * param
  bool nesterov = false;      // SGD only
};

namespace detail {
inline void check_group(const param_group& g, const char* who) {
  if (!(g.lr >= 0) || !(g.momentum >= 0 && g.momentum < 1) || !(g.weight_decay >= 0))
    throw value_error(mixq::detail::cat(who, ": lr ", g.lr, ", momentum ", g.momentum,
                                        " and weight decay ", g.weight_decay,
                                        " must satisfy lr >= 0, 0 <= momentum < 1, decay >= 0"));
  if (g.nesterov && g.momentum == 0)
    throw value_error(mixq::detail::cat(who, ": Nesterov needs a momentum > 0"));
  for (const auto& p : g.params)
    if (!p.requires_grad())
      throw value_error(mixq::detail::cat(who, ": a parameter of shape ", shape_string(p.shape()),
                                          " does not require gradients"));
}
}  // namespace detail

/// Shared by both optimizers: the groups, the schedule factor and zero_grad().
class optimizer {
 public:
  explicit optimizer(std::vector<param_group> groups) : groups_(std::move(groups)) {}
  virtual ~optimizer() = default;
  virtual void step() = 0;
  void zero_grad() {
    for (auto& g : groups_)
      for (auto& p : g.params) p.zero_grad();
  }
  /// Every group's effective lr is its base lr times this factor (set by a schedule).
  void set_lr_factor(float f) { factor_ = f; }
  float lr_factor() const noexcept { return factor_; }
  std::vector<param_group>& groups() noexcept { return groups_; }

 protected:
  std::vector<param_group> groups_;
  float factor_ = 1.0f;
};

/// SGD: g = grad + wd p; v = momentum v + g; step = nesterov ? g + momentum v : v;
/// p -= lr step (PyTorch's formulation, no dampening).
class sgd : public optimizer {
 public:
  explicit sgd(std::vector<param_group> groups) : optimizer(std::move(groups)) {
    for (auto& g : groups_) {
      detail::check_group(g, "sgd");
      for (auto& p : g.params) velocity_.emplace_back(p.shape(), 0.0f);
    }
  }
  sgd(std::vector<autodiff::var> params, float lr, float momentum = 0.0f, float weight_decay = 0.0f,
      bool nesterov = false)
      : sgd(std::vector<param_group>{{std::move(params), lr, momentum, weight_decay, nesterov}}) {}

  void step() override {
    std::size_t k = 0;
    for (auto& g : groups_) {
      const float lr = g.lr * factor_, mu = g.momentum, wd = g.weight_decay;
      for (auto& p : g.params) {
        autodiff::ftensor& v = velocity_[k++];
        if (!p.has_grad()) continue;
        float* w = p.value().data();
        const float* gr = p.grad().data();
        for (std::size_t i = 0; i < v.size(); ++i) {
          const float gi = gr[i] + wd * w[i];
          if (mu == 0.0f) {
            w[i] -= lr * gi;
            continue;
          }
          v[i] = mu * v[i] + gi;
          w[i] -= lr * (g.nesterov ? gi + mu * v[i] : v[i]);
        }
      }
    }
  }

 private:
  std::vector<autodiff::ftensor> velocity_;
};

/// Adam with bias correction; weight decay is added to the gradient (L2, not AdamW).
class adam : public optimizer {
 public:
  explicit adam(std::vector<param_group> groups, float beta1 = 0.9f, float beta2 = 0.999f,
                float eps = 1e-8f)
      : optimizer(std::move(groups)), b1_(beta1), b2_(beta2), eps_(eps) {
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0))
      throw value_error(mixq::detail::cat("adam: betas ", beta1, ", ", beta2, " must be in [0, 1) ",
                                          "and eps ", eps, " > 0"));
    for (auto& g : groups_) {
      detail::check_group(g, "adam");
      for (auto& p : g.params) {
        m_.emplace_back(p.shape(), 0.0f);
        v_.emplace_back(p.shape(), 0.0f);
      }
    }
  }
  adam(std::vector<autodiff::var> params, float lr, float weight_decay = 0.0f)
      : adam(std::vector<param_group>{{std::move(params), lr, 0.0f, weight_decay, false}}) {}

  void step() override {
    ++t_;
    const float c1 = 1.0f - std::pow(b1_, float(t_)), c2 = 1.0f - std::pow(b2_, float(t_));
    std::size_t k = 0;
    for (auto& g : groups_) {
      const float lr = g.lr * factor_, wd = g.weight_decay;
      for (auto& p : g.params) {
        autodiff::ftensor &m = m_[k], &v = v_[k];
        ++k;
        if (!p.has_grad()) continue;
        float* w = p.value().data();
        const float* gr = p.grad().data();
        for (std::size_t i = 0; i < m.size(); ++i) {
          const float gi = gr[i] + wd * w[i];
          m[i] = b1_ * m[i] + (1 - b1_) * gi;
          v[i] = b2_ * v[i] + (1 - b2_) * gi * gi;
          w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps_);
        }
      }
    }
  }

 private:
  float b1_, b2_, eps_;
  long t_ = 0;
  std::vector<autodiff::ftensor> m_, v_;
};

/// Cosine annealing from 1 to min_factor over total_steps; constant at min_factor after.
struct cosine_schedule {
  std::size_t total_steps;
  float min_factor = 0.0f;
  float factor(std::size_t step) const {
    if (total_steps == 0 || step >= total_steps) return min_factor;
    const double c = 0.5 * (1 + std::cos(std::numbers::pi * double(step) / double(total_steps)));
    return float(min_factor + (1 - min_factor) * c);
  }
};

/// Multiplies by gamma every step_size steps.
struct step_schedule {
  std::size_t step_size;
  float gamma = 0.1f;
  float factor(std::size_t step) const {
    if (step_size == 0) throw value_error("step_schedule: step_size must be >= 1");
    return std::pow(gamma, float(step / step_size));
  }
};

}  // namespace mixq::nn
