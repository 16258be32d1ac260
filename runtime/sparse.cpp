// sparse.cpp — building the sparse form of packed weights at load, converting it back (the scalar kernels'
// reference path), the load-time choice per weight, and the SIMD kernels' expansion tables.
#include "runtime/sparse.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"
#include "runtime/matmul.h"
#include "runtime/thread_pool.h"

namespace crt::detail {
namespace {

constexpr int64_t kChunk = 32;  // elements per mask word
/// Auto leaves smaller weights dense when the model's weights fit in the last-level cache: they then stay in cache
/// from token to token, where the GEMV is compute-bound and expanding costs more than the bytes it saves
/// (stories260K's 64-wide layers: 0.10 -> 0.16 ms per token sparse). When they do not fit, every weight streams
/// from memory and the sparse form pays for the small ones too (the synthetic LLaMA's 48 attention projections of
/// 576 KiB in int8 with int8 activations: a 50%-sparse decode step 2.07-2.15 -> 1.96-2.00 ms with 1 thread).
constexpr int64_t kSparseMinBytes = int64_t{1} << 20;
constexpr int64_t kSparseStreamingMinBytes = int64_t{64} << 10;

/// This core's last-level cache in bytes (sysfs: the highest cache level of cpu0, the slice one core reaches;
/// sysconf would give the whole package's on a chip of several core complexes), or 32 MiB when it does not say.
int64_t lastLevelCacheBytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    int bestLevel = 0;
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      std::ifstream lf(dir + "level"), sf(dir + "size"), tf(dir + "type");
      int level = 0;
      std::string size, type;
      if (!(lf >> level) || !(sf >> size) || !(tf >> type) || type == "Instruction") continue;
      char* end = nullptr;
      const long long v = std::strtoll(size.c_str(), &end, 10);
      const int64_t unit = end && *end == 'K' ? 1024 : end && *end == 'M' ? 1024 * 1024 : 1;
      if (v > 0 && level > bestLevel) bestLevel = level, best = v * unit;
    }
    return best > 0 ? best : int64_t{32} << 20;
  }();
  return bytes;
}

/// The size from which auto considers a weight for the sparse form (kSparseMinBytes, or kSparseStreamingMinBytes when
/// the model's packed weights exceed the last-level cache).
int64_t sparseMinBytes(const Graph& g, int64_t cacheBytes) {
  int64_t total = 0;
  for (const Node& n : g.nodes)
    if (n.packed) total += n.packed->bytes();
  return total > (cacheBytes >= 0 ? cacheBytes : lastLevelCacheBytes()) ? kSparseStreamingMinBytes : kSparseMinBytes;
}

bool quantized(const PackedWeight& w) { return w.kind == PackedWeight::Q8 || w.kind == PackedWeight::Q4; }

/// Stored value of element e (< nblk * P) of a dense Q8/Q4 row.
int storedAt(const PackedWeight& w, const uint8_t* row, int64_t e) {
  if (w.kind == PackedWeight::Q8) return row[e];
  const uint8_t* chunk = row + (e / kChunk) * (kChunk / 2);
  const int c = static_cast<int>(e % kChunk);
  return c < 16 ? (chunk[c] & 0xF) : (chunk[c - 16] >> 4);
}

void setStored(const PackedWeight& w, uint8_t* row, int64_t e, int v) {
  if (w.kind == PackedWeight::Q8) {
    row[e] = static_cast<uint8_t>(v);
    return;
  }
  uint8_t* chunk = row + (e / kChunk) * (kChunk / 2);
  const int c = static_cast<int>(e % kChunk);
  if (c < 16) chunk[c] = static_cast<uint8_t>((chunk[c] & 0xF0) | (v & 0xF));
  else chunk[c - 16] = static_cast<uint8_t>((chunk[c - 16] & 0x0F) | ((v & 0xF) << 4));
}

}  // namespace

bool zeroPointsRepresentable(const PackedWeight& w) {
  const float top = w.kind == PackedWeight::Q8 ? 255.f : 15.f;
  for (float z : w.zp)
    if (!(z >= 0.f && z <= top && z == std::floor(z))) return false;
  return true;
}

namespace {

int64_t chunksPerRow(const PackedWeight& w) { return w.nblk * w.P / kChunk; }

/// Mask word of F32 panel pi, row k: bit j set where the weight is not ±0.0 (pruning by multiplication leaves
/// half its zeros negative).
uint32_t maskF32(const PackedWeight& w, int64_t pi, int64_t k) {
  const float* p = static_cast<const float*>(w.w.data()) + (pi * w.K + k) * kPanel;
  uint32_t m = 0;
#if defined(__SSE2__)
  for (int64_t j = 0; j < kPanel; j += 4)  // (a NaN is not equal to 0: set)
    m |= static_cast<uint32_t>(_mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps(p + j), _mm_setzero_ps()))) << j;
#else
  for (int64_t j = 0; j < kPanel; ++j) m |= static_cast<uint32_t>(p[j] != 0.f) << j;
#endif
  return m;
}

