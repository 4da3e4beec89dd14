// The define-by-run graph: `var` (a shared node holding value, gradient, parents and a
// backward closure), `backward(loss)` in reverse topological order, and `no_grad` scopes.
// Ops live in ops.hpp / conv.hpp; each one builds its node and its backward side by side.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/core/tensor.hpp"

namespace mixq::autodiff {

using ftensor = tensor<float>;

/// The default bound on the storage the tensor cache keeps: several steps' worth of a small
/// CNN's activations and gradients.
inline constexpr std::size_t default_tensor_cache_limit = std::size_t(256) << 20;

namespace detail {
using mixq::detail::cat;

/// Keeps the storage of large tensors that graph nodes release, for the next op that needs
/// a tensor of the same element count. A training step allocates the same activations and
/// gradients (megabytes each) every time; without this, the allocator returns them to the
/// system at the end of each step and the next step pays page faults and zero-fills on fresh
/// memory, which cost more than the arithmetic of a small CNN. Bounded by a byte limit
/// (oldest entries go first); thread-safe.
class tensor_cache {
 public:
  /// Smaller tensors go to and come from the allocator directly.
  static constexpr std::size_t min_elements = 1 << 14;

  /// A tensor of `shape` with unspecified contents: the caller overwrites every element.
  ftensor take(shape_t shape) {
    const std::size_t n = shape_numel(shape);
    if (n >= min_elements) {
      std::lock_guard lock(mutex_);
      for (std::size_t i = free_.size(); i-- > 0;)
        if (free_[i].size() == n) {
          ftensor t = std::move(free_[i]);
          free_.erase(free_.begin() + long(i));
          bytes_ -= n * sizeof(float);
          t.reshape(std::move(shape));
          return t;
        }
    }
    return ftensor(std::move(shape));
  }
  /// A tensor of `shape` filled with `value`.
  ftensor take(shape_t shape, float value) {
    ftensor t = take(std::move(shape));
    t.fill(value);
    return t;
  }
  /// Takes over t's storage if it is large enough and fits the limit; leaves t empty.
  void give(ftensor& t) noexcept {
    const std::size_t n = t.size(), b = n * sizeof(float);
    if (n >= min_elements) {
      std::lock_guard lock(mutex_);
      if (b <= limit_) {
        std::size_t drop = 0;  // oldest first
        while (bytes_ + b > limit_) bytes_ -= free_[drop++].size() * sizeof(float);
        free_.erase(free_.begin(), free_.begin() + long(drop));
        try {
          free_.push_back(std::move(t));
          bytes_ += b;
        } catch (...) {  // no room to remember it: let it be freed
        }
      }
    }
    t = ftensor();
  }
  void set_limit(std::size_t bytes) {
    std::lock_guard lock(mutex_);
    limit_ = bytes;
    std::size_t drop = 0;
    while (bytes_ > limit_) bytes_ -= free_[drop++].size() * sizeof(float);
    free_.erase(free_.begin(), free_.begin() + long(drop));
  }
  void clear() {
    std::vector<ftensor> gone;
    std::lock_guard lock(mutex_);
    gone.swap(free_);
    bytes_ = 0;
  }
  std::size_t bytes() {
    std::lock_guard lock(mutex_);
    return bytes_;
  }

 private:
  std::mutex mutex_;
  std::vector<ftensor> free_;  // oldest first
  std::size_t bytes_ = 0, limit_ = default_tensor_cache_limit;
};

/// The process-wide cache. Never destroyed, so that nodes released during static
/// destruction can still reach it.
inline tensor_cache& cache() {
  static tensor_cache* c = new tensor_cache;
  return *c;
}
}  // namespace detail

/// Bytes of released tensor storage the autodiff ops keep for reuse (see tensor_cache).
inline std::size_t tensor_cache_bytes() {
  return detail::cache().bytes();
}
/// Caps the kept storage (default_tensor_cache_limit; 0 keeps none) and frees what exceeds it.
inline void set_tensor_cache_limit(std::size_t bytes) {
  detail::cache().set_limit(bytes);
}
/// Frees all kept storage (the limit stays).
inline void release_tensor_cache() {
  detail::cache().clear();
}

/// One value in the graph. Leaves (parameters, inputs) have no parents and no backward.
struct node {
  ftensor value;
  ftensor grad;  // empty until a gradient flows here; then the shape of value
  std::vector<std::shared_ptr<node>> parents;
  std::function<void(node&)> backward_fn;  // reads this->grad, adds into parents' grads
  bool requires_grad = false;
  bool is_leaf = true;
  const char* op = "leaf";

  node() = default;
  node(const node&) = delete;
  node& operator=(const node&) = delete;
  /// Hands the value and gradient storage to the cache for the next step's ops.
  ~node() {
    detail::cache().give(value);
    detail::cache().give(grad);
  }

  /// The gradient buffer, allocated (zero) on first use.
  ftensor& grad_buffer() {
    if (grad.shape() != value.shape()) {
      detail::cache().give(grad);
      grad = detail::cache().take(value.shape(), 0.0f);
    }
    return grad;
  }
};

namespace detail {
inline bool& grad_mode() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

/// True unless inside a no_grad scope on this thread.
inline bool grad_enabled() {
  return detail::grad_mode();
}

/// While alive, ops build no graph (evaluation, optimizer updates, statistics).
class no_grad {
 public:
  no_grad() : saved_(detail::grad_mode()) { detail::grad_mode() = false; }
  ~no_grad() { detail::grad_mode() = saved_; }
  no_grad(const no_grad&) = delete;
  no_grad& operator=(const no_grad&) = delete;

