// ops_tensor.cpp — the runtime's tensor builders and data movement that torch.onnx.export writes for
// transformers and CNNs: ConstantOfShape, Range, Trilu, Tile, Pad, Resize (nearest, linear), Einsum
// (one- and two-operand equations) and ConvTranspose (ONNX opset 13-21 semantics).
#include <string>

#include "runtime/ops_common.h"

namespace crt::detail {
namespace {

Shape shapeFrom(OpCtx& c, const Buf& b) {
  int64_t v[kMaxRank];
  const int64_t n = readInts(b, v, kMaxRank, c);
  Shape s;
  for (int64_t i = 0; i < n; ++i) s.push(v[i]);
  return s;
}

/// Calls f(o, idx) for every flat output index o of a C-order tensor of shape `os`, with idx its
/// multi-index.
template <typename F>
void forEachIndex(const Shape& os, F&& f) {
  const int64_t total = os.numel();
  int64_t idx[kMaxRank] = {};
  for (int64_t o = 0; o < total; ++o) {
    f(o, static_cast<const int64_t*>(idx));
    for (int d = os.rank - 1; d >= 0; --d) {
      if (++idx[d] < os[d]) break;
      idx[d] = 0;
    }
  }
}

/// A string attribute, or `def` (no copy: ops run without allocating).
const std::string& strAttr(const OpCtx& c, const char* k, const std::string& def) {
  auto it = c.node.attrs.find(k);
  return it == c.node.attrs.end() ? def : it->second.s;
}

double scalarOf(OpCtx& c, int i) {
  const Buf& b = c.in(i);
  if (b.numel() != 1) c.bad("input " + std::to_string(i) + " must be a scalar");
  return loadElem(b.dt, b.data, 0);
}

}  // namespace

// The loader turns ConstantOfShape's `value` tensor attribute into a constant second input.
void opConstantOfShape(OpCtx& c) {
  const Shape s = shapeFrom(c, c.in(0));
  const DType dt = c.has(1) ? c.in(1).dt : DType::F32;
  if (c.has(1) && c.in(1).numel() != 1) c.bad("value must hold one element");
  void* y = c.out(0, dt, s);
  const size_t es = dtypeSize(dt);
  const int64_t n = s.numel();
  if (!c.has(1)) {
    std::memset(y, 0, static_cast<size_t>(n) * es);
    return;
  }
  for (int64_t i = 0; i < n; ++i) std::memcpy(static_cast<uint8_t*>(y) + i * es, c.in(1).data, es);
}

void opRange(OpCtx& c) {
  const DType dt = c.in(0).dt;
  if (c.in(1).dt != dt || c.in(2).dt != dt) c.bad("start, limit and delta must have one type");
  const double start = scalarOf(c, 0), limit = scalarOf(c, 1), delta = scalarOf(c, 2);
  if (delta == 0 || std::isnan(delta) || std::isnan(start) || std::isnan(limit)) c.bad("delta must be non-zero and the bounds numbers");
  const double count = std::ceil((limit - start) / delta);
  if (count > static_cast<double>(kMaxElements)) c.bad("the range has too many elements");
  const int64_t n = count > 0 ? static_cast<int64_t>(count) : 0;
  void* y = c.out(0, dt, Shape{n});
  if (dt == DType::I64) {  // exact integer steps
    const uint64_t s0 = static_cast<uint64_t>(c.in(0).as<int64_t>()[0]), d = static_cast<uint64_t>(c.in(2).as<int64_t>()[0]);
    for (int64_t i = 0; i < n; ++i) static_cast<int64_t*>(y)[i] = static_cast<int64_t>(s0 + static_cast<uint64_t>(i) * d);  // wraps, never UB
    return;
  }
  for (int64_t i = 0; i < n; ++i) storeElem(dt, y, i, start + static_cast<double>(i) * delta);
}

void opTrilu(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r < 2) c.bad("needs an input of rank >= 2");
  int64_t k = 0;
  if (c.has(1)) k = static_cast<int64_t>(std::clamp(scalarOf(c, 1), -4e18, 4e18));
  const bool upper = c.node.attrInt("upper", 1) != 0;
  const int64_t rows = x.shape[r - 2], cols = x.shape[r - 1], mats = rows * cols == 0 ? 0 : x.numel() / (rows * cols);
  const size_t es = dtypeSize(x.dt);
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, x.shape));
  const uint8_t* p = x.as<uint8_t>();
  for (int64_t m = 0; m < mats; ++m)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t off = (m * rows + i) * cols + j;
        const bool keep = upper ? j - i >= k : j - i <= k;
        if (keep) std::memcpy(y + off * es, p + off * es, es);
        else std::memset(y + off * es, 0, es);
      }
}

