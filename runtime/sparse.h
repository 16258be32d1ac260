// sparse.h — the sparse form of a packed MatMul weight, so that a pruned model reads fewer bytes per token.
//
// Layout: the elements of the dense packed layout (matmul.h's PackedWeight) in their stored order, cut into
// 32-element chunks; per chunk a 32-bit mask (bit i set: element i is stored) and the stored elements packed in
// order. A clear bit is an exact zero of the weight: ±0.0f for F32 (expanded as +0.0, so at most the sign of an
// exactly-zero output can differ from the dense form), the block's zero point for Q8/Q4 (and the block padding). The dense layouts' chunks are:
//   F32: panel p, column block of kPanel = 32 outputs, one chunk per k: values float32; the mask words of
//   kMaskGroup consecutive panels interleaved by k (f32MaskIndex), so that the GEMV, which walks that many panels
//   at once, reads their masks as one stream (Zen 5: 3% faster than a stream per panel).
//   Q8/Q4: row n, its nblk*P stored elements: mask word n*(nblk*P/32) + c, values one byte each (Q8) or one
//   nibble each (Q4; two per byte, low nibble first, every chunk starting at a byte).
// N:M patterns use the same form for Q8/Q4 (a 2:4 chunk's mask costs 4 bits per 4 weights, what two 2-bit indices
// cost). An F32 weight with at most 2 nonzeros in every 4 consecutive k of each output (2:4 along K, as the pruning
// passes write it) takes the pairs layout instead (SparseForm::pairs), whose GEMV needs no expansion at all:
//   F32 pairs: panel p, group g of 4 k (the last one padded with zeros): values [g][2][kPanel] floats, plane a the
//   first nonzero of each output's group (or 0), plane b the second (or 0); mask words [p][g][kPanel / 8], lane j's
//   nibble at bits 4 * (j % 8) of word j / 8: bits 0-1 the k within the group of plane a's value, bits 2-3 plane b's
//   (pairIndex). The GEMV picks x[4g + index] for each lane with an in-lane permute of the group's 4 activations
//   (vpermilps) and does two FMAs per 4 k: the dense kernel's products in its order, skipping the zero ones.
//   Q8 pairs: a per-channel int8 weight whose values less their zero points fit signed bytes (every symmetric int8
//   file) and are 2:4 as above is stored as a centered Q8P weight (internal.h: kind Q8P, its scales and zero points
//   of 0 per panel) whose [p][K][kPanel] bytes take this layout with signed bytes for floats, 2.5 bytes per 4 k
//   instead of 4. Its GEMV converts the planes and sums as the F32 one, then applies the scale as the dense Q8P GEMV;
//   its GEMM dequantizes each panel's planes as the dense Q8P reader does, then runs the F32 pairs tiles.
//   Q4 pairs: an int4 weight (per channel or in blocks of a multiple of 32) with integral zero points that is 2:4 as
//   above is a centered Q4P weight (internal.h: its kernels take each nibble less its block's zero point) whose
//   values per panel are [g][kPanel] bytes, byte j holding plane a's value of output j in its low nibble and plane
//   b's in its high one, as stored (an empty slot holds the zero point: a value of 0), 1.5 bytes per 4 k instead of
//   2. Its GEMV takes the nibbles less the zero points as the dense Q4P reader does and applies each block's scale
//   once per block; its GEMM dequantizes each panel's planes as the dense reader does, then the F32 pairs tiles.
//   Q4 for int8 activations (int8Lanes): a Q4 weight that takes int8 activations (runtime/int8_acts.h) where the kernel
//   set has a sparse int8 kernel stores row n's elements in the order the 16-lane int8 kernels' steps read them: per
//   step of 4 chunks the low register (values 0-15 of each chunk in turn), then the high one (values 16-31), each a
//   64-element unit (int8LanesElement); a row has 2 * ceil(chunks / 4) units, their positions past the row's chunks
//   clear. Unit u's mask is words 2u (positions 0-31) and 2u + 1 (32-63) of the row's. A step's stored values take
//   max(low count, high count) bytes: byte i holds the low unit's i-th stored value in its low nibble and the high
//   unit's i-th in its high nibble (0 past a unit's count), so one load and two masks give both units' packed
//   values as bytes, and each unit expands into its step register with a single vpexpandb over the chunks' zero
//   points (the exact kernels never see this form).
// The kernels (kernels_simd.inc) expand a chunk in registers and then do the dense kernels' arithmetic in the
// same order, so the sparse form gives bit-identical results (tests/runtime/sparse_test.cpp; for F32 up to the
// sign of zero, and for the pairs layout with finite activations: a skipped zero weight times an infinite activation
// is no NaN).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/internal.h"

