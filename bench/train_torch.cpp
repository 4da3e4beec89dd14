// libtorch implementation of bench/train_torch.hpp: the example CNN in torch::nn and one SGD
// training step. Compiled without the project's warning flags (torch's headers are included
// as system headers and never see -Werror).
#include "train_torch.hpp"

#include <torch/torch.h>

#include <sstream>

namespace mixq_bench {

struct torch_cnn_trainer::impl {
  torch::nn::Sequential net;
  torch::optim::SGD opt;
  torch::Tensor x, y;

  impl(std::size_t batch, const float* images, const int* labels)
      : net(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1).bias(false)),
            torch::nn::BatchNorm2d(32), torch::nn::ReLU(), torch::nn::MaxPool2d(2),
            torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1).bias(false)),
            torch::nn::BatchNorm2d(64), torch::nn::ReLU(), torch::nn::MaxPool2d(2),
            torch::nn::Flatten(), torch::nn::Linear(64 * 7 * 7, 10)),
        opt(net->parameters(),
            torch::optim::SGDOptions(0.01).momentum(0.9).weight_decay(5e-4).nesterov(true)) {
    const auto n = static_cast<std::int64_t>(batch);
    // from_blob does not own the memory: clone into tensors that do.
    x = torch::from_blob(const_cast<float*>(images), {n, 1, 28, 28}, torch::kFloat32).clone();
    y = torch::from_blob(const_cast<int*>(labels), {n}, torch::kInt32).to(torch::kInt64);
    net->train();
  }
};

torch_cnn_trainer::torch_cnn_trainer(std::size_t batch, const float* images, const int* labels,
                                     unsigned seed) {
  torch::manual_seed(seed);
  impl_ = std::make_unique<impl>(batch, images, labels);
}

torch_cnn_trainer::~torch_cnn_trainer() = default;

float torch_cnn_trainer::step() {
  impl_->opt.zero_grad();
  torch::Tensor loss =
      torch::nn::functional::cross_entropy(impl_->net->forward(impl_->x), impl_->y);
  loss.backward();
  impl_->opt.step();
  return loss.item<float>();
}

void torch_cnn_trainer::set_threads(unsigned n) {
  torch::set_num_threads(static_cast<int>(n));
}

std::string torch_cnn_trainer::describe() {
  std::ostringstream s;
  s << "libtorch " << TORCH_VERSION << ", ";
  // The first line naming the parallel backend, e.g. "ATen parallel backend: OpenMP".
  std::istringstream info(at::get_parallel_info());
  std::string line, backend = "unknown backend";
  while (std::getline(info, line))
    if (line.find("parallel backend") != std::string::npos) backend = line;
  s << backend;
  return s.str();
}

}  // namespace mixq_bench
