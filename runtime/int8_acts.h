// int8_acts.h — activations quantized to int8 for integer dot products with Q8/Q4 weights (MatMulNBits'
// accuracy_level 4, as ONNX Runtime and llama.cpp's Q8_0 activations do).
//
// Each activation row is cut into the weight's 32-value chunks (the padded block layout of PackedWeight: chunk c
// is values [32*(c % cpb), +32) of block c / cpb, cpb = P / 32); per chunk d = max|x| / 127 and q = round(x / d)
// in [-127, 127]. The weight side stays as packed (unsigned values u, zero point z, scale s per block), so
//   y = sum_b s_b * sum_{c in b} d_c * dot(u_c, q_c)  -  sum_b s_b * z_b * bq_b,   bq_b = sum_{c in b} d_c * sum(q_c)
// where dot(u_c, q_c) is an exact integer (u8 x s8: VNNI vpdpbusd, AVX2 maddubs). Using sum(q_c) rather than the
// exact sum of x keeps the error that of (u - z) * q, i.e. of the centred weight. The scales s are kept in fp16 (fp32
// for per-channel weights, whose 2^-11 term below is then 0) and the zero points z in bytes (enableInt8). The error
// against exact fp32 compute is bounded per output by
//   sum_c (d_c / 2) * sum_{j in c} |s (u_j - z)|  +  2^-11 * sum_j |s (u_j - z) x_j|   (+ float rounding)
// (activation rounding, then the fp16 scale; tests/runtime/int8_acts_test.cpp).
//
// Layout, for a kernel whose int32 vector has W lanes (a register of 4W bytes) — one "step" reads one register of
// weight bytes (Q4: G = W/4 chunks, Q8: W/8 chunks), so a row of R weight bytes takes S = ceil(R / 4W) steps:
//   Q8: q in natural order, 4W bytes per step; the dot's lanes 8i..8i+7 belong to the step's chunk i.
//   Q4: per step two registers: values 0-15 of the step's G chunks in order, then values 16-31 (the low and the
//       high nibbles of the G * 16 packed bytes); the dot's lanes 4i..4i+3 belong to the step's chunk i.
//   scales: d_c repeated for each of the chunk's lanes (8 for Q8, 4 for Q4): W floats per step, lane for lane.
// Padding (past the row's last chunk up to whole steps) is zero, so the kernels read whole registers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "runtime/internal.h"