namespace crt::detail {

struct Kernels;

struct SparseForm {
  std::vector<uint32_t> mask;  // one word per 32-element chunk of the dense layout (pairs: the index words)
  std::vector<int64_t> start;  // F32: per panel, Q8/Q4: per row, and one past the end: byte offset into values
  AlignedBytes values;         // the stored elements; kSparsePad readable bytes past the last one
  int64_t stored = 0;          // elements stored (nonzero: for pairs, the padding zeros of the planes not counted)
  int64_t elements = 0;        // elements of the dense layout (with padding)
  bool pairs = false;          // F32, centered Q8P or Q4P: the pairs layout instead of masks and packed values
  bool int8Lanes = false;      // Q4 for int8 activations: the int8 kernels' register order (above)
  int64_t bytes() const {
    return static_cast<int64_t>(mask.size() * 4 + start.size() * 8) + start.back();
  }
};

constexpr int64_t kSparsePad = 64;  // kernels load whole vectors past a chunk's last value

/// Panels whose F32 mask words are interleaved (the sparse GEMV's group), and where panel p's word for row k is
/// (the last group padded with zero words).
constexpr int64_t kMaskGroup = 4;
inline int64_t f32MaskIndex(int64_t p, int64_t k, int64_t K) {
  return ((p / kMaskGroup) * K + k) * kMaskGroup + p % kMaskGroup;
}

/// The pairs layout: k in groups of kPairGroup, kPairSlots values per output and group.
constexpr int64_t kPairGroup = 4, kPairSlots = 2;
inline int64_t pairGroups(int64_t K) { return (K + kPairGroup - 1) / kPairGroup; }
/// Groups of a block of a quantized weight in the pairs layout (one block per output: all of them).
inline int64_t pairGroupsPerBlock(const PackedWeight& w) { return w.nblk == 1 ? pairGroups(w.K) : w.block / kPairGroup; }
/// Index word of panel p, group g, lanes [8i, 8i + 8).
inline int64_t pairIndex(int64_t p, int64_t g, int64_t i, int64_t K) {
  return (p * pairGroups(K) + g) * (kPanel / 8) + i;
}

/// The int8-lanes layout (Q4 with int8 activations): chunks per step of the 16-lane int8 kernels, units (64-element
/// halves of a step) per row, and the element of the dense row that position t (< 64) of unit u holds.
constexpr int64_t kInt8LanesWidth = 16, kInt8LanesStepChunks = 4;
inline int64_t int8LanesUnits(int64_t chunks) { return 2 * ((chunks + kInt8LanesStepChunks - 1) / kInt8LanesStepChunks); }
inline int64_t int8LanesElement(int64_t u, int64_t t) {
  return (kInt8LanesStepChunks * (u / 2) + t / 16) * 32 + t % 16 + 16 * (u % 2);
}

/// The set bits of a mask, through the popcnt instruction where the build has it (the SIMD kernel files): GCC's
/// builtin clears the destination before each popcnt (an instruction per chunk in loops bound by their count), and
/// for a mask known to fit 16 bits emits the 16-bit form, whose partial-register write chains every popcount of a
/// loop together. The count is 64-bit, ready to add to a pointer.
inline uint64_t popcount64(uint64_t m) {
#if defined(__POPCNT__)
  uint64_t c;
  __asm__("popcnt %1, %0" : "=r"(c) : "rm"(m));
  return c;
#else
  return static_cast<uint64_t>(__builtin_popcountll(m));
#endif
}

/// Every zero point of a Q8/Q4 weight is an integer a stored element can equal, so "element == zero point" is an exact
/// zero.
bool zeroPointsRepresentable(const PackedWeight& w);
/// Nonzeros of a Q8 weight per channel or a Q4 weight still in rows (a nonzero: a stored value other than its block's
/// zero point) when it is 2:4 along K and fills the pairs layout's slots (three quarters at least); else -1. Stops at
/// the first group of 4 k with 3 nonzeros.
int64_t rowPairsNonzeros(const PackedWeight& w);
/// Fraction of the weight's elements that are nonzero (1.0 for F16 and for layouts without a sparse form).
double storedFraction(const PackedWeight& w);
/// The sparse form of a dense packed weight, or null when it has none: F16, or a Q8/Q4 zero point that is
/// not a representable integer (a weight element equal to it would not be an exact zero).
std::shared_ptr<const SparseForm> makeSparse(const PackedWeight& w);
/// The int8-lanes form of a dense Q4 weight (above), or null when its zero points are not representable.
std::shared_ptr<const SparseForm> makeSparseInt8Lanes(const PackedWeight& w);
/// Converts back: unit u (F32: panel, [K][kPanel] floats; Q8/Q4: row, rowBytes() bytes in the dense layout).
void sparseToDense(const PackedWeight& w, int64_t u, void* dst);

/// Per weight at load (SessionOptions::sparse): Auto keeps the sparse form where the weight's nonzero fraction is
/// at most the kernel set's measured crossover for its kind and the dense weight is at least 1 MiB; On
/// wherever a form exists and the weight has any zero; Off never. Returns the number of weights converted.
/// Weights that will take int8 activations (`int8`, runtime/int8_acts.h) are judged by Kernels::sparse_crossover_i8;
/// an int4 one takes the int8-lanes form where those kernels will run it (k has gemm_i8_sparse, 16 lanes, and the
/// weight's parameters fit fp16 scales and byte zero points).
/// A 2:4 int8 weight per channel or int4 weight with exact compute takes the Q8 / Q4 pairs layout (panelized and
/// centered here) where the kernel set has panel kernels (Kernels::converting_gemm_panels).
/// Auto considers weights of 1 MiB and more when the model's packed weights fit in `cacheBytes` (-1: this core's
/// last-level cache), and of 64 KiB and more when they do not (then every weight streams from memory); fp32 weights
/// that take the pairs layout (2:4) at every size. With a pool, the weights are converted over its threads.
int chooseSparseForms(Graph& g, SparseMode mode, const Kernels& k, Int8Activations int8 = Int8Activations::Off,
                      int64_t cacheBytes = -1, ThreadPool* pool = nullptr);

/// Expansion tables of the SIMD kernels: for an 8-bit mask m, lanes[m][i] is the index of lane i's value in the
/// packed input (-1 when bit i is clear), bytes[m] the same as pshufb indices (0x80 when clear).
struct alignas(64) ExpandTables {
  int32_t lanes[256][8];
  uint64_t bytes[256];
};
const ExpandTables& expandTables();

}  // namespace crt::detail
