// cuda_backend.h — the CUDA backend's entry points, for host code (no CUDA headers): cuda_backend.cu where
// CMake found a CUDA compiler, cuda_none.cpp elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace crt::detail {

class Backend;

/// The CUDA backend on GPU `index`. required: a Failure saying why it cannot run (a build without CUDA, no GPU, no
/// GPU of that index, a driver error); otherwise null in those cases (Device::Auto then runs on the CPU).
std::shared_ptr<Backend> makeCudaBackend(bool required, int index = 0);

/// Whether this build has the CUDA backend.
bool cudaCompiled();

/// GPUs that answer now (0 without CUDA in this build or without a driver/GPU); `why` says why none.
int cudaDeviceCount(std::string* why = nullptr);

/// Device-to-device copy bandwidth in GB/s ((read + write bytes) / time of a cudaMemcpy of `bytes`, best of 5):
/// what bench/cuda.sh rates the kernels against. -1 without a GPU.
double cudaCopyBandwidth(size_t bytes);

/// Free GPU memory in bytes (cudaMemGetInfo), or -1 without a GPU: the leak test's measure.
int64_t cudaFreeBytes();

}  // namespace crt::detail