/// Mask word of chunk c of Q8/Q4 row n: bit i set where the element is stored, neither block padding nor an exact
/// zero (its block's zero point). A chunk lies in one block.
uint32_t maskQ(const PackedWeight& w, const uint8_t* row, int64_t n, int64_t c) {
  const int64_t cpb = w.P / kChunk, b = c / cpb, j0 = (c % cpb) * kChunk;
  const int64_t valid = std::min(w.block, w.K - b * w.block);
  const int z = static_cast<int>(w.zp[n * w.nblk + b]);
  uint32_t m = 0;
  for (int64_t i = 0; i < kChunk; ++i)
    m |= static_cast<uint32_t>(j0 + i < valid && storedAt(w, row, c * kChunk + i) != z) << i;
  return m;
}

/// Bytes the stored values of a chunk with mask m take (Q4: nibbles, each chunk starting at a byte).
int64_t chunkBytes(PackedWeight::Kind kind, uint32_t m) {
  const int64_t count = __builtin_popcount(m);
  return kind == PackedWeight::F32 ? 4 * count : kind == PackedWeight::Q8 ? count : (count + 1) / 2;
}

/// Writes the stored values of unit u (F32 panel, Q8/Q4 row) to dst, chunk by chunk, in element order. (F32 writing
/// every value and moving past the stored ones, branch-free, was slower: the 50% fp32 model's load 0.85 -> 0.95 s.)
void packUnit(const PackedWeight& w, const SparseForm& s, int64_t u, uint8_t* dst) {
  if (w.kind == PackedWeight::F32) {
    const float* p = static_cast<const float*>(w.w.data()) + u * w.K * kPanel;
    for (int64_t k = 0; k < w.K; ++k)
      for (uint32_t m = s.mask[f32MaskIndex(u, k, w.K)]; m; m &= m - 1, dst += 4) std::memcpy(dst, p + k * kPanel + __builtin_ctz(m), 4);
    return;
  }
  const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + u * w.rowBytes();
  const int64_t cpr = chunksPerRow(w);
  for (int64_t c = 0; c < cpr; ++c) {
    int count = 0;
    for (uint32_t m = s.mask[u * cpr + c]; m; m &= m - 1, ++count) {
      const int v = storedAt(w, row, c * kChunk + __builtin_ctz(m));
      if (w.kind == PackedWeight::Q8) *dst++ = static_cast<uint8_t>(v);
      else if (count % 2 == 0) *dst = static_cast<uint8_t>(v);
      else *dst++ |= static_cast<uint8_t>(v << 4);
    }
    if (w.kind == PackedWeight::Q4 && count % 2 == 1) ++dst;
  }
}

/// The fill the pairs layout needs: nz nonzeros fill at least three quarters of the slots of an N-output weight (a
/// sparser one reads fewer bytes as masks and values).
bool pairsFilled(int64_t nz, int64_t K, int64_t N) { return 4 * nz >= 3 * kPairSlots * pairGroups(K) * N; }

/// The [p][K][kPanel] values of a weight that can take the pairs layout: F32's floats, a centered Q8P's signed bytes.
template <typename T>
const T* panelValues(const PackedWeight& w) { return static_cast<const T*>(w.w.data()); }

/// Zero point of column j of panel p of a Q4P weight in block b (its zb bytes, internal.h).
int q4PanelZero(const PackedWeight& w, int64_t p, int64_t b, int64_t j) { return w.zp8[(p * w.nblk + b) * kPanel + j]; }

/// A centered Q4P weight's values less their zero points, as signed bytes in the [p][K][kPanel] order of the Q8P
/// panels (0 past N).
std::vector<int8_t> centeredQ4Values(const PackedWeight& w) {
  std::vector<int8_t> d(static_cast<size_t>(panelCount(w) * w.K * kPanel), 0);
  const uint8_t* rows = static_cast<const uint8_t*>(w.w.data());
  for (int64_t p = 0; p < panelCount(w); ++p)
    for (int64_t k = 0; k < w.K; ++k) {
      const uint8_t* z = &w.zp8[(p * w.nblk + (w.nblk == 1 ? 0 : k / w.block)) * kPanel];  // (q4PanelZero's row)
      const uint8_t* bytes = rows + (p * w.K + k) * (kPanel / 2);
      int8_t* out = &d[(p * w.K + k) * kPanel];
      for (int64_t j = 0; j < std::min(kPanel, w.N - p * kPanel); ++j)
        out[j] = static_cast<int8_t>((j < 16 ? bytes[j] & 0xF : bytes[j - 16] >> 4) - z[j]);
    }
  return d;
}

/// Nonzeros of weight w (T: its panel values) when every output has at most kPairSlots in each group of kPairGroup
/// consecutive k and they fill the slots (pairsFilled); else -1. Stops at the first group of 3 nonzeros.
template <typename T>
int64_t pairsNonzerosOf(const PackedWeight& w, const T* d) {
  int64_t nz = 0;
  for (int64_t p = 0; p < panelCount(w); ++p)
    for (int64_t k0 = 0; k0 < w.K; k0 += kPairGroup)
      for (int64_t j = 0; j < kPanel; ++j) {
        int64_t c = 0;
        for (int64_t k = k0; k < std::min(w.K, k0 + kPairGroup); ++k) c += d[(p * w.K + k) * kPanel + j] != T(0);
        if (c > kPairSlots) return -1;
        nz += c;
      }
  return pairsFilled(nz, w.K, w.N) ? nz : -1;
}

