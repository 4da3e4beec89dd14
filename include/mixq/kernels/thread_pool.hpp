// A small reusable thread pool (no OpenMP): `parallel_for(n, f)` splits [0, n) into one
// contiguous range per thread and calls f(begin, end). The library's pool is shared by the
// kernels; its size is set with set_num_threads(n) (1 by default, so figures are single-core
// unless asked otherwise). Idle workers spin briefly before sleeping (set_spin_wait), so
// back-to-back calls (the layers of a network) do not pay a futex wake-up each.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "mixq/core/error.hpp"

namespace mixq::kernels {

class thread_pool {
 public:
  /// A pool running work on `threads` threads in all (the caller's thread is one of them).
  explicit thread_pool(std::size_t threads = 1) { resize(threads); }
  ~thread_pool() { stop_workers(); }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  std::size_t size() const noexcept { return workers_.size() + 1; }

  /// How long an idle worker (and the caller waiting for the workers) polls before sleeping
  /// on a condition variable; 0 sleeps at once. Default 200 us: a wake-up through the kernel
  /// costs tens of microseconds on a VM, a sizeable part of a sub-millisecond GEMM.
  void set_spin_wait(std::chrono::nanoseconds d) noexcept {
    spin_ns_.store(std::max<std::int64_t>(0, d.count()), std::memory_order_relaxed);
  }
  std::chrono::nanoseconds spin_wait() const noexcept {
    return std::chrono::nanoseconds(spin_ns_.load(std::memory_order_relaxed));
  }

  /// Sets the number of threads (value_error for 0). Not to be called while work runs.
  void resize(std::size_t threads) {
    if (threads == 0) throw value_error("thread_pool: 0 threads requested, expected at least 1");
    if (threads == size()) return;
    stop_workers();
    stop_ = false;
    // New workers start from the current generation, so they wait for the next task.
    for (std::size_t t = 1; t < threads; ++t)
      workers_.emplace_back([this, t, g = generation_.load()] { worker_loop(t, g); });
  }

  /// Calls f(begin, end) on disjoint ranges covering [0, n), at most `max_threads` of them
  /// (0: the pool's size), each range a multiple of `grain` except the last. Returns when all
  /// are done; rethrows the first exception. Nested calls from inside a task run serially.
  void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& f,
                    std::size_t max_threads = 0, std::size_t grain = 1) {
    if (n == 0) return;
    grain = std::max<std::size_t>(grain, 1);
    const std::size_t units = (n + grain - 1) / grain;
    std::size_t parts = max_threads == 0 ? size() : std::min(max_threads, size());
    parts = std::min(parts, units);
    if (parts <= 1 || inside_task()) {
      f(0, n);
      return;
    }
    std::unique_lock lock(run_mutex_);  // one parallel region at a time
    {
      std::lock_guard g(mutex_);
      task_ = &f;
      n_ = n;
      grain_ = grain;
      parts_ = parts;
      pending_.store(parts - 1);
      error_ = nullptr;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    run_part(0);
    spin_until([&] { return pending_.load() == 0; });
    std::unique_lock g(mutex_);
    done_.wait(g, [&] { return pending_.load() == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  static bool& inside_task() {
    thread_local bool inside = false;
    return inside;
  }

  std::pair<std::size_t, std::size_t> range_of(std::size_t part) const {
    const std::size_t units = (n_ + grain_ - 1) / grain_;
    const std::size_t b = units * part / parts_ * grain_, e = units * (part + 1) / parts_ * grain_;
    return {std::min(b, n_), std::min(e, n_)};
  }

  void run_part(std::size_t part) {
    auto [b, e] = range_of(part);
    inside_task() = true;
    try {
      if (b < e) (*task_)(b, e);
    } catch (...) {
      std::lock_guard g(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    inside_task() = false;
  }

  /// Polls `ready` until it holds or spin_wait() has passed (the caller then waits on a
  /// condition variable, which rechecks).
  template <class Ready>
  void spin_until(Ready ready) const {
    const std::int64_t limit = spin_ns_.load(std::memory_order_relaxed);
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 1; limit > 0 && !ready(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
      _mm_pause();
#endif
      if (i % 64 == 0 && std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now() - t0)
                                 .count() > limit)
        return;
    }
  }

  void worker_loop(std::size_t index, std::size_t seen) {
    for (;;) {
      // Poll first: the next task usually follows the last within microseconds.
      spin_until([&] { return stop_.load() || generation_.load() != seen; });
      {
        std::unique_lock g(mutex_);
        wake_.wait(g, [&] { return stop_.load() || generation_.load() != seen; });
        if (stop_) return;
        seen = generation_.load();
        if (index >= parts_) continue;
      }
      run_part(index);
      // The caller may be polling pending_ rather than waiting on done_; notify under the
      // mutex so a caller that checked pending_ just before sleeping is not missed.
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard g(mutex_);
        done_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard g(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::size_t, std::size_t)>* task_ = nullptr;
  std::size_t n_ = 0, grain_ = 1, parts_ = 0;
  std::atomic<std::size_t> pending_ = 0, generation_ = 0;
  std::atomic<bool> stop_ = false;
  std::atomic<std::int64_t> spin_ns_ = 200'000;
  std::exception_ptr error_;
};

/// The pool the kernels use.
inline thread_pool& default_thread_pool() {
  static thread_pool pool(1);
  return pool;
}
/// Number of threads the kernels use (1 unless set).
inline std::size_t num_threads() {
  return default_thread_pool().size();
}
/// Sets the kernels' thread count (value_error for 0).
inline void set_num_threads(std::size_t n) {
  default_thread_pool().resize(n);
}

}  // namespace mixq::kernels
