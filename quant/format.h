// format.h — weight quantization formats and their reference quantize/dequantize (the spec every
// quantizing pass, the exporter and the runtime must agree with).
//   symmetric:  q = clamp(round(w / s), -2^(b-1), 2^(b-1)-1), s = max|w| / (2^(b-1)-1), stored int8
//   asymmetric: q = clamp(round(w / s) + z, 0, 2^b-1), s = (max(w,0) - min(w,0)) / (2^b-1),
//               z = clamp(round(-min(w,0) / s), 0, 2^b-1), stored uint8
//   dequant:    w' = (q - z) * s, per output row (group_size = -1) or per row and block of group_size inputs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "compress/graph.h"

namespace compress {

struct QuantFormat {
  int32_t bits = 8;
  int32_t group_size = -1;  // -1: per output channel
  bool symmetric = true;
  bool fp16_scales = false;  // scale_dtype float16: scales rounded to fp16 normals inside the pass (stored as fp32
                             // values fp16 holds exactly, so crun's fp16 form of them is exact)
  char pad_[6] = {};
  std::string name() const;  // "int8", "int4-g32-asym", ...
};
static_assert(sizeof(QuantFormat) == 16, "QuantFormat is a plain 16-byte descriptor");

struct QuantizedTensor {
  QuantFormat format;
  at::Tensor qdata;        // [out, in] int8 (symmetric) or uint8 (asymmetric)
  at::Tensor scales;       // [out] (per channel) or [out, groups], float32
  at::Tensor zero_points;  // like scales, uint8; undefined when symmetric
};

/// Round-to-nearest quantization of a 2-D weight [out, in]; the reference for every format.
QuantizedTensor quantizeRtn(const at::Tensor& weight, const QuantFormat& f);
/// Scales and zero points for a given weight (the part GPTQ/AWQ reuse with their own rounding).
void computeScales(const at::Tensor& w, const QuantFormat& f, at::Tensor& scales, at::Tensor& zero_points);
/// The float weight a quantized tensor stands for.
at::Tensor dequantize(const QuantizedTensor& q);
/// Packs b-bit integers (offset to unsigned) into bytes, low bits first, row by row.
std::vector<uint8_t> packBits(const at::Tensor& qdata, int bits, bool symmetric);

class OptionReader;
/// Reads the format options every quantizing pass shares (bits, group_size, symmetric, scale_dtype) with the given
/// defaults, validating them in one place.
QuantFormat readFormatOptions(OptionReader& r, const QuantFormat& defaults);

/// The formats the project supports, one row each; tests loop over this table.
const std::vector<QuantFormat>& formatTable();

/// Replaces the float initializer `weight` with its quantized form: initializers <weight>.qdata,
/// <weight>.scale[, <weight>.zero_point] and a DequantizeLinear node producing `weight`.
void installQuantized(Graph& g, const std::string& weight, const QuantizedTensor& q, const std::string& method);
/// The quantized form of an installed weight.
QuantizedTensor quantizedOf(const Graph& g, const std::string& weight);

/// Reads weights an ONNX file stores quantized back into quant state: DequantizeLinear of integer
/// initializers (int8/uint8, or 4-bit ones listed in `four_bit`, unpacked one value per byte) with per-channel
/// or blocked scales, feeding a MatMul (as [in, out] or through a Transpose) or a Conv (directly or through a
/// Reshape of the [out, in·k] matrix) — what our export and ONNX Runtime's quantizer write — becomes a
/// quantized weight as the passes make it (QuantInfo method "onnx"; the same integers, so exact). Weights in
/// other forms stay as they are (their DequantizeLinear runs as an op). Run before
/// canonicalizeLinearLayout. Returns how many weights were read back.
int readBackQuantizedWeights(Graph& g, const std::set<std::string>& four_bit);

/// The float weights among a quantizing pass's targets (the others were quantized before: skipped). When
/// every target is already quantized — a quantized ONNX file as the model — throws Error(Config) saying so:
/// quantizing again would compound the rounding error of the first format.
std::vector<std::string> floatTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& weights);

}  // namespace compress