/// Whether w is a Q8 weight per channel or a Q4 weight these kernels could store as Q8 / Q4 pairs in the panel form
/// (sparse.h; it must also be centerable, and a Q4 weight's blocks must be whole groups of 4, which the panel form's
/// blocks of a multiple of 32 are); K of 4 or more, so that a panel's dequantized planes fit the GEMM's panel buffer.
bool quantPairsCandidate(const PackedWeight& w, const Kernels& k) {
  const bool q8 = w.kind == PackedWeight::Q8 && w.nblk == 1, q4 = w.kind == PackedWeight::Q4 && (w.nblk == 1 || w.block % 32 == 0);
  return (q8 || q4) && w.K >= kPairGroup && !w.int8 && !w.device && k.converting_gemm_panels;
}

/// pairsNonzerosOf for any weight: -1 for those without the pairs layout (sparse.h).
int64_t pairsNonzeros(const PackedWeight& w) {
  if (w.kind == PackedWeight::F32) return pairsNonzerosOf(w, panelValues<float>(w));
  if (w.kind == PackedWeight::Q8P && w.centered && w.K >= kPairGroup) return pairsNonzerosOf(w, panelValues<int8_t>(w));
  if (w.kind == PackedWeight::Q4P && w.centered && w.K >= kPairGroup) return pairsNonzerosOf(w, centeredQ4Values(w).data());
  return -1;
}

/// The pairs rule for one output and group of kPairGroup k (sparse.h), as a table over the group's nonzero bits (bit
/// r: value r differs from the blank): the values that differ go to the slots in k order (at most kPairSlots: the
/// callers checked), a missing one is the blank (row kPairGroup here), and the index nibble holds their rows (slot s
/// in bits 2s..2s+1, 0 for a missing one). A lookup instead of a loop over the group's values with a running slot
/// (each value's store waited on the last one's count: 27 ns per group, the 2:4 fp32 load's largest step).
struct PairPick {
  uint8_t row[kPairSlots];
  uint8_t nibble;
};
const std::array<PairPick, 16>& pairPicks() {
  static const std::array<PairPick, 16> picks = [] {
    std::array<PairPick, 16> t{};
    for (uint32_t bits = 0; bits < 16; ++bits) {
      PairPick& p = t[bits];
      p.row[0] = p.row[1] = kPairGroup;
      for (uint32_t r = 0, slot = 0; r < kPairGroup && slot < kPairSlots; ++r)
        if (bits >> r & 1u) p.row[slot] = static_cast<uint8_t>(r), p.nibble |= static_cast<uint8_t>(r << (2 * slot++));
    }
    return t;
  }();
  return picks;
}

/// The pairs of one output and group: of its R values at(r), those that differ from `empty` into slots (pairPicks);
/// returns the index nibble.
template <typename T, typename At>
uint32_t pairSlots(int64_t R, T empty, At&& at, T (&slots)[kPairSlots]) {
  T v[kPairGroup + 1];
  uint32_t bits = 0;
  for (int64_t r = 0; r < kPairGroup; ++r) {
    v[r] = r < R ? at(r) : empty;
    bits |= static_cast<uint32_t>(v[r] != empty) << r;
  }
  v[kPairGroup] = empty;
  const PairPick& pick = pairPicks()[bits];
  for (int64_t slot = 0; slot < kPairSlots; ++slot) slots[slot] = v[pick.row[slot]];
  return pick.nibble;
}

/// The pairs of panel-ordered weight w (sparse.h) into s's mask: for each panel p, group g of kPairGroup k and
/// column j, pairSlots of the values at(p, k, j) against blank(p, g, j) go to put(p, g, j, slots) and their index
/// nibble to the mask.
template <typename T, typename At, typename Blank, typename Put>
void fillPairs(const PackedWeight& w, SparseForm& s, At&& at, Blank&& blank, Put&& put) {
  const int64_t G = pairGroups(w.K);
  s.mask.assign(static_cast<size_t>(panelCount(w) * G * (kPanel / 8)), 0);
  for (int64_t p = 0; p < panelCount(w); ++p)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t R = std::min(kPairGroup, w.K - g * kPairGroup);
      uint32_t* mask = &s.mask[pairIndex(p, g, 0, w.K)];
      for (int64_t j = 0; j < kPanel; ++j) {
        T slots[kPairSlots];
        const uint32_t nibble = pairSlots<T>(R, blank(p, g, j), [&](int64_t r) { return at(p, g * kPairGroup + r, j); }, slots);
        put(p, g, j, slots);
        mask[j / 8] |= nibble << (4 * (j % 8));
      }
    }
}

/// A pairs form of nz values, panel p's bytes from p * panelBytes.
std::shared_ptr<SparseForm> pairsForm(const PackedWeight& w, int64_t nz, int64_t panelBytes) {
  auto s = std::make_shared<SparseForm>();
  s->pairs = true;
  s->stored = nz;
  s->elements = panelCount(w) * w.K * kPanel;
  s->values.resize(static_cast<size_t>(panelCount(w) * panelBytes + kSparsePad));
  for (int64_t p = 0; p <= panelCount(w); ++p) s->start.push_back(p * panelBytes);
  return s;
}

