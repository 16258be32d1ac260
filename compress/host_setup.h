// host_setup.h — how the host-side work (LibTorch's executor, the passes) uses the process: its thread pools
// and the heap. `compress` and the tests that run recipes set the process up the same way.
#pragma once

namespace compress {

/// Sets both thread pools the host work runs on: LibTorch's intra-op pool and the BLAS library's own pool
/// (OpenBLAS, when it is the BLAS loaded). A recipe's `threads: N` means N cores for both; without it each
/// pool keeps its default (one thread per core). OpenBLAS's idle threads spin for a while after every
/// multi-threaded call: on a small model they add no speed and take the other cores (docs/benchmarks.md).
void setComputeThreads(int n);

/// The BLAS library's thread count, or -1 when the loaded BLAS does not say (not OpenBLAS).
int blasThreads();

/// Activations of a few MiB are allocated and freed for every node; glibc would hand each one back to the
/// kernel (mmap/munmap) and fault it in again, which costs more system time than the math. Keeps them.
void keepFreedMemory();

}  // namespace compress
