// fuse.h — load-time fusion of two op chains every LLaMA-style export has, into one node each, with the chains'
// exact arithmetic (bit-identical results, fewer passes over the activations, fewer nodes per token):
//  - RMSNorm: Pow(x, 2) -> ReduceMean(last axis, keepdims) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .)
//    [-> Mul(., weight)]                                   => crt.RMSNorm(x[, weight]; eps)
//  - SwiGLU's gate: Sigmoid(g) -> Mul(g, .) -> Mul(., up)   => crt.SiluMul(g, up)
// Only float32 chains (known at load, backend.h's knownFloat32) whose intermediates nothing else reads are fused.
#pragma once

#include "runtime/internal.h"

namespace crt::detail {

/// Fuses every matching chain; returns the nodes fused. Run pruneUnused + prepareRuns after a non-zero result.
int fuseChains(Graph& g);

/// ReduceMean over the last axis only, keeping it (the axes attribute or a constant axes input of -1).
bool isLastAxisMean(const Graph& g, const Node& n);

void opRMSNorm(OpCtx& c);  // in = {x, weight (optional)}, attr eps: y = (x * 1/sqrt(mean(x^2) + eps)) * weight
void opSiluMul(OpCtx& c);  // in = {g, up}: y = (g * sigmoid(g)) * up, with broadcasting

}  // namespace crt::detail
