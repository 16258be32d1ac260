// kernel_sets.h — what the kernel tests share: every kernel set this CPU can run, and an allocator that gives each
// request its own heap block (for OpCtx outside a session).
#pragma once

#include <algorithm>
#include <vector>

#include "runtime/internal.h"
#include "runtime/kernels.h"

namespace testutil {

struct HeapAlloc : crt::detail::Allocator {
  std::vector<crt::detail::AlignedBytes> keep;
  void* output(int, size_t b, int, bool) override { keep.emplace_back(std::max<size_t>(b, 1)); return keep.back().data(); }
  void* scratch(size_t b, int, bool) override { keep.emplace_back(std::max<size_t>(b, 1)); return keep.back().data(); }
  void alias(int, int) override {}
};

inline std::vector<const crt::detail::Kernels*> kernelSets() {
  using namespace crt::detail;
  std::vector<const Kernels*> v = {&scalarKernels()};
  if (avx2Kernels()) v.push_back(avx2Kernels());
  if (avx512Kernels()) v.push_back(avx512Kernels());
  return v;
}

}  // namespace testutil
