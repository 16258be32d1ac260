// host_setup.cpp — host_setup.h. OpenBLAS is reached through dlsym so that another BLAS (or none) links as well.
#include "compress/host_setup.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>

namespace compress {
namespace {

template <typename Fn>
Fn blasSymbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void setComputeThreads(int n) {
  if (n <= 0) return;
  at::set_num_threads(n);
  if (auto set = blasSymbol<void (*)(int)>("openblas_set_num_threads")) set(n);
}

int blasThreads() {
  auto get = blasSymbol<int (*)()>("openblas_get_num_threads");
  return get ? get() : -1;
}

void keepFreedMemory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace compress
