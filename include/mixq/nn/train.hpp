// A training-loop helper for classifiers: train_epoch (forward, cross-entropy, backward,
// optimizer step per batch) and evaluate, with a progress bar that redraws one line on a
// terminal (batches, loss, accuracy, rate, ETA) and prints one line per epoch otherwise.
// Batches come from any indexable source whose elements have `images` and `labels`.
#pragma once

#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <span>
#include <string>

#include "mixq/nn/module.hpp"
#include "mixq/nn/optim.hpp"

namespace mixq::nn {

/// Running figures of one pass over the data.
struct epoch_stats {
  double loss = 0;      // mean loss per sample
  double accuracy = 0;  // fraction of correct top-1 predictions
  std::size_t samples = 0;
  double seconds = 0;
};

/// One-line progress display. On a terminal each update redraws the line ("\r"); otherwise
/// nothing is printed until finish(), which writes one line.
class progress_bar {
 public:
  progress_bar(std::string label, std::size_t total_batches, std::ostream& os = std::cerr,
               int interactive = -1)
      : label_(std::move(label)),
        total_(total_batches),
        os_(os),
        tty_(interactive < 0 ? (&os == &std::cerr && ::isatty(STDERR_FILENO)) ||
                                   (&os == &std::cout && ::isatty(STDOUT_FILENO))
                             : interactive != 0),
        start_(std::chrono::steady_clock::now()) {}

  bool interactive() const noexcept { return tty_; }
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

  /// The display line for `done` batches and the running figures.
  std::string line(std::size_t done, const epoch_stats& s) const {
    const double t = std::max(elapsed(), 1e-9);
    const double rate = double(s.samples) / t;
    const double eta = done ? t / double(done) * double(total_ - std::min(done, total_)) : 0.0;
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s %zu/%zu batches  loss %.4f  acc %.2f%%  %.0f samples/s  %s %.0fs",
                  label_.c_str(), done, total_, s.loss, 100.0 * s.accuracy, rate,
                  done < total_ ? "ETA" : "time", done < total_ ? eta : t);
    return buf;
  }
  void update(std::size_t done, const epoch_stats& s) {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && now - last_ < std::chrono::milliseconds(100)) return;  // throttle
    last_ = now;
    os_ << '\r' << line(done, s) << "\x1b[K" << std::flush;
  }
  void finish(const epoch_stats& s) {
    if (tty_)
      os_ << '\r' << line(total_, s) << "\x1b[K\n" << std::flush;
    else
      os_ << line(total_, s) << '\n' << std::flush;
  }

 private:
  std::string label_;
  std::size_t total_;
  std::ostream& os_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_{};
};

namespace detail {
inline std::size_t count_correct(const ftensor& logits, std::span<const int> labels) {
  const std::size_t N = logits.dim(0), C = logits.dim(1);
  std::size_t ok = 0;
  for (std::size_t n = 0; n < N; ++n) {
    const float* r = logits.data() + n * C;
    ok += int(std::max_element(r, r + C) - r) == labels[n];
  }
  return ok;
}
}  // namespace detail

/// Options of train_epoch / evaluate.
struct loop_options {
  std::string label = "train";
  std::ostream* out = &std::cerr;  // nullptr: silent
  int interactive = -1;            // -1: detect a terminal
  /// Called before each optimizer step with the global step index (for lr schedules).
  std::function<void(std::size_t step)> on_step;
  std::size_t first_step = 0;
};

/// One epoch of classifier training over batches[0..size()): model in training mode,
/// cross-entropy on the logits, backward, optimizer step.
template <class Batches>
epoch_stats train_epoch(module& model, optimizer& opt, const Batches& batches,
                        const loop_options& o = {}) {
  model.train();
  epoch_stats s;
  std::ostream null_stream(nullptr);
  progress_bar bar(o.label, batches.size(), o.out ? *o.out : null_stream,
                   o.out ? o.interactive : 0);
  double loss_sum = 0;
  std::size_t correct = 0;
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const auto b = batches[i];
    if (o.on_step) o.on_step(o.first_step + i);
    const var logits = model(autodiff::constant(b.images));
    const var loss = autodiff::cross_entropy(logits, b.labels);
    opt.zero_grad();
    autodiff::backward(loss);
    opt.step();
    const std::size_t n = b.labels.size();
    loss_sum += double(loss.item()) * double(n);
    correct += detail::count_correct(logits.value(), b.labels);
    s.samples += n;
    s.loss = loss_sum / double(s.samples);
    s.accuracy = double(correct) / double(s.samples);
    bar.update(i + 1, s);
  }
  s.seconds = bar.elapsed();
  if (o.out) bar.finish(s);
  return s;
}

/// Loss and accuracy over all batches in eval mode without building a graph.
template <class Batches>
epoch_stats evaluate(module& model, const Batches& batches) {
  const bool was_training = model.is_training();
  model.eval();
  autodiff::no_grad ng;
  epoch_stats s;
  double loss_sum = 0;
  std::size_t correct = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const auto b = batches[i];
    const var logits = model(autodiff::constant(b.images));
    loss_sum += double(autodiff::cross_entropy(logits, b.labels).item()) * double(b.labels.size());
    correct += detail::count_correct(logits.value(), b.labels);
    s.samples += b.labels.size();
  }
  s.loss = s.samples ? loss_sum / double(s.samples) : 0;
  s.accuracy = s.samples ? double(correct) / double(s.samples) : 0;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  model.train(was_training);
  return s;
}

}  // namespace mixq::nn