void opTile(OpCtx& c) {
  const Buf& x = c.in(0);
  int64_t rep[kMaxRank];
  if (readInts(c.in(1), rep, kMaxRank, c) != x.shape.rank) c.bad("repeats needs one value per input dim");
  Shape os;
  for (int d = 0; d < x.shape.rank; ++d) {
    if (rep[d] < 0) c.bad("repeats must be >= 0");
    int64_t v = 0;
    if (!checkedMul(x.shape[d], rep[d], &v)) c.bad("the tiled shape is too large");
    os.push(v);
  }
  const size_t es = dtypeSize(x.dt);
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, os));
  int64_t ist[kMaxRank];
  contiguousStrides(x.shape, ist);
  forEachIndex(os, [&](int64_t o, const int64_t* idx) {
    int64_t src = 0;
    for (int d = 0; d < os.rank; ++d) src += (idx[d] % x.shape[d]) * ist[d];
    std::memcpy(y + o * es, x.as<uint8_t>() + src * es, es);
  });
}

void opPad(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  int64_t pv[2 * kMaxRank];
  const int64_t np = readInts(c.in(1), pv, 2 * kMaxRank, c);
  int64_t axes[kMaxRank];
  int64_t na = r;
  if (c.has(3)) na = readInts(c.in(3), axes, kMaxRank, c);
  else for (int i = 0; i < r; ++i) axes[i] = i;
  if (np != 2 * na) c.bad("pads needs 2 values per padded axis");
  int64_t before[kMaxRank] = {}, after[kMaxRank] = {};
  for (int64_t i = 0; i < na; ++i) {
    const int a = static_cast<int>(normAxis(c, axes[i], r));
    before[a] = pv[i], after[a] = pv[na + i];
  }
  static const std::string kConstant = "constant";
  const std::string& mode = strAttr(c, "mode", kConstant);
  enum { Constant, Reflect, Edge } const kind = mode == "constant" ? Constant : mode == "reflect" ? Reflect : Edge;
  if (kind == Edge && mode != "edge") c.bad("mode '" + mode + "' is not supported");
  Shape os;
  for (int d = 0; d < r; ++d) {
    int64_t v = 0;
    if (!checkedAdd(x.shape[d], before[d], &v) || !checkedAdd(v, after[d], &v)) c.bad("pads are too large");
    if (v < 0) c.bad("pads remove more than the input has");
    if (kind != Constant && v > 0 && x.shape[d] == 0) c.bad("cannot " + mode + "-pad an empty axis");
    if (kind == Reflect && (before[d] >= x.shape[d] || after[d] >= x.shape[d]) && (before[d] > 0 || after[d] > 0))
      c.bad("reflect pads must be smaller than the axis");
    os.push(v);
  }
  const size_t es = dtypeSize(x.dt);
  uint8_t fill[8] = {};
  if (c.has(2) && c.in(2).numel() > 0) {
    if (c.in(2).dt != x.dt || c.in(2).numel() != 1) c.bad("constant_value must be a scalar of the input's type");
    std::memcpy(fill, c.in(2).data, es);
  }
  uint8_t* y = static_cast<uint8_t*>(c.out(0, x.dt, os));
  int64_t ist[kMaxRank];
  contiguousStrides(x.shape, ist);
  forEachIndex(os, [&](int64_t o, const int64_t* idx) {
    int64_t src = 0;
    bool inside = true;
    for (int d = 0; d < r; ++d) {
      int64_t i = idx[d] - before[d];
      const int64_t n = x.shape[d];
      if (i < 0 || i >= n) {
        if (kind == Constant) { inside = false; break; }
        if (kind == Edge) i = i < 0 ? 0 : n - 1;
        else i = i < 0 ? -i : 2 * (n - 1) - i;  // reflect (pads < n)
      }
      src += i * ist[d];
    }
    std::memcpy(y + o * es, inside ? x.as<uint8_t>() + src * es : fill, es);
  });
}

