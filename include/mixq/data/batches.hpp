// Mini-batches of a dataset: a seeded, portable shuffle (the same order on every platform for
// a given seed and epoch) and batches copied out on demand.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "mixq/core/error.hpp"
#include "mixq/data/idx.hpp"

namespace mixq::data {

/// One mini-batch: images [B, C, H, W] and their labels.
struct batch {
  tensor<float> images;
  std::vector<int> labels;
};

namespace detail {
/// splitmix64: a tiny generator whose sequence is fixed by its definition (std::shuffle and
/// the standard distributions differ between library implementations).
inline std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace detail

/// A permutation of 0..n-1 by Fisher-Yates, determined by the seed.
inline std::vector<std::size_t> seeded_permutation(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> p(n);
  std::iota(p.begin(), p.end(), std::size_t{0});
  std::uint64_t s = seed;
  for (std::size_t i = n; i > 1; --i) {
    // Modulo bias is below i / 2^64: negligible.
    const std::size_t j = std::size_t(detail::splitmix64(s) % i);
    std::swap(p[i - 1], p[j]);
  }
  return p;
}

/// Batches over a dataset; with shuffle on, set_epoch(e) draws the order for epoch e from
/// (seed, e). The last batch is smaller unless drop_last.
class batch_loader {
 public:
  batch_loader(const dataset& ds, std::size_t batch_size, bool shuffle = false,
               std::uint64_t seed = 0, bool drop_last = false)
      : ds_(&ds), bs_(batch_size), shuffle_(shuffle), seed_(seed), drop_last_(drop_last) {
    if (batch_size == 0) throw value_error("batch_loader: batch size must be >= 1");
    if (ds.images.rank() < 1 || ds.images.dim(0) != ds.labels.size())
      throw shape_error(mixq::detail::cat("batch_loader: ", ds.labels.size(),
                                          " labels for images of shape ",
                                          shape_string(ds.images.shape())));
    set_epoch(0);
  }
  void set_epoch(std::size_t epoch) {
    if (shuffle_) {
      order_ = seeded_permutation(ds_->size(), seed_ ^ (0x632be59bd9b4e019ull * (epoch + 1)));
    } else {
      order_.resize(ds_->size());
      std::iota(order_.begin(), order_.end(), std::size_t{0});
    }
  }
  /// Number of batches per epoch.
  std::size_t size() const noexcept {
    const std::size_t n = ds_->size();
    return drop_last_ ? n / bs_ : (n + bs_ - 1) / bs_;
  }
  /// Batch i of the current epoch (a copy of its images and labels).
  batch operator[](std::size_t i) const {
    if (i >= size())
      throw value_error(
          mixq::detail::cat("batch index ", i, " out of range (", size(), " batches)"));
    const std::size_t lo = i * bs_, hi = std::min(lo + bs_, ds_->size());
    shape_t s = ds_->images.shape();
    const std::size_t per = s[0] ? ds_->images.size() / s[0] : 0;
    s[0] = hi - lo;
    batch b{tensor<float>(s), std::vector<int>(hi - lo)};
    for (std::size_t k = lo; k < hi; ++k) {
      const std::size_t src = order_[k];
      std::copy_n(ds_->images.data() + src * per, per, b.images.data() + (k - lo) * per);
      b.labels[k - lo] = ds_->labels[src];
    }
    return b;
  }

 private:
  const dataset* ds_;
  std::size_t bs_;
  bool shuffle_;
  std::uint64_t seed_;
  bool drop_last_;
  std::vector<std::size_t> order_;
};

}  // namespace mixq::data
