// Eigen fp32 GEMM, avx2 build (flags set in CMakeLists.txt).
#define Eigen Eigen_crt_avx2
#define CRT_GEMM_NS gemm_avx2
#include "runtime/gemm_eigen.inc"