namespace crt::detail {

/// Lanes of the int32 dot per 32-value chunk (see the layout above).
inline int int8LanesPerChunk(PackedWeight::Kind k) { return k == PackedWeight::Q4 ? 4 : 8; }
/// Chunks (of 32 values) in one packed weight row.
inline int64_t int8Chunks(const PackedWeight& w) { return w.nblk * w.P / 32; }
/// Steps of a W-lane kernel over one packed row (one register of 4W weight bytes each).
inline int64_t int8Steps(const PackedWeight& w, int W) { return (w.rowBytes() + 4 * W - 1) / (4 * W); }
/// Activation bytes per step: Q4 two registers (low and high nibbles' values), Q8 one.
inline int64_t int8StepBytes(PackedWeight::Kind k, int W) { return (k == PackedWeight::Q4 ? 8 : 4) * W; }
/// Offset in a row's activation bytes of value j (< 32) of chunk c.
inline int64_t int8ActIndex(PackedWeight::Kind k, int W, int64_t c, int j) {
  if (k == PackedWeight::Q8) return c * 32 + j;
  const int64_t G = W / 4, s = c / G, i = c % G;
  return s * 8 * W + (j < 16 ? 0 : 4 * W) + i * 16 + (j & 15);
}

/// How a kernel finds the weight scale of each dot lane: one per row (per-channel), one per step (blocks span
/// whole steps), or W / lanes-per-block consecutive blocks per step (small blocks); other block sizes have no
/// int8 path (Unsupported).
enum class Int8ScaleMode { Row, PerStep, Permute, Unsupported };
inline Int8ScaleMode int8ScaleMode(const PackedWeight& w, int W) {
  if (w.nblk == 1) return Int8ScaleMode::Row;
  const int64_t lanesPerBlock = (w.P / 32) * int8LanesPerChunk(w.kind);
  if (lanesPerBlock % W == 0) return Int8ScaleMode::PerStep;
  if (W % lanesPerBlock == 0) return Int8ScaleMode::Permute;
  return Int8ScaleMode::Unsupported;
}

/// M activation rows quantized for one weight and one kernel width (scratch memory owned by the caller).
struct Int8Acts {
  int W = 16;
  int64_t M = 0, steps = 0, stepBytes = 0, nblk = 1;
  int64_t bqStride = 16;  // nblk rounded up to 16, the padding zero: the kernels' zero-point sums read whole vectors
  bool rowScale = false;  // every chunk of a row has the same d (the model's QuantizeLinear scale): kernels may sum
                          // a per-channel weight's dot products as integers over the whole row (int8RowSumsFitInt32)
  int8_t* q = nullptr;   // [M][steps * stepBytes]
  float* d = nullptr;    // [M][steps * W], the lane-expanded chunk scales
  float* bq = nullptr;   // [M][bqStride]: per weight block, sum over its chunks of d_c * sum(q_c)
  uint8_t* min128 = nullptr;  // [M]: row m holds a -128 (only QuantizeLinear's saturation gives one; the chunk
                              // quantizer stays within +-127), which keeps it off the shifted Q8 form (kernels_int8.inc);
                              // written by the quantizers below with each row
  const int8_t* qRow(int64_t m) const { return q + m * steps * stepBytes; }
  const float* dRow(int64_t m) const { return d + m * steps * W; }
  const float* bqRow(int64_t m) const { return bq + m * bqStride; }
  /// Whether rows [m, m + n) hold no -128.
  bool noMin128(int64_t m, int64_t n) const {
    for (int64_t i = m; i < m + n; ++i)
      if (min128[i]) return false;
    return true;
  }
};

/// Chunks of 32 products of at most 255 * 128 whose sum an int32 holds (2056 * 32 * 32640 < 2^31): the longest row
/// (65792 values) whose dot products a kernel may sum as integers. Every such kernel ends in one int32 per output,
/// whether its lanes hold the whole row (gemmInt8Vnni, gemmPairs16) or a share of it that a horizontal sum adds up
/// (tileInt8Integer): the bound is on the row, not on a lane.
constexpr int64_t kInt8RowIntegerChunks = 2056;
/// Whether a per-channel weight's rows are short enough for integer sums over the whole row (kInt8RowIntegerChunks).
inline bool int8RowSumsFitInt32(const PackedWeight& w) { return w.nblk == 1 && int8Chunks(w) <= kInt8RowIntegerChunks; }

/// MatMulNBits' accuracy_level that asks for int8 activations (ONNX Runtime's "int8 compute").
constexpr int64_t kInt8AccuracyLevel = 4;

/// Bytes of scratch that M quantized rows need (q, d, bq and min128, each 64-byte aligned).
int64_t int8ActsBytes(const PackedWeight& w, int W, int64_t M);
/// The view of M rows laid out in `mem` (int8ActsBytes of it); nothing is written.
Int8Acts int8ActsView(const PackedWeight& w, int W, int64_t M, void* mem);
/// One chunk: n <= 32 values x into v[32] (zero past n), d = max|x| / 127 (NaN when x holds one), sum of v. The
/// portable definition; Kernels::quantize_i8 gives the same bits with SIMD.
void quantizeInt8Chunk(const float* x, int n, int8_t* v, float* d, int* sum);
/// 1 / d, or 0 for a chunk of zeros, of denormals (1 / d would overflow) or with a NaN or infinity (d not finite).
inline float int8InverseScale(float d) {
  return d >= std::numeric_limits<float>::min() && d <= std::numeric_limits<float>::max() ? 1.f / d : 0.f;
}
using Int8ChunkFn = void (*)(const float* x, int n, int8_t* v, float* d, int* sum);
/// Quantizes rows [m0, m1) of X [M, K] (row stride K) into the view (padding included), chunk by chunk with
/// `chunk` (null: quantizeInt8Chunk).
void quantizeInt8Rows(const PackedWeight& w, const Int8Acts& a, const float* X, int64_t m0, int64_t m1,
                      Int8ChunkFn chunk = nullptr);
/// Both of the above for all M rows.
Int8Acts quantizeInt8Acts(const PackedWeight& w, int W, const float* X, int64_t M, void* mem);

/// One value as ONNX QuantizeLinear makes it for int8 with zero point 0: x / s (a division, not a multiplication
/// by 1 / s), NaN -> 0, saturated to [-128, 127], rounded half to even.
inline int8_t quantizeLinearInt8(float x, float s) {
  float r = x / s;
  r = r != r ? 0.f : std::clamp(r, -128.f, 127.f);  // (clamping to integers before rounding changes nothing)
  return static_cast<int8_t>(std::nearbyint(r));
}

/// One chunk quantized as ONNX QuantizeLinear does with zero point 0: n <= 32 values x into v[32] (zero past n),
/// v = saturate(round_half_even(x / s)) in [-128, 127] (the division, not a multiplication by 1 / s; NaN -> 0), and
/// the sum of v. The portable definition; Kernels::quantize_i8_scaled gives the same bits with SIMD.
void quantizeInt8ChunkScaled(const float* x, int n, float s, int8_t* v, int* sum);
using Int8ScaledChunkFn = void (*)(const float* x, int n, float s, int8_t* v, int* sum);
/// Rows [m0, m1) of X quantized chunk by chunk with `chunk` (null: quantizeInt8ChunkScaled) with s = scale[m * stride]
/// (stride 0: one scale for every row); every chunk's d is s.
void quantizeInt8RowsScaled(const PackedWeight& w, const Int8Acts& a, const float* X, int64_t m0, int64_t m1,
                            const float* scale, int64_t stride, Int8ScaledChunkFn chunk = nullptr);

/// The scale of block b of row n of an int8-enabled weight: fp32 for a per-channel weight, else the fp16 one, converted
/// by `half` (a kernel set passes its one-instruction conversion).
template <typename Half>
inline float int8WeightScale(const PackedWeight& w, int64_t n, int64_t b, Half half) {
  return w.nblk == 1 ? w.scale[n] : half(w.scale16[n * w.nblk + b]);
}
inline float int8WeightScale(const PackedWeight& w, int64_t n, int64_t b) { return int8WeightScale(w, n, b, halfToFloat); }

/// True when w's scales and zero points fit the compact int8 form (enableInt8 would succeed).
bool int8ParamsFit(const PackedWeight& w);
/// Switches w to int8 activations: its scales become fp16 (as llama.cpp's Q4_0/Q8_0 store them; relative change at
/// most 2^-11, inside the bound below) and its zero points bytes, replacing the fp32 parameters (3 bytes per block
/// instead of 8, the bytes a decode step reads). A per-channel weight (one block per row) keeps its fp32 scales too
/// (N floats, read once per row): its kernels use them, so they carry no fp16 error. False, and w unchanged, when a scale is outside fp16's normal
/// range or a zero point is not an integer in [0, 255] (w then keeps exact compute).
bool enableInt8(PackedWeight& w);

struct Kernels;
/// True when kernel set k has an int8 path for w: a dense Q8/Q4 weight whose block size tiles k's vectors.
bool int8Capable(const PackedWeight& w, const Kernels& k);
/// Whether node n asks for int8 activations under `mode` (On: every node; Model: MatMulNBits with accuracy_level 4,
/// and MatMuls whose input the model quantizes, fuseQuantizedInputs).
bool int8Asked(const Node& n, Int8Activations mode);
/// Activations the model quantizes itself (SmoothQuant's W8A8: QuantizeLinear(x, s[, z]) -> DequantizeLinear(q, s[, z])
/// -> MatMul on a packed Q8/Q4 weight), to int8 with zero point 0 (or uint8 with 128: the same integers), with s one
/// scale per tensor or per row (opset 21's block_size >= K along the last axis): the MatMul reads x and s itself
/// (Node::act_quant) and quantizes x as QuantizeLinear does, so its kernels meet the integers ONNX Runtime's do. The
/// weight's scales become fp16 (enableInt8). Not done under Off, or where the kernels have no int8 path for the
/// weight (the nodes then run as they are). Returns the number of MatMuls fused; prune and re-prepare after.
int fuseQuantizedInputs(Graph& g, Int8Activations mode, const Kernels& k);

/// Per weight at load (SessionOptions::int8_activations): Model marks the MatMulNBits nodes whose accuracy_level
/// is 4, On every capable Q8/Q4 weight, Off none. Runs after the sparse choice (sparse weights stay exact).
/// Returns the number of weights marked.
int chooseInt8Activations(Graph& g, Int8Activations mode, const Kernels& k);

}  // namespace crt::detail