// ---------------------------------------------------------------- Resize
namespace {

enum class Coord { HalfPixel, Asymmetric, AlignCorners, PytorchHalfPixel };
enum class Round { PreferFloor, PreferCeil, Floor, Ceil };

/// Input coordinate of output coordinate `o` for one axis.
double sourceCoord(Coord mode, int64_t o, double scale, int64_t in, int64_t out) {
  switch (mode) {
    case Coord::Asymmetric: return o / scale;
    case Coord::AlignCorners: return out == 1 ? 0 : static_cast<double>(o) * (in - 1) / (out - 1);
    case Coord::PytorchHalfPixel: return out > 1 ? (o + 0.5) / scale - 0.5 : 0;
    case Coord::HalfPixel: break;
  }
  return (o + 0.5) / scale - 0.5;
}

int64_t nearestIndex(Round mode, double x, int64_t in) {
  int64_t i;
  switch (mode) {
    case Round::Floor: i = static_cast<int64_t>(std::floor(x)); break;
    case Round::Ceil: i = static_cast<int64_t>(std::ceil(x)); break;
    case Round::PreferCeil: i = static_cast<int64_t>(std::floor(x + 0.5)); break;
    default:  // round_prefer_floor
      i = x == std::floor(x) + 0.5 ? static_cast<int64_t>(std::floor(x)) : static_cast<int64_t>(std::round(x));
      break;
  }
  return std::clamp<int64_t>(i, 0, in - 1);
}

}  // namespace