/// The pairs layout of weight w (sparse.h; T its panel values d, [p][K][kPanel]), nz its nonzeros.
template <typename T>
std::shared_ptr<SparseForm> makePairsOf(const PackedWeight& w, int64_t nz, const T* d) {
  const int64_t planeValues = pairGroups(w.K) * kPairSlots * kPanel;
  std::shared_ptr<SparseForm> s = pairsForm(w, nz, planeValues * static_cast<int64_t>(sizeof(T)));
  T* v = static_cast<T*>(s->values.data());
  fillPairs<T>(
      w, *s, [&](int64_t p, int64_t k, int64_t j) { return d[(p * w.K + k) * kPanel + j]; },
      [](int64_t, int64_t, int64_t) { return T(0); },
      [&](int64_t p, int64_t g, int64_t j, const T* slots) {
        for (int64_t slot = 0; slot < kPairSlots; ++slot) v[p * planeValues + (g * kPairSlots + slot) * kPanel + j] = slots[slot];
      });
  return s;
}

/// Q4 pairs (sparse.h) straight from a centered Q4P weight's panels: per group of 4 k and output one byte, plane a's
/// nibble low and b's high as stored, an empty slot holding the zero point (which the panels' pruned values equal).
std::shared_ptr<SparseForm> makeQ4Pairs(const PackedWeight& w, int64_t nz) {
  const int64_t G = pairGroups(w.K);
  std::shared_ptr<SparseForm> s = pairsForm(w, nz, G * kPanel);
  const uint8_t* rows = static_cast<const uint8_t*>(w.w.data());  // [p][K] rows of kPanel / 2 bytes
  uint8_t* out = static_cast<uint8_t*>(s->values.data());
  fillPairs<uint8_t>(
      w, *s,
      [&](int64_t p, int64_t k, int64_t j) {
        const uint8_t byte = rows[(p * w.K + k) * (kPanel / 2) + j % 16];
        return static_cast<uint8_t>(j < 16 ? byte & 0xF : byte >> 4);
      },
      [&](int64_t p, int64_t g, int64_t j) { return w.zp8[(p * w.nblk + g / pairGroupsPerBlock(w)) * kPanel + j]; },
      [&](int64_t p, int64_t g, int64_t j, const uint8_t* slots) {
        out[(p * G + g) * kPanel + j] = static_cast<uint8_t>(slots[0] | slots[1] << 4);
      });
  return s;
}

/// Calls f(n, b, k0, R, q) for each output n and group of kPairGroup k from k0 (in block b) of a Q8 / Q4 weight still
/// in rows whose blocks are whole groups (a Q8 weight's one block, or blocks of a multiple of kPairGroup): q its R
/// stored values (R < kPairGroup in a last, partial group; q[R..] not to be read). A Q4 chunk is unpacked to bytes once
/// for its 8 groups. Stops, returning false, where f does.
template <typename F>
bool forEachRowGroup(const PackedWeight& w, F&& f) {
  const bool q4 = w.kind == PackedWeight::Q4;
  const int64_t K = w.K, block = w.block, nblk = w.nblk, P = w.P;
  alignas(32) uint8_t unpacked[kChunk];
  for (int64_t n = 0; n < w.N; ++n) {
    const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
    for (int64_t b = 0, kb = 0; b < nblk; ++b, kb += block)
      for (int64_t k0 = kb, e = b * P; k0 < std::min(K, kb + block); k0 += kPairGroup, e += kPairGroup) {  // e: its first stored element
        const uint8_t* q = row + e;
        if (q4) {  // (kChunk values: byte c holds value c low, c + 16 high; a block starts a chunk)
          if (e % kChunk == 0) {
            const uint8_t* bytes = row + e / 2;
            for (int64_t c = 0; c < kChunk / 2; ++c) unpacked[c] = bytes[c] & 0xF, unpacked[c + kChunk / 2] = bytes[c] >> 4;
          }
          q = unpacked + e % kChunk;
        }
        if (!f(n, b, k0, std::min(kPairGroup, K - k0), q)) return false;
      }
  }
  return true;
}

/// The Q8 / Q4 pairs (makePairsOf's centered signed bytes, makeQ4Pairs' nibble pairs: the same bytes and index words)
/// straight from a Q8 (one block) or Q4 weight's rows, which rowPairsNonzeros found nz and whose centering the caller
/// checked: the load's path, where panelizing the rows first and reading the panels back took 0.7 s of thread time
/// for the synthetic 2:4 int4 model. The caller then gives w its centered panel form without values (setPanelForm).
std::shared_ptr<SparseForm> pairsFromRows(const PackedWeight& w, int64_t nz) {
  const bool q4 = w.kind == PackedWeight::Q4;
  const int64_t G = pairGroups(w.K), planeBytes = G * (q4 ? 1 : kPairSlots) * kPanel;
  std::shared_ptr<SparseForm> s = pairsForm(w, nz, planeBytes);  // (zeroed: the padding outputs' bytes and nibbles)
  s->mask.assign(static_cast<size_t>(panelCount(w) * G * (kPanel / 8)), 0);
  uint8_t* out = static_cast<uint8_t*>(s->values.data());
  uint32_t* mask = s->mask.data();
  const float* zp = w.zp.data();
  const int64_t nblk = w.nblk, K = w.K;
  forEachRowGroup(w, [&](int64_t n, int64_t b, int64_t k0, int64_t R, const uint8_t* q) {
    const int64_t p = n / kPanel, j = n % kPanel, g = k0 / kPairGroup;
    const uint8_t z = static_cast<uint8_t>(zp[n * nblk + b]);
    uint8_t slots[kPairSlots];
    const uint32_t nibble = pairSlots<uint8_t>(R, z, [&](int64_t r) { return q[r]; }, slots);
    if (q4) {
      out[(p * G + g) * kPanel + j] = static_cast<uint8_t>(slots[0] | slots[1] << 4);  // (as stored)
    } else {
      for (int64_t slot = 0; slot < kPairSlots; ++slot)  // less the zero point: signed bytes, an empty slot 0
        out[p * planeBytes + (g * kPairSlots + slot) * kPanel + j] = static_cast<uint8_t>(slots[slot] - z);
    }
    mask[pairIndex(p, g, j / 8, K)] |= nibble << (4 * (j % 8));
    return true;
  });
  return s;
}

