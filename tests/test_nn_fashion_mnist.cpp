// Training on real Fashion-MNIST batches lowers the loss on held-out images. Uses the
// 10000-image t10k files of Debian's dataset-fashion-mnist (installed in CI).
#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include "mixq/data.hpp"
#include "mixq/nn.hpp"

using namespace mixq;
namespace ad = mixq::autodiff;

TEST_CASE("loss decreases on real Fashion-MNIST batches") {
  const std::filesystem::path dir = data::fashion_mnist_default_dir;
  if (!std::filesystem::exists(dir / "t10k-images-idx3-ubyte.gz")) {
    MESSAGE("SKIPPED: ", dir.string(),
            " is missing; install it with `apt-get install dataset-fashion-mnist`");
    return;
  }
  const data::dataset all = data::load_idx_dataset((dir / "t10k-images-idx3-ubyte.gz").string(),
                                                   (dir / "t10k-labels-idx1-ubyte.gz").string());
  REQUIRE(all.size() == 10000);
  // Held-out: the last 1000 images; training batches come from the first 9000.
  data::dataset train, held;
  const std::size_t px = 28 * 28, split = 9000;
  train.images = tensor<float>({split, 1, 28, 28});
  held.images = tensor<float>({all.size() - split, 1, 28, 28});
  std::copy_n(all.images.data(), split * px, train.images.data());
  std::copy_n(all.images.data() + split * px, (all.size() - split) * px, held.images.data());
  train.labels.assign(all.labels.begin(), all.labels.begin() + long(split));
  held.labels.assign(all.labels.begin() + long(split), all.labels.end());

  std::mt19937 rng(7);
  nn::sequential net;
  net.add(std::make_shared<nn::conv2d>(1, 8, 3, 2, 1, 1, false, rng));
  net.add(std::make_shared<nn::batch_norm2d>(8));
  net.add(std::make_shared<nn::relu>());
  net.add(std::make_shared<nn::max_pool2d>(2));
  net.add(std::make_shared<nn::flatten>());
  net.add(std::make_shared<nn::linear>(8 * 7 * 7, 10, true, rng));
  data::batch_loader batches(train, 64, true, 3), eval_batches(held, 500);
  const nn::epoch_stats before = nn::evaluate(net, eval_batches);
  nn::sgd opt(net.parameters(), 0.05f, 0.9f);
  struct first_n {
    const data::batch_loader& b;
    std::size_t n;
    std::size_t size() const { return n; }
    data::batch operator[](std::size_t i) const { return b[i]; }
  };
  nn::loop_options o;
  o.out = nullptr;
  const nn::epoch_stats tr = nn::train_epoch(net, opt, first_n{batches, 60}, o);
  const nn::epoch_stats after = nn::evaluate(net, eval_batches);
  CAPTURE(before.loss);
  CAPTURE(after.loss);
  CAPTURE(after.accuracy);
  CHECK(tr.samples == 60 * 64);
  CHECK(after.loss < 0.6 * before.loss);
  CHECK(after.accuracy > 0.6);  // chance is 0.1
}