void opResize(OpCtx& c) {
  const Buf& x = c.in(0);
  const int r = x.shape.rank;
  if (r != 4 && r != 3) c.bad("Resize supports inputs [N, C, W] and [N, C, H, W]");
  static const std::string kNearest = "nearest", kHalfPixel = "half_pixel", kPreferFloor = "round_prefer_floor";
  const std::string& mode = strAttr(c, "mode", kNearest);
  const std::string& ctm = strAttr(c, "coordinate_transformation_mode", kHalfPixel);
  const std::string& nm = strAttr(c, "nearest_mode", kPreferFloor);
  if (mode != "nearest" && mode != "linear") c.bad("mode '" + mode + "' is not supported (nearest, linear)");
  const bool nearest = mode == "nearest";
  Coord coord = Coord::HalfPixel;
  if (ctm == "asymmetric") coord = Coord::Asymmetric;
  else if (ctm == "align_corners") coord = Coord::AlignCorners;
  else if (ctm == "pytorch_half_pixel") coord = Coord::PytorchHalfPixel;
  else if (ctm != "half_pixel") c.bad("coordinate_transformation_mode '" + ctm + "' is not supported");
  const Round round = nm == "floor" ? Round::Floor : nm == "ceil" ? Round::Ceil
                      : nm == "round_prefer_ceil" ? Round::PreferCeil : Round::PreferFloor;
  double scales[kMaxRank];
  Shape os = x.shape;
  if (c.has(3) && c.in(3).numel() > 0) {
    os = shapeFrom(c, c.in(3));
    if (os.rank != r) c.bad("sizes needs one value per input dim");
    for (int d = 0; d < r; ++d) scales[d] = x.shape[d] == 0 ? 1.0 : static_cast<double>(os[d]) / x.shape[d];
  } else if (c.has(2) && c.in(2).numel() > 0) {
    const Buf& s = c.in(2);
    if (s.numel() != r || !isFloat(s.dt)) c.bad("scales needs one float per input dim");
    for (int d = 0; d < r; ++d) {
      scales[d] = loadElem(s.dt, s.data, d);
      if (!(scales[d] > 0) || scales[d] > 65536) c.bad("scales must be positive");
      const double v = std::floor(x.shape[d] * scales[d]);
      if (v > static_cast<double>(kMaxElements)) c.bad("the resized shape is too large");
      os[d] = static_cast<int64_t>(v);
    }
  } else {
    c.bad("Resize needs scales or sizes");
  }
  if (os[0] != x.shape[0] || os[1] != x.shape[1]) c.bad("Resize of the batch or channel axis is not supported");
  if (!isFloat(x.dt)) c.bad("needs a float input");
  (void)os.numel();
  const int sp = r - 2;
  const int64_t IH = sp == 2 ? x.shape[2] : 1, IW = x.shape[r - 1], OH = sp == 2 ? os[2] : 1, OW = os[r - 1];
  const double sh = sp == 2 ? scales[2] : 1.0, sw = scales[r - 1];
  if ((IH == 0 || IW == 0) && OH * OW > 0) c.bad("cannot resize an empty image");
  const float* X = fin(c, 0);
  FloatOut fo = floatOut(c, x.dt, os);
  const int64_t planes = x.shape[0] * x.shape[1];
  for (int64_t p = 0; p < planes; ++p) {
    const float* img = X + p * IH * IW;
    float* out = fo.p + p * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const double yh = sp == 2 ? sourceCoord(coord, oh, sh, IH, OH) : 0;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const double yw = sourceCoord(coord, ow, sw, IW, OW);
        if (nearest) {
          out[oh * OW + ow] = img[nearestIndex(round, yh, IH) * IW + nearestIndex(round, yw, IW)];
          continue;
        }
        const double ch = std::clamp(yh, 0.0, static_cast<double>(IH - 1)), cw = std::clamp(yw, 0.0, static_cast<double>(IW - 1));
        const int64_t h0 = static_cast<int64_t>(std::floor(ch)), w0 = static_cast<int64_t>(std::floor(cw));
        const int64_t h1 = std::min(h0 + 1, IH - 1), w1 = std::min(w0 + 1, IW - 1);
        const float fh = static_cast<float>(ch - h0), fw = static_cast<float>(cw - w0);
        const float top = img[h0 * IW + w0] * (1 - fw) + img[h0 * IW + w1] * fw;
        const float bot = img[h1 * IW + w0] * (1 - fw) + img[h1 * IW + w1] * fw;
        out[oh * OW + ow] = top * (1 - fh) + bot * fh;
      }
    }
  }
  finish(fo);
}

// ---------------------------------------------------------------- Einsum
namespace {

/// A parsed equation: each operand's labels and the output's (explicit or implicit form; no ellipsis).
struct EinsumSpec {
  std::string in[2], out;
  int nin = 0;
};

EinsumSpec parseEinsum(OpCtx& c, std::string eq) {
  std::string clean;
  for (char ch : eq)
    if (ch != ' ') clean += ch;
  if (clean.find("...") != std::string::npos) c.bad("Einsum with an ellipsis is not supported");
  EinsumSpec s;
  const size_t arrow = clean.find("->");
  const std::string lhs = clean.substr(0, arrow);
  const size_t comma = lhs.find(',');
  s.in[0] = lhs.substr(0, comma);
  s.nin = 1;
  if (comma != std::string::npos) {
    s.in[1] = lhs.substr(comma + 1);
    s.nin = 2;
    if (s.in[1].find(',') != std::string::npos) c.bad("Einsum supports one or two operands");
  }
  for (int k = 0; k < s.nin; ++k)
    for (char ch : s.in[k])
      if (!std::isalpha(static_cast<unsigned char>(ch))) c.bad("bad Einsum equation '" + eq + "'");
  if (arrow != std::string::npos) {
    s.out = clean.substr(arrow + 2);
  } else {  // implicit: labels that appear once, in alphabetical order
    std::string all = s.in[0] + s.in[1];
    for (char ch = 'A'; ch <= 'z'; ++ch)
      if (std::count(all.begin(), all.end(), ch) == 1) s.out += ch;
  }
  return s;
}

}  // namespace