std::shared_ptr<SparseForm> makePairs(const PackedWeight& w, int64_t nz) {
  if (w.kind == PackedWeight::F32) return makePairsOf(w, nz, panelValues<float>(w));
  if (w.kind == PackedWeight::Q4P) return makeQ4Pairs(w, nz);
  return makePairsOf(w, nz, panelValues<int8_t>(w));
}

/// sparseToDense for the pairs layout: panel u as [K][kPanel] values (T: float, or a centered Q8P's signed bytes).
template <typename T>
void pairsToDense(const PackedWeight& w, int64_t u, T* panel) {
  const SparseForm& s = *w.sparse;
  const T* v = reinterpret_cast<const T*>(static_cast<const uint8_t*>(s.values.data()) + s.start[u]);
  std::fill(panel, panel + w.K * kPanel, T(0));
  for (int64_t g = 0; g < pairGroups(w.K); ++g)
    for (int64_t j = 0; j < kPanel; ++j) {
      const uint32_t nibble = s.mask[pairIndex(u, g, j / 8, w.K)] >> (4 * (j % 8));
      for (int64_t slot = 0; slot < kPairSlots; ++slot) {
        const T f = v[(g * kPairSlots + slot) * kPanel + j];
        if (f != T(0)) panel[(g * kPairGroup + (nibble >> (2 * slot) & 3u)) * kPanel + j] = f;  // (an empty slot is 0)
      }
    }
}

/// sparseToDense for Q4 pairs: panel u as its Q4P rows ([K][kPanel / 2] bytes, internal.h).
void q4PairsToDense(const PackedWeight& w, int64_t u, uint8_t* rows) {
  const SparseForm& s = *w.sparse;
  const uint8_t* v = static_cast<const uint8_t*>(s.values.data()) + s.start[u];
  std::fill(rows, rows + w.K * (kPanel / 2), uint8_t{0});
  for (int64_t g = 0; g < pairGroups(w.K); ++g)
    for (int64_t j = 0; j < kPanel; ++j) {
      const uint32_t nibble = s.mask[pairIndex(u, g, j / 8, w.K)] >> (4 * (j % 8));
      const int z = q4PanelZero(w, u, g / pairGroupsPerBlock(w), j);
      int q[kPairGroup] = {z, z, z, z};
      const uint8_t byte = v[g * kPanel + j];
      q[nibble & 3u] = byte & 0xF;          // (an empty slot holds z: writing it is a no-op)
      if (byte >> 4 != z) q[nibble >> 2 & 3u] = byte >> 4;
      for (int64_t r = 0; r < kPairGroup && g * kPairGroup + r < w.K; ++r)
        rows[(g * kPairGroup + r) * (kPanel / 2) + j % 16] |= static_cast<uint8_t>(j < 16 ? q[r] : q[r] << 4);
    }
}

}  // namespace

/// pairsNonzerosOf for a Q8 weight per channel or a Q4 weight still in rows: a nonzero is a stored value other than
/// its block's zero point.
int64_t rowPairsNonzeros(const PackedWeight& w) {
  if (!((w.kind == PackedWeight::Q8 || w.kind == PackedWeight::Q4) && (w.nblk == 1 || w.block % kPairGroup == 0)) ||
      w.w.size() == 0 || static_cast<int64_t>(w.zp.size()) != w.N * w.nblk)
    return -1;
  int64_t nz = 0;
  const float* zp = w.zp.data();
  const int64_t nblk = w.nblk;
  const bool pairs = forEachRowGroup(w, [&](int64_t n, int64_t b, int64_t, int64_t R, const uint8_t* q) {
    const int z = static_cast<int>(zp[n * nblk + b]);
    int64_t c = 0;
    for (int64_t i = 0; i < R; ++i) c += q[i] != z;
    nz += c;
    return c <= kPairSlots;
  });
  return pairs && pairsFilled(nz, w.K, w.N) ? nz : -1;
}

