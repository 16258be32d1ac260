// cuda_none.cpp — the CUDA entry points of a build without a CUDA compiler (cuda_backend.h).
#include "runtime/cuda/cuda_backend.h"

#include "runtime/backend.h"

namespace crt::detail {

std::shared_ptr<Backend> makeCudaBackend(bool required, int) {
  if (required)
    fail(StatusCode::InvalidArgument,
         "this build has no CUDA backend (CMake found no CUDA compiler when it was built): rebuild where nvcc is "
         "installed, or run on the CPU (--device cpu)");
  return nullptr;
}

bool cudaCompiled() { return false; }

int cudaDeviceCount(std::string* why) {
  if (why) *why = "this build has no CUDA backend (built without nvcc)";
  return 0;
}

int64_t cudaFreeBytes() { return -1; }
double cudaCopyBandwidth(size_t) { return -1; }

}  // namespace crt::detail