void opEinsum(OpCtx& c) {
  auto it = c.node.attrs.find("equation");
  if (it == c.node.attrs.end()) c.bad("missing equation");
  const EinsumSpec s = parseEinsum(c, it->second.s);
  if (s.nin != c.nin()) c.bad("the equation names " + std::to_string(s.nin) + " operands");
  // every label's size, checked for agreement across operands
  int64_t size[128];
  bool known[128] = {};
  std::string labels;  // every distinct label: output labels first, then the summed ones
  for (int k = 0; k < s.nin; ++k) {
    const Buf& b = c.in(k);
    if (!isFloat(b.dt)) c.bad("Einsum supports float inputs");
    if (static_cast<int>(s.in[k].size()) != b.shape.rank) c.bad("operand " + std::to_string(k) + " has rank " + std::to_string(b.shape.rank) + ", the equation says " + std::to_string(s.in[k].size()));
    for (int d = 0; d < b.shape.rank; ++d) {
      const int l = s.in[k][d];
      if (known[l] && size[l] != b.shape[d]) c.bad(std::string("label '") + char(l) + "' has two sizes");
      known[l] = true, size[l] = b.shape[d];
    }
  }
  Shape os;
  for (char ch : s.out) {
    if (!known[static_cast<int>(ch)]) c.bad(std::string("output label '") + ch + "' is not an input label");
    if (labels.find(ch) != std::string::npos) c.bad("repeated output label");
    labels += ch;
    os.push(size[static_cast<int>(ch)]);
  }
  const size_t nout = labels.size();
  for (int k = 0; k < s.nin; ++k)
    for (char ch : s.in[k])
      if (labels.find(ch) == std::string::npos) labels += ch;
  if (labels.size() > static_cast<size_t>(2 * kMaxRank)) c.bad("too many labels");
  // strides of every label in every operand (a label repeated in one operand adds its strides: a diagonal)
  int64_t st[2][2 * kMaxRank] = {};
  for (int k = 0; k < s.nin; ++k) {
    int64_t ist[kMaxRank];
    contiguousStrides(c.in(k).shape, ist);
    for (size_t d = 0; d < s.in[k].size(); ++d) st[k][labels.find(s.in[k][d])] += ist[d];
  }
  const float* A = fin(c, 0);
  const float* B = s.nin == 2 ? fin(c, 1) : nullptr;
  FloatOut fo = floatOut(c, c.in(0).dt, os);
  int64_t sum_count = 1;
  for (size_t l = nout; l < labels.size(); ++l)
    if (!checkedMul(sum_count, size[static_cast<int>(labels[l])], &sum_count)) c.bad("the contraction is too large");
  const int64_t total = os.numel();
  int64_t oi[2 * kMaxRank] = {};
  for (int64_t o = 0; o < total; ++o) {
    int64_t base[2] = {0, 0};
    for (size_t l = 0; l < nout; ++l) base[0] += oi[l] * st[0][l], base[1] += oi[l] * st[1][l];
    double acc = 0;
    int64_t si[2 * kMaxRank] = {};
    for (int64_t t = 0; t < sum_count; ++t) {
      int64_t a = base[0], b = base[1];
      for (size_t l = nout; l < labels.size(); ++l) a += si[l] * st[0][l], b += si[l] * st[1][l];
      acc += B ? static_cast<double>(A[a]) * B[b] : A[a];
      for (size_t l = labels.size(); l-- > nout;) {
        if (++si[l] < size[static_cast<int>(labels[l])]) break;
        si[l] = 0;
      }
    }
    fo.p[o] = static_cast<float>(acc);
    for (size_t l = nout; l-- > 0;) {
      if (++oi[l] < os[static_cast<int>(l)]) break;
      oi[l] = 0;
    }
  }
  finish(fo);
}

