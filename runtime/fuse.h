// fuse.h — load-time fusion of the op chains LLaMA-style exports have, into one node each, with the chains'
// exact arithmetic (bit-identical results, fewer passes over the activations, fewer nodes per token):
//  - RMSNorm: Pow(x, 2) -> ReduceMean(last axis, keepdims) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .)
//    [-> Mul(., weight)]                                   => crt.RMSNorm(x[, weight]; eps)
//  - SwiGLU's gate: Sigmoid(g) -> Mul(g, .) -> Mul(., up)   => crt.SiluMul(g, up)
//  - RoPE on pairs (LLaMA's rotation of (t[2i], t[2i+1])): a = Slice(t, 0::2 on axis s), b = Slice(t, 1::2 on s);
//    Sub(Mul(a, cos), Mul(b, sin)), Add(Mul(a, sin), Mul(b, cos)); both Unsqueezed at k and Concatenated on k
//                                                          => crt.Rope(t, cos, sin; axis s, stack k)
//  - SmoothQuant's per-token activation scale: Abs(x) -> ReduceMax(last axis, keepdims) -> Div(c) -> Max(., floor)
//                                                          => crt.AbsMaxScale(x; divisor c, floor)
//  - attention's scaled, masked softmax: Div(scores, c) -> Add(., mask) -> Softmax(last axis)
//                                                          => crt.ScaleMaskSoftmax(scores, mask; divisor c)
//  - GELU: Mul(x, half) * Add(Erf(Div(x, div)), one)      (BERT, GPT-NeoX) or
//    Mul(x, half) * Add(Tanh(Mul(Add(x, Mul(Pow(x, p), c)), s)), one)   (GPT-2's NewGELU)
//                                                          => crt.Gelu(x; the constants, tanh 0/1)
//    The per-row scale only on the CPU (SmoothQuant's int8 MatMuls stay on the host; a device session runs that chain
//    node by node); the CUDA backend has kernels for the other five (ropeGeometry and scaleMaskGeometry below are
//    the checks and index maps both sides use).
//  - In device sessions, after those: every other chain of elementwise ops (backend.h's Binary and Unary ops) and
//    float32 <-> float16 Casts whose intermediates nothing else reads  => crt.Elementwise(inputs; a program of steps,
//    device_math.h's EwProgram), one kernel launch instead of one per op: an fp16 export's RMSNorm, RoPE and
//    activation arithmetic with their Casts. Its inputs may mix float32 and float16.
// Only float32 chains (known at load, backend.h's knownFloat32) whose intermediates nothing else reads are fused.
// fuse.cpp is compiled with -ffp-contract=off: a fused a*c - b*s must round both products, as the Mul nodes did.
#pragma once

#include "runtime/cuda/device_math.h"
#include "runtime/internal.h"

namespace crt::detail {

/// Fuses every matching chain (the per-row scale only when `cpuOnly`, the elementwise chains only when not); returns
/// the nodes fused. Run pruneUnused + prepareRuns after a non-zero result.
int fuseChains(Graph& g, bool cpuOnly = true);

/// Whether n is a fused node whose output has its first input's element type (backend.h's knownFloat32).
bool fusedKeepsType(const Node& n);
/// Whether n is a crt.Elementwise node (its output's type is its "type" attribute; its inputs are float32 or float16).
bool isElementwise(const Node& n);

/// in = up to 8 float32 / float16 tensors broadcast together, attrs steps (5 ints per step: kind, code, f16, a, b) and
/// type (the output's DType): device::ewEval per output element.
void opElementwise(OpCtx& c);
/// crt.Elementwise's program from its attributes, checked against its inputs (a ModelError naming the node otherwise).
device::EwProgram ewProgram(const OpCtx& c);
/// crt.Elementwise's broadcast over its inputs (each float32 or float16) and its output's shape.
device::BroadcastN ewBroadcast(OpCtx& c, Shape& out);

/// `op` (a reduction) over the last axis only, keeping it (the axes attribute or a constant axes input of -1).
bool isLastAxisReduce(const Graph& g, const Node& n, const char* op);
/// isLastAxisReduce for ReduceMean.
bool isLastAxisMean(const Graph& g, const Node& n);

void opRMSNorm(OpCtx& c);  // in = {x, weight (optional)}, attr eps: y = (x * 1/sqrt(mean(x^2) + eps)) * weight
void opSiluMul(OpCtx& c);  // in = {g, up}: y = (g * sigmoid(g)) * up, with broadcasting
void opFusedGelu(OpCtx& c);     // in = {x}: device::applyGelu per element (the chain's operations, in its order)
/// crt.Gelu's constants and form from its attributes (the CPU and CUDA kernels share device::applyGelu).
device::Gelu geluParams(const OpCtx& c);
/// in = {t, cos, sin}, attrs axis (s), stack (k): a / b = the even / odd elements of t along s, cos and sin broadcast
/// to a's shape; y = stack([a*cos - b*sin, a*sin + b*cos], axis k).
void opRope(OpCtx& c);
/// crt.Rope's output shape and index map (device_math.h), its inputs and attributes checked (a ModelError naming the
/// node otherwise).
struct RopeGeometry {
  Shape out;
  device::Rope r;
};
RopeGeometry ropeGeometry(OpCtx& c);
/// in = {x}, attrs divisor, floor: per row of x's last axis, max(max|x| / divisor, floor), the row's axis kept as 1.
void opAbsMaxScale(OpCtx& c);
/// in = {scores, mask}, attr divisor: softmax over the last axis of scores / divisor + mask (mask broadcast to scores).
void opScaleMaskSoftmax(OpCtx& c);
/// crt.ScaleMaskSoftmax's mask offsets per row of the scores (device_math.h), its inputs checked.
device::RowMask scaleMaskGeometry(OpCtx& c);
/// The offsets of a mask broadcast to `scores` per row (a DataError naming both shapes where it does not broadcast).
device::RowMask rowMask(OpCtx& c, const Shape& scores, const Shape& mask);

}  // namespace crt::detail
