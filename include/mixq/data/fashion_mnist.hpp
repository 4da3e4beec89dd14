// Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist package (or any
// directory holding the four standard files, gzipped or not).
#pragma once

#include <filesystem>
#include <string>

#include "mixq/data/idx.hpp"

namespace mixq::data {

/// Where Debian's dataset-fashion-mnist package installs the files.
inline constexpr const char* fashion_mnist_default_dir = "/usr/share/datasets/fashion-mnist";

struct train_test {
  dataset train, test;
};

namespace detail {
inline std::string find_idx_file(const std::filesystem::path& dir, const std::string& stem) {
  for (const char* ext : {".gz", ""}) {
    const auto p = dir / (stem + ext);
    if (std::filesystem::exists(p)) return p.string();
  }
  throw io_error(cat("Fashion-MNIST file ", (dir / (stem + ".gz")).string(),
                     " not found; install the data set with "
                     "`apt-get install dataset-fashion-mnist` or pass its directory"));
}
}  // namespace detail

/// The 60000 training and 10000 test images (28x28, values in [0, 1]) and labels (0..9).
inline train_test fashion_mnist(const std::string& dir = fashion_mnist_default_dir) {
  const std::filesystem::path d(dir);
  train_test t;
  t.train = load_idx_dataset(detail::find_idx_file(d, "train-images-idx3-ubyte"),
                             detail::find_idx_file(d, "train-labels-idx1-ubyte"));
  t.test = load_idx_dataset(detail::find_idx_file(d, "t10k-images-idx3-ubyte"),
                            detail::find_idx_file(d, "t10k-labels-idx1-ubyte"));
  return t;
}

}  // namespace mixq::data
