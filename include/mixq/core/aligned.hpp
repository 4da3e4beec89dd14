// A 64-byte aligned allocator: tensors and bit planes start on a cache line and a 512-bit
// register boundary, so SIMD kernels may use aligned loads.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace mixq {

inline constexpr std::size_t simd_alignment = 64;

template <class T>
struct aligned_allocator {
  using value_type = T;
  aligned_allocator() noexcept = default;
  template <class U>
  aligned_allocator(const aligned_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{simd_alignment}));
  }
  void deallocate(T* p, std::size_t) noexcept {
    ::operator delete(p, std::align_val_t{simd_alignment});
  }
  template <class U>
  friend bool operator==(const aligned_allocator&, const aligned_allocator<U>&) noexcept {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, aligned_allocator<T>>;

}  // namespace mixq
