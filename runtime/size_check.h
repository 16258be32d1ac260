// size_check.h — checked size arithmetic for sizes computed from file or input data.
// One helper for the whole project: the runtime's loader, shape functions and memory planner, and the
// host's .npy/.cir/tokenizer readers use it, so a crafted dim can never wrap a size to a small number.
// Header-only, no exceptions, no dependencies (the runtime and compress_util both include it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace crt {

/// No tensor has more elements than this (2^48: 256 Ti elements, far above any real model). Bounding
/// the product of the *non-zero* dims also bounds every partial product, so code that multiplies a
/// prefix or suffix of a checked shape (outer/inner loops, strides) cannot overflow either, even when
/// another dim is 0, and `elements * 8` still fits in int64.
constexpr int64_t kMaxElements = int64_t{1} << 48;

/// a * b into *out; false on overflow.
inline bool checkedMul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }
/// a + b into *out; false on overflow.
inline bool checkedAdd(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }

/// Number of elements of a tensor with dims d[0..n): false when a dim is negative or the product of the
/// non-zero dims exceeds kMaxElements. Fast path (what almost every real shape takes, a few instructions per
/// dim): when every dim is below 2^(48/n), any product of them is below 2^48, so the plain product is exact;
/// a negative dim sets the top bit and takes the exact path.
inline bool checkedNumel(const int64_t* d, size_t n, int64_t* numel) {
  static constexpr uint8_t kBitsPerDim[9] = {48, 48, 24, 16, 12, 9, 8, 6, 6};  // floor(48 / n)
  uint64_t any = 0, product = 1;  // unsigned: wraps harmlessly when the fast path does not apply
  for (size_t i = 0; i < n; ++i) {
    const uint64_t v = static_cast<uint64_t>(d[i]);
    any |= v;
    product *= v;
  }
  if (n <= 8 && (any >> kBitsPerDim[n]) == 0) {
    *numel = static_cast<int64_t>(product);
    return true;
  }
  int64_t nonzero = 1;
  bool zero = false;
  for (size_t i = 0; i < n; ++i) {
    if (d[i] < 0 || d[i] > kMaxElements) return false;
    if (d[i] == 0) {
      zero = true;
      continue;
    }
    if (!checkedMul(nonzero, d[i], &nonzero) || nonzero > kMaxElements) return false;
  }
  *numel = zero ? 0 : nonzero;
  return true;
}

/// Bytes of `elements` items of `item_size` bytes each; false on overflow.
inline bool checkedBytes(int64_t elements, int64_t item_size, int64_t* bytes) {
  return elements >= 0 && item_size >= 0 && checkedMul(elements, item_size, bytes);
}

}  // namespace crt