 private:
  bool saved_;
};

/// A handle on a graph node; copies share the node.
class var {
 public:
  var() = default;
  /// A leaf holding `value`; `requires_grad` makes it a trainable leaf (a parameter).
  explicit var(ftensor value, bool requires_grad = false) : n_(std::make_shared<node>()) {
    n_->value = std::move(value);
    n_->requires_grad = requires_grad;
  }
  explicit var(std::shared_ptr<node> n) : n_(std::move(n)) {}

  /// A trainable leaf.
  static var parameter(ftensor value) { return var(std::move(value), true); }

  bool defined() const noexcept { return n_ != nullptr; }
  const ftensor& value() const { return checked().value; }
  ftensor& value() { return checked().value; }
  const shape_t& shape() const { return checked().value.shape(); }
  std::size_t size() const { return checked().value.size(); }
  /// The accumulated gradient (zeros of the value's shape if none has flowed yet).
  ftensor& grad() const { return checked().grad_buffer(); }
  bool has_grad() const { return checked().grad.shape() == checked().value.shape(); }
  bool requires_grad() const { return checked().requires_grad; }
  bool is_leaf() const { return checked().is_leaf; }
  const char* op() const { return checked().op; }
  /// Scalar value of a one-element var.
  float item() const {
    if (size() != 1)
      throw shape_error(
          detail::cat("item() needs a one-element var, got shape ", shape_string(shape())));
    return checked().value[0];
  }
  void zero_grad() const {
    if (n_ && n_->grad.size()) n_->grad.fill(0.0f);
  }
  node* get() const noexcept { return n_.get(); }
  const std::shared_ptr<node>& ptr() const noexcept { return n_; }

 private:
  node& checked() const {
    if (!n_) throw value_error("operation on an undefined (default-constructed) var");
    return *n_;
  }
  std::shared_ptr<node> n_;
};

/// A constant leaf (no gradient).
inline var constant(ftensor value) {
  return var(std::move(value), false);
}

namespace detail {
/// Creates an op's output node. Builds graph links only when grad mode is on and a parent
/// needs a gradient; the backward closure receives the output node.
inline var make_result(ftensor value, std::vector<var> parents, const char* op,
                       std::function<void(node&)> backward_fn) {
  auto n = std::make_shared<node>();
  n->value = std::move(value);
  n->op = op;
  n->is_leaf = false;
  bool needs = false;
  if (grad_enabled())
    for (const auto& p : parents) needs = needs || p.requires_grad();
  if (needs) {
    n->requires_grad = true;
    n->parents.reserve(parents.size());
    for (auto& p : parents) n->parents.push_back(p.ptr());
    n->backward_fn = std::move(backward_fn);
  }
  return var(std::move(n));
}

/// The gradient buffer of parent i if it wants one, else nullptr.
inline ftensor* parent_grad(node& self, std::size_t i) {
  node& p = *self.parents[i];
  return p.requires_grad ? &p.grad_buffer() : nullptr;
}

/// Parent i's gradient buffer for an op that writes every element of it. When no gradient
/// has flowed there yet, the buffer is new with unspecified contents and `fresh` is set: the
/// op stores its contribution instead of adding it, which saves zero-filling and re-reading
/// megabytes per layer. Take it just before writing (a parent may appear twice).
struct grad_target {
  float* data = nullptr;
  bool fresh = false;
  explicit operator bool() const noexcept { return data != nullptr; }
};
inline grad_target parent_grad_target(node& self, std::size_t i) {
  node& p = *self.parents[i];
  if (!p.requires_grad) return {};
  if (p.grad.shape() == p.value.shape()) return {p.grad.data(), false};
  cache().give(p.grad);
  p.grad = cache().take(p.value.shape());
  return {p.grad.data(), true};
}
}  // namespace detail

/// Reverse-mode sweep from `loss`: seeds d loss/d loss = `seed` (ones by default; a
/// one-element loss needs no seed), then runs each node's backward once, in reverse
/// topological order. Leaf gradients accumulate across calls; interior ones are reset.
inline void backward(const var& loss, const ftensor* seed = nullptr) {
  node* root = loss.get();
  if (!root) throw value_error("backward() on an undefined var");
  if (!seed && root->value.size() != 1)
    throw shape_error(detail::cat("backward() without a seed needs a one-element loss, got shape ",
                                  shape_string(root->value.shape())));
  if (seed) expect_shape(*seed, root->value.shape(), "backward seed");
  if (!root->requires_grad) return;  // nothing upstream needs a gradient
  // Iterative DFS post-order: every node appears after all of its parents.
  std::vector<node*> order;
  std::unordered_set<node*> seen;
  std::vector<std::pair<node*, std::size_t>> stack{{root, 0}};
  seen.insert(root);
  while (!stack.empty()) {
    auto& [n, next] = stack.back();
    if (next < n->parents.size()) {
      node* p = n->parents[next++].get();
      if (p->requires_grad && seen.insert(p).second) stack.push_back({p, 0});
    } else {
      order.push_back(n);
      stack.pop_back();
    }
  }
  // Interior gradients restart from zero; their buffers are allocated when the first
  // gradient flows in, so the storage released here can serve them.
  for (node* n : order)
    if (!n->is_leaf) detail::cache().give(n->grad);
  ftensor& g = root->grad_buffer();
  if (seed)
    for (std::size_t i = 0; i < g.size(); ++i) g[i] += (*seed)[i];
  else
    g[0] += 1.0f;
  for (auto it = order.rbegin(); it != order.rend(); ++it)
    if ((*it)->backward_fn) {
      (*it)->grad_buffer();  // zeros if nothing flowed here (every backward is linear in it)
      (*it)->backward_fn(**it);
    }
}

}  // namespace mixq::autodiff