double storedFraction(const PackedWeight& w) {
  if (w.N == 0 || w.K == 0) return 1.0;
  if (w.sparse) return static_cast<double>(w.sparse->stored) / static_cast<double>(w.N * w.K);
  if (w.kind == PackedWeight::F16 || w.panelOrdered()) return 1.0;
  int64_t nz = 0;
  if (w.kind == PackedWeight::F32) {
    const float* p = static_cast<const float*>(w.w.data());
    for (int64_t i = 0, e = panelCount(w) * w.K * kPanel; i < e; ++i) nz += p[i] != 0.f;
  } else {
    if (!zeroPointsRepresentable(w)) return 1.0;
    for (int64_t n = 0; n < w.N; ++n) {
      const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
      for (int64_t b = 0; b < w.nblk; ++b) {  // nonzero: a stored value other than its block's zero point
        const int64_t valid = std::min(w.block, w.K - b * w.block);
        const int z = static_cast<int>(w.zp[n * w.nblk + b]);
        if (w.kind == PackedWeight::Q8) {
          const uint8_t* v = row + b * w.P;
          for (int64_t j = 0; j < valid; ++j) nz += v[j] != z;
        } else {
          for (int64_t j = 0; j < valid; ++j) nz += storedAt(w, row, b * w.P + j) != z;
        }
      }
    }
  }
  return static_cast<double>(nz) / static_cast<double>(w.N * w.K);
}

std::shared_ptr<const SparseForm> makeSparse(const PackedWeight& w) {
  if (w.sparse) return nullptr;
  if (const int64_t nz = pairsNonzeros(w); nz >= 0) return makePairs(w, nz);
  if (w.kind == PackedWeight::F16 || w.panelOrdered() || (quantized(w) && !zeroPointsRepresentable(w))) return nullptr;
  const bool f32 = w.kind == PackedWeight::F32;
  auto s = std::make_shared<SparseForm>();
  const int64_t units = f32 ? panelCount(w) : w.N, perUnit = f32 ? w.K : chunksPerRow(w);
  s->elements = units * perUnit * kChunk;
  // (and one word past the end: the int8 kernels read two chunks' masks at once)
  s->mask.resize((f32 ? (units + kMaskGroup - 1) / kMaskGroup * kMaskGroup * perUnit : units * perUnit) + 1);
  // Pass 1: the masks, and where each unit's values start; pass 2: the values, straight into place.
  int64_t bytes = 0;
  for (int64_t u = 0; u < units; ++u) {
    s->start.push_back(bytes);
    const uint8_t* row = f32 ? nullptr : static_cast<const uint8_t*>(w.w.data()) + u * w.rowBytes();
    for (int64_t c = 0; c < perUnit; ++c) {
      const uint32_t m = f32 ? maskF32(w, u, c) : maskQ(w, row, u, c);
      s->mask[f32 ? f32MaskIndex(u, c, w.K) : u * perUnit + c] = m;
      s->stored += __builtin_popcount(m);
      bytes += chunkBytes(w.kind, m);
    }
  }
  s->start.push_back(bytes);
  s->values.resize(bytes + kSparsePad);
  std::memset(s->values.data(), 0, static_cast<size_t>(bytes + kSparsePad));
  for (int64_t u = 0; u < units; ++u) packUnit(w, *s, u, static_cast<uint8_t*>(s->values.data()) + s->start[u]);
  return s;
}

namespace {

/// Zero point of block b of row n, as the weight holds it now (bytes once it takes int8 activations).
int zeroPoint(const PackedWeight& w, int64_t n, int64_t b) {
  return w.int8 ? w.zp8[n * w.nblk + b] : static_cast<int>(w.zp[n * w.nblk + b]);
}

/// Whether element e of a Q8/Q4 row is block padding (past the block's K values).
bool paddingElement(const PackedWeight& w, int64_t e) {
  const int64_t b = e / w.P;
  return e % w.P >= std::min(w.block, w.K - b * w.block);
}

/// The 64-bit mask of unit u of row n (`units` per row) of an int8-lanes form.
uint64_t int8LanesMask(const SparseForm& s, int64_t n, int64_t units, int64_t u) {
  return s.mask[(n * units + u) * 2] | uint64_t{s.mask[(n * units + u) * 2 + 1]} << 32;
}

/// Row n of an int8-lanes form (sparse.h) back into the dense Q4 bytes.
void int8LanesToDense(const PackedWeight& w, int64_t n, uint8_t* row) {
  const SparseForm& s = *w.sparse;
  const int64_t cpr = chunksPerRow(w), units = int8LanesUnits(cpr);
  for (int64_t e = 0; e < cpr * kChunk; ++e) setStored(w, row, e, paddingElement(w, e) ? 0 : zeroPoint(w, n, e / w.P));
  const uint8_t* v = static_cast<const uint8_t*>(s.values.data()) + s.start[n];
  for (int64_t u = 0; u < units; u += 2) {  // per step: its low unit's values in the low nibbles, the high unit's above
    int64_t bytes = 0;
    for (int h = 0; h < 2; ++h) {
      int count = 0;
      for (uint64_t b = int8LanesMask(s, n, units, u + h); b; b &= b - 1, ++count)
        setStored(w, row, int8LanesElement(u + h, __builtin_ctzll(b)), (v[count] >> (4 * h)) & 0xF);
      bytes = std::max<int64_t>(bytes, count);
    }
    v += bytes;
  }
}

/// The masks of the two units of step s of an int8-lanes row (4 chunks): a position is set where it holds neither
/// block padding nor its block's zero point.
struct LanesStep {
  uint64_t m[2] = {};
};

LanesStep lanesStep(const PackedWeight& w, const uint8_t* row, int64_t n, int64_t s) {
  LanesStep st;
  const int64_t cpr = chunksPerRow(w), cpb = w.P / kChunk;
  for (int64_t i = 0; i < kInt8LanesStepChunks && kInt8LanesStepChunks * s + i < cpr; ++i) {
    const int64_t c = kInt8LanesStepChunks * s + i, b = c / cpb;
    const int64_t valid = std::clamp<int64_t>(std::min(w.block, w.K - b * w.block) - (c % cpb) * kChunk, 0, kChunk);
    const int z = zeroPoint(w, n, b);
    const uint8_t* q = row + c * (kChunk / 2);  // byte j: value j low, value j + 16 high
    for (int64_t j = 0; j < 16; ++j) {
      const int t = static_cast<int>(16 * i + j), lo = q[j] & 0xF, hi = q[j] >> 4;
      st.m[0] |= static_cast<uint64_t>(j < valid && lo != z) << t;
      st.m[1] |= static_cast<uint64_t>(j + 16 < valid && hi != z) << t;
    }
  }
  return st;
}

}  // namespace

