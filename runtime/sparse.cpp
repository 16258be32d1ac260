// sparse.cpp — building the sparse form of packed weights at load, converting it back (the scalar kernels'
// reference path), the load-time choice per weight, and the SIMD kernels' expansion tables.
#include "runtime/sparse.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/int8_acts.h"
#include "runtime/kernels.h"

namespace crt::detail {
namespace {

constexpr int64_t kChunk = 32;  // elements per mask word
/// Auto leaves smaller weights dense: they stay in cache, where the GEMV is compute-bound and expanding costs
/// more than the bytes it saves (stories260K's 64-wide layers: 0.10 -> 0.16 ms per token sparse).
constexpr int64_t kSparseMinBytes = int64_t{1} << 20;

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

/// Every zero point is an integer a stored element can equal, so "element == zero point" is an exact zero.
bool zeroPointsRepresentable(const PackedWeight& w) {
  const float top = w.kind == PackedWeight::Q8 ? 255.f : 15.f;
  for (float z : w.zp)
    if (!(z >= 0.f && z <= top && z == std::floor(z))) return false;
  return true;
}

int64_t panels(const PackedWeight& w) { return (w.N + kPanel - 1) / kPanel; }
int64_t chunksPerRow(const PackedWeight& w) { return w.nblk * w.P / kChunk; }

/// Element e of row n of a dense Q8/Q4 weight is an exact zero (its block's zero point) or block padding.
bool clearQ(const PackedWeight& w, const uint8_t* row, int64_t n, int64_t e) {
  const int64_t b = e / w.P, j = e % w.P;
  if (j >= std::min(w.block, w.K - b * w.block)) return true;
  return storedAt(w, row, e) == static_cast<int>(w.zp[n * w.nblk + b]);
}


}  // namespace

double storedFraction(const PackedWeight& w) {
  if (w.N == 0 || w.K == 0 || w.kind == PackedWeight::F16) return 1.0;
  if (w.sparse) return static_cast<double>(w.sparse->stored) / static_cast<double>(w.N * w.K);
  int64_t nz = 0;
  if (w.kind == PackedWeight::F32) {
    const float* p = static_cast<const float*>(w.w.data());
    for (int64_t i = 0, e = panels(w) * w.K * kPanel; i < e; ++i) nz += p[i] != 0.f;
  } else {
    if (!zeroPointsRepresentable(w)) return 1.0;
    for (int64_t n = 0; n < w.N; ++n) {
      const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
      for (int64_t b = 0; b < w.nblk; ++b) {  // clearQ's test, block by block (a plain loop the compiler vectorizes)
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
  if (w.sparse || w.kind == PackedWeight::F16 || (quantized(w) && !zeroPointsRepresentable(w))) return nullptr;
  auto s = std::make_shared<SparseForm>();
  std::vector<uint8_t> vals;
  if (w.kind == PackedWeight::F32) {
    const float* p = static_cast<const float*>(w.w.data());
    const int64_t np = panels(w);
    s->mask.resize(np * w.K);
    s->elements = np * w.K * kPanel;
    for (int64_t pi = 0; pi < np; ++pi) {
      s->start.push_back(static_cast<int64_t>(vals.size()));
      for (int64_t k = 0; k < w.K; ++k) {
        uint32_t m = 0;
        for (int64_t j = 0; j < kPanel; ++j) {
          const float v = p[(pi * w.K + k) * kPanel + j];
          if (v == 0.f) continue;  // -0.0 too: pruning by multiplication leaves half its zeros negative
          m |= 1u << j;
          vals.insert(vals.end(), reinterpret_cast<const uint8_t*>(&v), reinterpret_cast<const uint8_t*>(&v) + 4);
          ++s->stored;
        }
        s->mask[pi * w.K + k] = m;
      }
    }
  } else {
    const int64_t cpr = chunksPerRow(w);
    s->mask.resize(w.N * cpr);
    s->elements = w.N * cpr * kChunk;
    for (int64_t n = 0; n < w.N; ++n) {
      s->start.push_back(static_cast<int64_t>(vals.size()));
      const uint8_t* row = static_cast<const uint8_t*>(w.w.data()) + n * w.rowBytes();
      for (int64_t c = 0; c < cpr; ++c) {
        uint32_t m = 0;
        int count = 0;
        for (int64_t i = 0; i < kChunk; ++i) {
          const int64_t e = c * kChunk + i;
          if (clearQ(w, row, n, e)) continue;
          m |= 1u << i;
          const int v = storedAt(w, row, e);
          if (w.kind == PackedWeight::Q8) vals.push_back(static_cast<uint8_t>(v));
          else if (count % 2 == 0) vals.push_back(static_cast<uint8_t>(v));
          else vals.back() = static_cast<uint8_t>(vals.back() | (v << 4));
          ++count;
        }
        s->stored += count;
        s->mask[n * cpr + c] = m;
      }
    }
  }
  s->start.push_back(static_cast<int64_t>(vals.size()));
  s->values.resize(vals.size() + kSparsePad);
  if (!vals.empty()) std::memcpy(s->values.data(), vals.data(), vals.size());
  return s;
}

void sparseToDense(const PackedWeight& w, int64_t u, void* dst) {
  const SparseForm& s = *w.sparse;
  const uint8_t* v = static_cast<const uint8_t*>(s.values.data()) + s.start[u];
  if (w.kind == PackedWeight::F32) {
    float* panel = static_cast<float*>(dst);
    for (int64_t k = 0; k < w.K; ++k) {
      const uint32_t m = s.mask[u * w.K + k];
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
      const int64_t e = c * kChunk + i, b = e / w.P;
      const bool pad = e % w.P >= std::min(w.block, w.K - b * w.block);
      int q = pad ? 0 : w.int8 ? w.zp8[u * w.nblk + b] : static_cast<int>(w.zp[u * w.nblk + b]);
      if (m >> i & 1u) {
        q = w.kind == PackedWeight::Q8 ? v[count] : (v[count / 2] >> (4 * (count % 2))) & 0xF;
        ++count;
      }
      setStored(w, row, e, q);
    }
    v += w.kind == PackedWeight::Q8 ? count : (count + 1) / 2;
  }
}

int chooseSparseForms(Graph& g, SparseMode mode, const Kernels& k, Int8Activations int8) {
  if (mode == SparseMode::Off) return 0;
  int converted = 0;
  for (Node& n : g.nodes) {
    if (!n.packed || n.packed->sparse || n.packed->kind == PackedWeight::F16) continue;
    PackedWeight& w = *n.packed;
    // A weight that will take int8 activations (chosen next, chooseInt8Activations) runs other kernels: their own
    // crossover, and none where the int8 kernels have no sparse form (it would cost the int8 path).
    const bool i8 = int8Asked(n, int8) && int8Capable(w, k);
    const double crossover = i8 ? (k.gemm_i8_sparse && w.kind == PackedWeight::Q8 ? k.sparse_crossover_i8 : 0.0)
                                : k.sparse_crossover[w.kind];
    const bool candidate = mode == SparseMode::On || (crossover > 0 && w.bytes() >= kSparseMinBytes);
    if (!candidate) continue;  // (counting the zeros of every weight was a sixth of a 110 MB model's load)
    const double f = storedFraction(w);
    if (mode == SparseMode::On ? f >= 1.0 : f > crossover) continue;
    auto s = makeSparse(w);
    if (!s) continue;
    w.sparse = std::move(s);
    w.w = AlignedBytes();  // the sparse form replaces the dense one
    ++converted;
  }
  return converted;
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
