// kernels.h — the compute kernels behind MatMul, chosen once per process by CPU features: AVX-512,
// AVX2+FMA+F16C, or portable scalar code. Every kernel is tested against the scalar reference
// (tests/runtime/kernels_test.cpp).
#pragma once

#include <cstdint>

namespace crt::detail {

struct PackedWeight;
struct Int8Acts;

/// How a KV cache head's rows are stored, for Kernels::kv_dot / kv_axpy.
enum KvRowKind : int { kKvRowsF32 = 0, kKvRowsF16 = 1, kKvRowsI8 = 2 };
/// Element i of such rows as a float (int8: before its row's scale): the scalar kernels' read and the SIMD ones' tails.
float kvRowValue(const void* rows, int kind, int64_t i);

/// The activation rows of a panel GEMM: X row-major (row stride ldx) and, where the caller made them (tileRows, for a
/// kernel set with Kernels::tile_rows = R > 0), its whole tiles of R rows again, k-major: tiled + t * R * K holds rows
/// [t * R, t * R + R) as [K][R], for t < M / R. A tile's broadcasts then read one stream instead of R rows apart (the
/// AVX-512 GEMM 5-8% faster); the rows past the last whole tile are read from x.
struct PanelRows {
  const float* x = nullptr;
  int64_t ldx = 0;
  const float* tiled = nullptr;
};
/// Tiles [t0, t1) of R rows of X (row stride ldx, K values each) into PanelRows::tiled's layout.
void tileRows(const float* X, int64_t ldx, int64_t K, int R, int64_t t0, int64_t t1, float* tiled);
/// The floats of the buffer (`buf`) that Kernels::sparse_gemm_panels and converting_gemm_panels need for w: K * kPanel
/// (one fp32 panel), or for the pairs layout (runtime/sparse.h) its groups' 4 k each and 64 bytes more (its GEMM keeps
/// a panel's fp32 planes and 64-byte aligned pick vectors there).
int64_t panelBufferFloats(const PackedWeight& w);

struct Kernels {
  const char* isa = "scalar";
  /// Y[m, n] (row stride ldy) = sum_k X[m, k] * W[n, k] for m < M, n in [n0, n1). W row-major [N, K].
  void (*gemm_nt)(int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx, const float* W, int64_t ldw,
                  float* Y, int64_t ldy) = nullptr;
  /// Y[m, n] = sum_k X[m, k] * B[k, n]. B row-major [K, N].
  void (*gemm_nn)(int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx, const float* B, int64_t ldb,
                  float* Y, int64_t ldy) = nullptr;
  /// One activation row against packed rows [n0, n1): y[n] = dot(x, W[n]). x is padded as the weight
  /// needs (Q8/Q4: nblk * P values, zero padded), xsum holds the per-block sums of x (Q8/Q4 only).
  void (*gemv)(const PackedWeight& w, const float* x, const float* xsum, int64_t n0, int64_t n1, float* y) = nullptr;
  /// Dequantizes/converts packed rows [n0, n1) to fp32, row stride ldp (>= padded K), padding as zeros.
  void (*unpack_rows)(const PackedWeight& w, int64_t n0, int64_t n1, float* panel, int64_t ldp) = nullptr;
  /// Y[m, p*kPanel + j] = sum_k X[m, k] * panels[p][k][j] for panels p in [p0, p1), m < M, columns < N: the same
  /// bits whether X has its tiled rows or not.
  void (*gemm_panels)(const PanelRows& X, int64_t M, const float* panels, int64_t K, int64_t p0, int64_t p1, float* Y,
                      int64_t ldy, int64_t N) = nullptr;
  /// The tile height R of PanelRows::tiled that the panel GEMMs read (0: they read X.x only).
  int tile_rows = 0;
  /// Whether sparse_gemm_panels / converting_gemm_panels read PanelRows::tiled too: not where the tile that converts a
  /// panel takes fewer rows than R (AVX2: 2), which leaves the other tiles off the tiled rows' grid.
  bool converting_reads_tiled = false;
  /// The sparse form (runtime/sparse.h), bit-identical to the dense kernels above: sparse_gemv as gemv;
  /// sparse_unpack_rows as unpack_rows for Q8/Q4; sparse_gemm_panels as gemm_panels for an F32 weight's panels
  /// [p0, p1), expanding one panel at a time into buf (panelBufferFloats).
  void (*sparse_gemv)(const PackedWeight& w, const float* x, const float* xsum, int64_t n0, int64_t n1,
                      float* y) = nullptr;
  void (*sparse_unpack_rows)(const PackedWeight& w, int64_t n0, int64_t n1, float* panel, int64_t ldp) = nullptr;
  void (*sparse_gemm_panels)(const PackedWeight& w, const PanelRows& X, int64_t M, int64_t p0, int64_t p1, float* buf,
                             float* Y, int64_t ldy, int64_t N) = nullptr;
  /// gemm_panels for a Q8P / Q4P / F16P weight (internal.h), converting one panel at a time into buf
  /// (panelBufferFloats); null where the kernel set has no panel-ordered kernels (then choosePanelForms keeps rows). gemv takes
  /// the panel-ordered kinds where this is set.
  void (*converting_gemm_panels)(const PackedWeight& w, const PanelRows& X, int64_t M, int64_t p0, int64_t p1, float* buf,
                                 float* Y, int64_t ldy, int64_t N) = nullptr;
  /// Per PackedWeight::Kind, the largest nonzero fraction at which these kernels run the sparse form faster
  /// than the dense one (decode GEMV; bench/sparse.sh measures it); 0: SparseMode::Auto never picks it.
  float sparse_crossover[7] = {};
  /// The same for Q8/Q4 weights with int8 activations (gemm_i8_sparse against gemm_i8), per kind.
  float sparse_crossover_i8[7] = {};
  /// Q8/Q4 rows [n0, n1) against activation rows quantized to int8 (runtime/int8_acts.h, laid out for
  /// i8_width lanes): Y[m * ldy + n] for m < a.M. Integer dot products; null where the CPU has no such kernel.
  void (*gemm_i8)(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) = nullptr;
  /// gemm_i8 for a weight in the sparse form (bit-identical to it on the dense form); null: sparse weights keep
  /// exact compute with these kernels.
  void (*gemm_i8_sparse)(const PackedWeight& w, const Int8Acts& a, int64_t n0, int64_t n1, float* Y, int64_t ldy) = nullptr;
  int i8_width = 16;
  /// quantizeInt8Chunk with SIMD, bit-identical (runtime/int8_acts.h); null: the portable one.
  void (*quantize_i8)(const float* x, int n, int8_t* v, float* d, int* sum) = nullptr;
  /// quantizeInt8ChunkScaled with SIMD, bit-identical; null: the portable one.
  void (*quantize_i8_scaled)(const float* x, int n, float s, int8_t* v, int* sum) = nullptr;
  const char* i8_isa = "scalar";  // which integer dot product gemm_i8 uses ("avx512-amx", "avx512-vnni", "avx2", "scalar")
  /// Softmax over each of `rows` contiguous rows of length n (y may equal x).
  void (*softmax)(const float* x, float* y, int64_t rows, int64_t n) = nullptr;
  /// y = 1 / (1 + exp(-x)), n values.
  void (*sigmoid)(const float* x, float* y, int64_t n) = nullptr;
  /// A decode step's attention over one head of the in-session KV cache (runtime/kv_cache.h), straight from its rows
  /// (T rows of D values stored as `kind`, a KvRowKind: int8 with scales[t]): kv_dot y[t] = q . row t (int8:
  /// times scales[t]); kv_axpy y[d] = sum over t of p[t] * row t [d] (int8: p[t] * scales[t]). Each kind is read
  /// where it lies, a quarter of fp32's bytes for int8, instead of being converted to fp32 first.
  void (*kv_dot)(const float* q, const void* rows, const float* scales, int kind, int64_t T, int64_t D, float* y) = nullptr;
  void (*kv_axpy)(const float* p, const void* rows, const float* scales, int kind, int64_t T, int64_t D, float* y) = nullptr;
  /// fp16 <-> fp32 conversion of n values (round to nearest even), for the fp16 KV cache.
  void (*half_to_float)(const uint16_t* x, float* y, int64_t n) = nullptr;
  void (*float_to_half)(const float* x, uint16_t* y, int64_t n) = nullptr;
};

/// The best kernel set this CPU supports (or the scalar one when simd is false).
const Kernels& kernelsFor(bool simd);
const Kernels& scalarKernels();
const Kernels* avx2Kernels();    // nullptr when not compiled in or not supported by the CPU
const Kernels* avx512Kernels();
const Kernels* amxKernels();     // avx512Kernels with AMX int8 tiles for int8-activation prefill; nullptr without AMX

}  // namespace crt::detail