std::shared_ptr<const SparseForm> makeSparseInt8Lanes(const PackedWeight& w) {
  if (w.sparse || w.kind != PackedWeight::Q4 || !zeroPointsRepresentable(w)) return nullptr;
  auto s = std::make_shared<SparseForm>();
  s->int8Lanes = true;
  const int64_t cpr = chunksPerRow(w), units = int8LanesUnits(cpr), steps = units / 2;
  s->elements = w.N * cpr * kChunk;
  s->mask.assign(static_cast<size_t>(w.N * units * 2 + 2), 0);  // (two words past the end: whole-step reads)
  // Pass 1: the masks, and where each row's values start (a step takes the larger of its units' counts); pass 2:
  // the nibbles, straight into place.
  int64_t bytes = 0;
  for (int64_t n = 0; n < w.N; ++n) {
    s->start.push_back(bytes);
    const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
    for (int64_t t = 0; t < steps; ++t) {
      const LanesStep st = lanesStep(w, row, n, t);
      for (int h = 0; h < 2; ++h) {
        s->mask[(n * units + 2 * t + h) * 2] = static_cast<uint32_t>(st.m[h]);
        s->mask[(n * units + 2 * t + h) * 2 + 1] = static_cast<uint32_t>(st.m[h] >> 32);
        s->stored += __builtin_popcountll(st.m[h]);
      }
      bytes += std::max(__builtin_popcountll(st.m[0]), __builtin_popcountll(st.m[1]));
    }
  }
  s->start.push_back(bytes);
  s->values.resize(bytes + kSparsePad);
  std::memset(s->values.data(), 0, static_cast<size_t>(bytes + kSparsePad));
  for (int64_t n = 0; n < w.N; ++n) {
    const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
    uint8_t* dst = static_cast<uint8_t*>(s->values.data()) + s->start[n];
    for (int64_t t = 0; t < steps; ++t) {
      const uint8_t* q = row + t * kInt8LanesStepChunks * (kChunk / 2);  // position p of a unit: chunk p / 16, byte p % 16
      int64_t count[2] = {0, 0};
      for (int h = 0; h < 2; ++h)
        for (uint64_t b = int8LanesMask(*s, n, units, 2 * t + h); b; b &= b - 1)
          dst[count[h]++] |= static_cast<uint8_t>((q[__builtin_ctzll(b)] >> (4 * h) & 0xF) << (4 * h));
      dst += std::max(count[0], count[1]);
    }
  }
  return s;
}

void sparseToDense(const PackedWeight& w, int64_t u, void* dst) {
  const SparseForm& s = *w.sparse;
  if (s.int8Lanes) return int8LanesToDense(w, u, static_cast<uint8_t*>(dst));
  if (s.pairs && w.kind == PackedWeight::F32) return pairsToDense(w, u, static_cast<float*>(dst));
  if (s.pairs && w.kind == PackedWeight::Q4P) return q4PairsToDense(w, u, static_cast<uint8_t*>(dst));
  if (s.pairs) return pairsToDense(w, u, static_cast<int8_t*>(dst));
  const uint8_t* v = static_cast<const uint8_t*>(s.values.data()) + s.start[u];
  if (w.kind == PackedWeight::F32) {
    float* panel = static_cast<float*>(dst);
    for (int64_t k = 0; k < w.K; ++k) {
      const uint32_t m = s.mask[f32MaskIndex(u, k, w.K)];
      for (int64_t j = 0; j < kPanel; ++j) {
        float f = 0.f;
        if (m >> j & 1u) std::memcpy(&f, v, 4), v += 4;
        panel[k * kPanel + j] = f;
      }
    }
    return;
  }
  uint8_t* row = static_cast<uint8_t*>(dst);
  std::memset(row, 0, static_cast<size_t>(w.rowBytes()));
  const int64_t cpr = chunksPerRow(w);
  for (int64_t c = 0; c < cpr; ++c) {
    const uint32_t m = s.mask[u * cpr + c];
    int count = 0;
    for (int64_t i = 0; i < kChunk; ++i) {
      const int64_t e = c * kChunk + i;
      int q = paddingElement(w, e) ? 0 : zeroPoint(w, u, e / w.P);
      if (m >> i & 1u) {
        q = w.kind == PackedWeight::Q8 ? v[count] : (v[count / 2] >> (4 * (count % 2))) & 0xF;
        ++count;
      }
      setStored(w, row, e, q);
    }
    v += w.kind == PackedWeight::Q8 ? count : (count + 1) / 2;
  }
}

