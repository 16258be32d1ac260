// kernel_sets.h — what the kernel tests share: every kernel set this CPU can run, an allocator that gives each
// request its own heap block (for OpCtx outside a session), and a packed MatMul run with one kernel set.
#pragma once

#include <algorithm>
#include <vector>

#include "runtime/internal.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/thread_pool.h"

namespace testutil {

struct HeapAlloc : crt::detail::Allocator {
  std::vector<crt::detail::AlignedBytes> keep;
  void* output(int, size_t b, int, bool) override { keep.emplace_back(std::max<size_t>(b, 1)); return keep.back().data(); }
  void* scratch(size_t b, int, bool) override { keep.emplace_back(std::max<size_t>(b, 1)); return keep.back().data(); }
  void alias(int, int, size_t, int, bool) override {}
};

inline std::vector<const crt::detail::Kernels*> kernelSets() {
  using namespace crt::detail;
  std::vector<const Kernels*> v = {&scalarKernels()};
  if (avx2Kernels()) v.push_back(avx2Kernels());
  if (avx512Kernels()) v.push_back(avx512Kernels());
  return v;
}

/// kernelSets() and, where the CPU has AMX, the kernel set whose int8-activation GEMM uses it (every other kernel
/// there is the AVX-512 set's): the int8-activation tests run each.
inline std::vector<const crt::detail::Kernels*> int8KernelSets() {
  std::vector<const crt::detail::Kernels*> v = kernelSets();
  if (crt::detail::amxKernels()) v.push_back(crt::detail::amxKernels());
  return v;
}

/// Y = X [M, K] * W^T through packedMatMul with kernel set k on a 2-thread pool (outside a session).
inline std::vector<float> runPacked(const crt::detail::Kernels& k, const crt::detail::PackedWeight& w,
                                    const std::vector<float>& x, int64_t M) {
  using namespace crt::detail;
  static ThreadPool pool(2);
  HeapAlloc alloc;
  Node node;
  node.op = "MatMul";
  std::vector<Buf> vals(1);
  RunEnv env{nullptr, vals.data(), &alloc, &pool, &k, 0};
  OpCtx c{env, node};
  std::vector<float> y(M * w.N, -1.f);
  packedMatMul(c, w, x.data(), M, y.data());
  return y;
}

}  // namespace testutil
