// The thread count the autodiff ops use to split their work (conv2d over the batch; batch
// norm over channels; pooling over planes; pointwise ops over elements), and a small
// parallel-for.
// Default: std::thread::hardware_concurrency(); set_threads(1) keeps everything on the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace mixq::autodiff {

namespace detail {
inline std::atomic<unsigned>& thread_setting() {
  static std::atomic<unsigned> n{std::max(1u, std::thread::hardware_concurrency())};
  return n;
}
}  // namespace detail

/// Threads used by the batch-parallel ops (at least 1).
inline unsigned threads() {
  return detail::thread_setting().load();
}
inline void set_threads(unsigned n) {
  detail::thread_setting() = std::max(1u, n);
}

namespace detail {
/// Splits [0, n) into at most threads() contiguous chunks and calls f(begin, end, chunk) for
/// each, the first on the calling thread. Returns the number of chunks used. The first
/// exception thrown by a chunk is rethrown after all have finished.
template <class F>
unsigned parallel_chunks(std::size_t n, F&& f) {
  const unsigned t = unsigned(std::min<std::size_t>(threads(), std::max<std::size_t>(n, 1)));
  if (t <= 1) {
    f(std::size_t{0}, n, 0u);
    return 1;
  }
  std::vector<std::exception_ptr> errors(t);
  std::vector<std::thread> pool;
  auto run = [&](unsigned c) {
    try {
      f(n * c / t, n * (c + 1) / t, c);
    } catch (...) {
      errors[c] = std::current_exception();
    }
  };
  for (unsigned c = 1; c < t; ++c) pool.emplace_back(run, c);
  run(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return t;
}

/// Element counts below this run on the calling thread: starting threads costs tens of
/// microseconds, more than a pointwise pass over this many floats.
inline constexpr std::size_t parallel_min_elements = std::size_t(1) << 16;

/// parallel_chunks over [0, n) when the op touches at least parallel_min_elements values in
/// all (`elements`), else one chunk on the calling thread.
template <class F>
unsigned parallel_chunks_if_large(std::size_t n, std::size_t elements, F&& f) {
  if (elements < parallel_min_elements || threads() <= 1) {
    f(std::size_t{0}, n, 0u);
    return 1;
  }
  return parallel_chunks(n, std::forward<F>(f));
}
}  // namespace detail

}  // namespace mixq::autodiff