namespace {

/// chooseSparseForms' choice for one node's weight (`minBytes`: sparseMinBytes); whether it took a sparse form.
bool chooseSparseForm(Node& n, SparseMode mode, const Kernels& k, Int8Activations int8, int64_t minBytes) {
  if (!n.packed || n.packed->sparse || n.packed->kind == PackedWeight::F16 || n.packed->panelOrdered()) return false;
  PackedWeight& w = *n.packed;
  // A weight that will take int8 activations (chosen next, chooseInt8Activations) runs other kernels: their own
  // crossover, and none where the int8 kernels have no sparse form (it would cost the int8 path).
  const bool i8 = int8Asked(n, int8) && int8Capable(w, k);
  // A Q4 weight's sparse form for those kernels (int8 lanes) is theirs alone: only where they will surely run it.
  const bool i8Sparse = i8 && k.gemm_i8_sparse &&
                        (w.kind == PackedWeight::Q8 || (k.i8_width == kInt8LanesWidth && int8ParamsFit(w)));
  const double crossover = i8 ? (i8Sparse ? k.sparse_crossover_i8[w.kind] : 0.0) : k.sparse_crossover[w.kind];
  // The pairs layout (fp32 2:4) pays at every size: it expands nothing (stories260K's 2:4 weights of 16-44 KiB, in
  // cache: decode 0.062-0.063 instead of 0.068-0.070 ms per token, prefill equal). Its check stops at the first
  // group of 4 with 3 nonzeros, so a dense or unstructured weight costs a few reads; a 2:4 one is counted once here.
  // A 2:4 int8 or int4 weight with exact compute takes the Q8 / Q4 pairs layout, which pays too where these kernels
  // run it (int4: fewer bytes and half the conversions for the cost of the picks).
  // (The 2:4 check first: it stops early on a dense weight, where the centering check reads every value.)
  int64_t pairsNz = w.kind == PackedWeight::F32 ? pairsNonzeros(w) : !i8 && quantPairsCandidate(w, k) ? rowPairsNonzeros(w) : -1;
  // Centering: a Q4 weight's check is the 2:4 one above and its zero points'; a Q8 weight's values less its zero points
  // must fit a signed byte.
  if (pairsNz >= 0 && quantized(w) && !(w.kind == PackedWeight::Q4 ? zeroPointsRepresentable(w) : centerable(w))) pairsNz = -1;
  const bool pairsPay = pairsNz >= 0 && (quantized(w) || crossover > 0);
  const bool candidate = mode == SparseMode::On || pairsPay || (crossover > 0 && w.bytes() >= minBytes);
  if (!candidate) return false;  // (counting the zeros of every weight was a sixth of a 110 MB model's load)
  const double f = pairsNz >= 0 ? static_cast<double>(pairsNz) / static_cast<double>(w.N * w.K) : storedFraction(w);
  if (mode == SparseMode::On ? f >= 1.0 : !pairsPay && f > crossover) return false;
  if (pairsNz >= 0 && quantized(w)) {  // (centered, checked above) the pairs from the rows, then the panel form
    std::shared_ptr<const SparseForm> s = pairsFromRows(w, pairsNz);
    setPanelForm(w, AlignedBytes(), true);  // (the sparse form replaces the dense one)
    w.sparse = std::move(s);
    return true;
  }
  std::shared_ptr<const SparseForm> s = pairsNz >= 0                               ? makePairs(w, pairsNz)
                                       : i8Sparse && w.kind == PackedWeight::Q4 ? makeSparseInt8Lanes(w)
                                                                                : makeSparse(w);
  if (!s) return false;
  w.sparse = std::move(s);
  w.w = AlignedBytes();  // the sparse form replaces the dense one
  return true;
}

}  // namespace

int chooseSparseForms(Graph& g, SparseMode mode, const Kernels& k, Int8Activations int8, int64_t cacheBytes, ThreadPool* pool) {
  if (mode == SparseMode::Off) return 0;
  const int64_t minBytes = sparseMinBytes(g, cacheBytes);
  const std::vector<Node*> nodes = weightNodes(g);
  std::vector<char> took(nodes.size(), 0);
  forEachTask(pool, static_cast<int64_t>(nodes.size()),
              [&](int64_t i) { took[i] = chooseSparseForm(*nodes[i], mode, k, int8, minBytes); });
  return static_cast<int>(std::count(took.begin(), took.end(), 1));
}

const ExpandTables& expandTables() {
  static const ExpandTables t = [] {
    ExpandTables e{};
    for (int m = 0; m < 256; ++m) {
      int next = 0;
      uint64_t b = 0;
      for (int i = 0; i < 8; ++i) {
        const bool set = (m >> i) & 1;
        e.lanes[m][i] = set ? next : -1;
        b |= static_cast<uint64_t>(set ? next : 0x80) << (8 * i);
        next += set;
      }
      e.bytes[m] = b;
    }
    return e;
  }();
  return t;
}

}  // namespace crt::detail
