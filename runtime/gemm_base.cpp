// Eigen fp32 GEMM, base build (flags set in CMakeLists.txt).
#define Eigen Eigen_crt_base
#define CRT_GEMM_NS gemm_base
#include "runtime/gemm_eigen.inc"