// ---------------------------------------------------------------- ConvTranspose
void opConvTranspose(OpCtx& c) {
  const Buf& x = c.in(0);
  const Buf& w = c.in(1);
  if (!isFloat(x.dt) || w.dt != x.dt) c.bad("ConvTranspose supports float32 and float16 inputs of one type");
  if (x.shape.rank != 4 || w.shape.rank != 4) c.bad("ConvTranspose supports 2-D inputs [N, C, H, W]");
  int64_t kernel[2] = {w.shape[2], w.shape[3]};
  if (kernel[0] < 1 || kernel[1] < 1) c.bad("empty kernel " + w.shape.str());
  ConvGeom g = convGeom(c, 2, kernel);
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const int64_t group = c.node.attrInt("group", 1);
  if (group <= 0 || C % group || w.shape[0] != C) c.bad("input " + x.shape.str() + " does not fit weight " + w.shape.str());
  const int64_t Fg = w.shape[1], F = Fg * group, Cg = C / group;
  int64_t opad[2] = {0, 0};
  if (const auto* v = c.node.attrInts("output_padding"))
    for (int i = 0; i < 2 && i < static_cast<int>(v->size()); ++i) opad[i] = (*v)[i];
  if (c.node.attrInts("output_shape")) c.bad("output_shape is not supported; export explicit pads");
  int64_t OD[2];
  const int64_t in[2] = {H, W};
  for (int i = 0; i < 2; ++i) {
    if (in[i] > (int64_t{1} << 40)) c.bad("the input is too large");
    if (opad[i] < 0 || opad[i] >= std::max(g.s[i], g.d[i])) c.bad("output_padding must be smaller than the stride or dilation");
    OD[i] = g.s[i] * (in[i] - 1) + opad[i] + (g.k[i] - 1) * g.d[i] + 1 - g.p0[i] - g.p1[i];
    if (OD[i] <= 0) c.bad("the output would be empty");
  }
  const float* X = fin(c, 0);
  const float* Wt = fin(c, 1);
  const float* bias = c.has(2) ? fin(c, 2) : nullptr;
  if (bias && c.in(2).numel() != F) c.bad("bias has " + std::to_string(c.in(2).numel()) + " values for " + std::to_string(F) + " filters");
  FloatOut fo = floatOut(c, x.dt, Shape{N, F, OD[0], OD[1]});
  float* y = fo.p;
  const int64_t P = OD[0] * OD[1];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t f = 0; f < F; ++f)
      for (int64_t i = 0; i < P; ++i) y[(n * F + f) * P + i] = bias ? bias[f] : 0.f;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t ci = 0; ci < C; ++ci) {
      const int64_t gr = ci / Cg;
      const float* img = X + (n * C + ci) * H * W;
      for (int64_t fo_ = 0; fo_ < Fg; ++fo_) {
        const float* ker = Wt + (ci * Fg + fo_) * g.k[0] * g.k[1];
        float* out = y + (n * F + gr * Fg + fo_) * P;
        for (int64_t ih = 0; ih < H; ++ih)
          for (int64_t kh = 0; kh < g.k[0]; ++kh) {
            const int64_t oh = ih * g.s[0] - g.p0[0] + kh * g.d[0];
            if (oh < 0 || oh >= OD[0]) continue;
            for (int64_t iw = 0; iw < W; ++iw) {
              const float v = img[ih * W + iw];
              for (int64_t kw = 0; kw < g.k[1]; ++kw) {
                const int64_t ow = iw * g.s[1] - g.p0[1] + kw * g.d[1];
                if (ow >= 0 && ow < OD[1]) out[oh * OD[1] + ow] += v * ker[kh * g.k[1] + kw];
              }
            }
          }
      }
    }
  finish(fo);
}

}  // namespace crt::detail
