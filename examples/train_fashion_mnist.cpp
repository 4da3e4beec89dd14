// Trains a small CNN on Fashion-MNIST in FP32 with mixq's autodiff and nn layers:
// nn::fashion_cnn (conv 1->32 3x3, BN, ReLU, max-pool, conv 32->64 3x3, BN, ReLU, max-pool,
// linear 3136->10);
// SGD with Nesterov momentum, weight decay on conv/linear weights only, cosine schedule.
//
//   train_fashion_mnist [--epochs 4] [--batch 64] [--lr 0.01] [--seed 1]
//                       [--data-dir /usr/share/datasets/fashion-mnist] [--save model.bin]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>

#include "mixq/data.hpp"
#include "mixq/nn.hpp"

namespace nn = mixq::nn;
namespace data = mixq::data;

namespace {
/// Standardises pixels with Fashion-MNIST's training mean and deviation.
void standardise(data::dataset& ds) {
  for (auto& v : ds.images) v = (v - 0.2860f) / 0.3530f;
}

[[noreturn]] void usage(const char* msg) {
  std::cerr << msg
            << "\nusage: train_fashion_mnist [--epochs N] [--batch N] [--lr X] "
               "[--seed N] [--data-dir DIR] [--save PATH]\n";
  std::exit(2);
}
}  // namespace

int main(int argc, char** argv) {
  std::size_t epochs = 4, batch = 64;
  float lr = 0.01f;
  unsigned seed = 1;
  std::string dir = data::fashion_mnist_default_dir, save;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + a).c_str());
    const std::string v = argv[++i];
    try {
      if (a == "--epochs")
        epochs = std::stoul(v);
      else if (a == "--batch")
        batch = std::stoul(v);
      else if (a == "--lr")
        lr = std::stof(v);
      else if (a == "--seed")
        seed = unsigned(std::stoul(v));
      else if (a == "--data-dir")
        dir = v;
      else if (a == "--save")
        save = v;
      else
        usage(("unknown option " + a).c_str());
    } catch (const std::logic_error&) {
      usage(("bad value for " + a + ": " + v).c_str());
    }
  }
  try {
    auto sets = data::fashion_mnist(dir);
    standardise(sets.train);
    standardise(sets.test);
    std::mt19937 rng(seed);
    auto net = nn::fashion_cnn(rng);
    // Weight decay on conv/linear weights; none on biases and batch-norm parameters.
    nn::param_group decayed{{}, lr, 0.9f, 5e-4f, true}, plain{{}, lr, 0.9f, 0.0f, true};
    for (auto& [name, p] : net->named_parameters())
      (p.shape().size() > 1 ? decayed : plain).params.push_back(p);
    nn::sgd opt({decayed, plain});
    data::batch_loader train(sets.train, batch, true, seed), test(sets.test, 500);
    const nn::cosine_schedule sched{epochs * train.size()};
    std::printf("Fashion-MNIST: %zu training, %zu test images; %zu epochs of %zu batches of %zu\n",
                sets.train.size(), sets.test.size(), epochs, train.size(), batch);
    const auto t0 = std::chrono::steady_clock::now();
    nn::epoch_stats ev;
    for (std::size_t e = 0; e < epochs; ++e) {
      train.set_epoch(e);
      nn::loop_options o;
      o.label = "epoch " + std::to_string(e + 1) + "/" + std::to_string(epochs);
      o.first_step = e * train.size();
      o.on_step = [&](std::size_t s) { opt.set_lr_factor(sched.factor(s)); };
      nn::train_epoch(*net, opt, train, o);
      ev = nn::evaluate(*net, test);
      std::printf("  test: loss %.4f  accuracy %.2f%%\n", ev.loss, 100.0 * ev.accuracy);
      std::fflush(stdout);
    }
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("final test accuracy %.2f%% after %zu epochs, %.0f s wall time\n",
                100.0 * ev.accuracy, epochs, secs);
    if (!save.empty()) {
      nn::save_parameters(*net, save);
      std::printf("parameters saved to %s\n", save.c_str());
    }
  } catch (const mixq::error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
