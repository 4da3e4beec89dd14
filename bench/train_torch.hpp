// The libtorch side of bench/train.cpp behind a plain interface, so that only
// train_torch.cpp sees torch's headers (they do not build cleanly with the project's
// -Wpedantic -Werror, and they are slow to compile). Built only when libtorch is found.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace mixq_bench {

/// The Fashion-MNIST example CNN (nn::fashion_cnn's layers) written with torch::nn, trained
/// on one fixed batch by the same SGD (lr 0.01, Nesterov momentum 0.9, weight decay 5e-4).
class torch_cnn_trainer {
 public:
  /// images: batch x 1 x 28 x 28 floats; labels: batch class indices in [0, 10).
  torch_cnn_trainer(std::size_t batch, const float* images, const int* labels, unsigned seed);
  ~torch_cnn_trainer();
  torch_cnn_trainer(const torch_cnn_trainer&) = delete;
  torch_cnn_trainer& operator=(const torch_cnn_trainer&) = delete;

  /// One training step: zero_grad, forward, cross-entropy, backward, SGD update. Returns
  /// the loss (reading it waits for the whole step).
  float step();

  /// Sets libtorch's intra-op thread count (torch::set_num_threads).
  static void set_threads(unsigned n);
  /// "libtorch <version>, <parallel backend>" for the benchmark's context.
  static std::string describe();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace mixq_bench
