// Eigen fp32 GEMM, avx512 build (flags set in CMakeLists.txt).
#define Eigen Eigen_crt_avx512
#define CRT_GEMM_NS gemm_avx512
#include "runtime/gemm_eigen.inc"
