// graph.cpp — IR helpers, the verifier and the canonical dump.
#include "compress/graph.h"

#include <fnmatch.h>

#include <algorithm>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "compress/error.h"

namespace compress {

const char* dtypeName(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::UInt8: return "uint8";
    case DType::Int8: return "int8";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::Float16: return "float16";
    case DType::Float64: return "float64";
    case DType::BFloat16: return "bfloat16";
    case DType::Undefined: break;
  }
  return "undefined";
}

DType dtypeFromName(const std::string& n) {
  static const std::map<std::string, DType> k = {
      {"float32", DType::Float32}, {"float", DType::Float32},  {"uint8", DType::UInt8},
      {"int8", DType::Int8},       {"int32", DType::Int32},    {"int64", DType::Int64},
      {"bool", DType::Bool},       {"float16", DType::Float16}, {"float64", DType::Float64},
      {"bfloat16", DType::BFloat16}};
  auto it = k.find(n);
  if (it == k.end())
    fail(ErrorCategory::Config, "unknown dtype '" + n +
                                    "': use one of float32, float16, bfloat16, float64, int64, int32, int8, uint8, bool");
  return it->second;
}

DType dtypeFromScalarType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float32;
    case at::kByte: return DType::UInt8;
    case at::kChar: return DType::Int8;
    case at::kInt: return DType::Int32;
    case at::kLong: return DType::Int64;
    case at::kBool: return DType::Bool;
    case at::kHalf: return DType::Float16;
    case at::kDouble: return DType::Float64;
    case at::kBFloat16: return DType::BFloat16;
    default: break;
  }
  fail(ErrorCategory::Model, std::string("tensor type ") + c10::toString(t) + " is not supported by the IR");
}

at::ScalarType toScalarType(DType t) {
  switch (t) {
    case DType::Float32: return at::kFloat;
    case DType::UInt8: return at::kByte;
    case DType::Int8: return at::kChar;
    case DType::Int32: return at::kInt;
    case DType::Int64: return at::kLong;
    case DType::Bool: return at::kBool;
    case DType::Float16: return at::kHalf;
    case DType::Float64: return at::kDouble;
    case DType::BFloat16: return at::kBFloat16;
    case DType::Undefined: break;
  }
  fail(ErrorCategory::Internal, "undefined dtype has no tensor type");
}

std::string shapeStr(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + s[i].str();
  return out + "]";
}

int64_t Node::attrInt(const std::string& key, int64_t def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  if (auto p = std::get_if<int64_t>(&it->second)) return *p;
  fail(ErrorCategory::Internal, "attribute " + key + " of node " + name + " is not an int");
}

double Node::attrFloat(const std::string& key, double def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  if (auto p = std::get_if<double>(&it->second)) return *p;
  if (auto p = std::get_if<int64_t>(&it->second)) return static_cast<double>(*p);
  fail(ErrorCategory::Internal, "attribute " + key + " of node " + name + " is not a float");
}

std::vector<int64_t> Node::attrInts(const std::string& key) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return {};
  if (auto p = std::get_if<std::vector<int64_t>>(&it->second)) return *p;
  fail(ErrorCategory::Internal, "attribute " + key + " of node " + name + " is not an int list");
}

int Graph::producer(const std::string& v) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs)
      if (o == v) return static_cast<int>(i);
  return -1;
}

std::vector<int> Graph::consumers(const std::string& v) const {
  std::vector<int> out;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (std::find(nodes[i].inputs.begin(), nodes[i].inputs.end(), v) != nodes[i].inputs.end())
      out.push_back(static_cast<int>(i));
  return out;
}

std::string Graph::freshName(const std::string& base) const {
  auto used = [&](const std::string& n) {
    if (values.count(n) || initializers.count(n)) return true;
    for (const auto& nd : nodes)
      if (nd.name == n) return true;
    return false;
  };
  if (!used(base)) return base;
  for (int i = 1;; ++i) {
    std::string n = base + "_" + std::to_string(i);
    if (!used(n)) return n;
  }
}

int64_t Graph::parameterCount() const {
  int64_t n = 0;
  for (const auto& p : parameters)
    if (initializers.count(p)) n += initializers.at(p).numel();
  for (const auto& [w, q] : quant) {
    (void)q;
    auto it = initializers.find(w + ".qdata");
    if (it != initializers.end()) n += it->second.numel();
  }
  return n;
}

int64_t Graph::parameterBytes() const {
  int64_t b = 0;
  for (const auto& p : parameters)
    if (initializers.count(p)) {
      const auto& t = initializers.at(p);
      b += t.numel() * static_cast<int64_t>(t.element_size());
    }
  for (const auto& [w, q] : quant)
    if (initializers.count(w + ".qdata")) b += weightBytes(w);
  return b;
}

int64_t Graph::weightBytes(const std::string& w) const {
  auto f = initializers.find(w);
  if (f != initializers.end()) return f->second.numel() * static_cast<int64_t>(f->second.element_size());
  auto q = quant.find(w);
  auto qd = initializers.find(w + ".qdata");
  if (q == quant.end() || qd == initializers.end()) return 0;
  int64_t b = (qd->second.numel() * q->second.bits + 7) / 8;
  auto sc = initializers.find(w + ".scale");
  if (sc != initializers.end()) b += sc->second.numel() * static_cast<int64_t>(sc->second.element_size());
  auto zp = initializers.find(w + ".zero_point");
  if (zp != initializers.end()) b += (zp->second.numel() * q->second.bits + 7) / 8;
  return b;
}

Graph Graph::clone() const {
  Graph g = *this;
  for (auto& [n, t] : g.initializers) t = t.clone();
  for (auto& [n, sp] : g.sparsity) sp.mask = sp.mask.clone();
  return g;
}

void Graph::pruneUnused() {
  std::unordered_set<std::string> used(outputs.begin(), outputs.end());
  // Walk backwards so dead chains disappear in one sweep.
  std::vector<Node> kept;
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    bool live = false;
    for (const auto& o : it->outputs) live = live || used.count(o);
    if (!live) continue;
    for (const auto& i : it->inputs) used.insert(i);
    kept.push_back(*it);
  }
  std::reverse(kept.begin(), kept.end());
  nodes = std::move(kept);
  for (const auto& i : inputs) used.insert(i);
  for (auto it = initializers.begin(); it != initializers.end();) {
    if (!used.count(it->first)) {
      parameters.erase(it->first);
      it = initializers.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = values.begin(); it != values.end();) it = used.count(it->first) ? std::next(it) : values.erase(it);
  for (auto it = aliases.begin(); it != aliases.end();)
    it = initializers.count(it->second) ? std::next(it) : aliases.erase(it);
}

std::vector<LinearRef> findLinears(const Graph& g) {
  std::unordered_map<std::string, int> producer;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& o : g.nodes[i].outputs) producer[o] = static_cast<int>(i);
  auto isWeight = [&](const std::string& v) {
    if (g.isInitializer(v)) return g.initializers.at(v).dim() == 2 && g.initializers.at(v).is_floating_point();
    auto p = producer.find(v);
    return p != producer.end() && g.nodes[p->second].op == "DequantizeLinear" && g.quant.count(v);
  };
  std::vector<LinearRef> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op != "MatMul" || n.inputs.size() != 2) continue;
    const std::string& b = n.inputs[1];
    if (isWeight(b)) {
      out.push_back({static_cast<int>(i), b, false});
      continue;
    }
    auto p = producer.find(b);
    if (p == producer.end()) continue;
    const Node& t = g.nodes[p->second];
    if (t.op == "Transpose" && t.attrInts("perm") == std::vector<int64_t>{1, 0} && isWeight(t.inputs[0]))
      out.push_back({static_cast<int>(i), t.inputs[0], true});
  }
  return out;
}

std::vector<ConvRef> findConvs(const Graph& g) {
  std::vector<ConvRef> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.op != "Conv" || n.inputs.size() < 2 || !g.isInitializer(n.inputs[1])) continue;
    const at::Tensor& w = g.initializers.at(n.inputs[1]);
    if ((w.dim() != 3 && w.dim() != 4) || !w.is_floating_point()) continue;
    out.push_back({static_cast<int>(i), n.inputs[1], n.attrInt("group", 1)});
  }
  return out;
}

at::Tensor weightMatrix(const at::Tensor& w) { return w.dim() == 2 ? w : w.reshape({w.size(0), -1}); }

Node linearTranspose(const Graph& g, const std::string& w) {
  Node tr;
  tr.op = "Transpose";
  tr.name = g.freshName("transpose." + w);
  tr.inputs = {w};
  tr.outputs = {g.freshName(w + ".T")};
  tr.attrs["perm"] = std::vector<int64_t>{1, 0};
  return tr;
}

int canonicalizeLinearLayout(Graph& g) {
  auto linears = findLinears(g);
  std::sort(linears.begin(), linears.end(), [](const LinearRef& a, const LinearRef& b) { return a.node > b.node; });
  int changed = 0;
  for (const auto& l : linears) {  // from the last node back, so earlier indices stay valid
    const std::string& w = l.weight;
    if (l.transposed || !g.isInitializer(w) || g.consumers(w).size() != 1) continue;
    if (std::find(g.outputs.begin(), g.outputs.end(), w) != g.outputs.end()) continue;
    at::Tensor& t = g.initializers.at(w);
    t = t.t().contiguous();
    ValueInfo& vi = g.values[w];
    ValueInfo view = vi;  // the [in, out] view the MatMul reads
    if (vi.shape && vi.shape->size() == 2) std::swap((*vi.shape)[0], (*vi.shape)[1]);
    Node tr = linearTranspose(g, w);
    tr.source = g.nodes[static_cast<size_t>(l.node)].source;
    g.values[tr.outputs[0]] = view;
    g.nodes[static_cast<size_t>(l.node)].inputs[1] = tr.outputs[0];
    g.nodes.insert(g.nodes.begin() + l.node, std::move(tr));
    ++changed;
  }
  return changed;
}

std::vector<std::string> namesOf(const Graph& g, const std::string& weight) {
  std::vector<std::string> names = {weight};
  for (const auto& [alias, target] : g.aliases)
    if (target == weight) names.push_back(alias);
  return names;
}

static bool globMatch(const std::string& pattern, const std::string& name) {
  if (fnmatch(pattern.c_str(), name.c_str(), 0) == 0) return true;
  // "layers.0.wq" also names "layers.0.wq.weight": a pattern may stop at a module boundary.
  return fnmatch((pattern + ".*").c_str(), name.c_str(), 0) == 0;
}

std::vector<std::string> selectWeights(const Graph& g, const std::vector<std::string>& targets,
                                       const std::vector<std::string>& ignore, std::vector<std::string>* unmatched) {
  std::vector<std::pair<std::string, const char*>> layers;  // weight, the keyword that selects its kind
  for (const auto& l : findLinears(g)) layers.emplace_back(l.weight, "Linear");
  for (const auto& c : findConvs(g)) layers.emplace_back(c.weight, "Conv");
  std::vector<std::string> out;
  std::set<std::string> seen;
  std::vector<bool> used(targets.size(), false);
  for (const auto& [weight, kind] : layers) {
    if (!seen.insert(weight).second) continue;
    auto names = namesOf(g, weight);
    bool hit = false;
    for (size_t t = 0; t < targets.size(); ++t) {
      bool m = targets[t] == kind;
      for (const auto& n : names) m = m || globMatch(targets[t], n);
      if (m) used[t] = true, hit = true;
    }
    if (!hit) continue;
    bool skip = false;
    for (const auto& p : ignore)
      for (const auto& n : names) skip = skip || globMatch(p, n);
    if (!skip) out.push_back(weight);
  }
  if (unmatched)
    for (size_t t = 0; t < targets.size(); ++t)  // a kind keyword may find none of its kind (no convs in an LM)
      if (!used[t] && targets[t] != "Linear" && targets[t] != "Conv") unmatched->push_back(targets[t]);
  return out;
}

std::vector<std::string> selectPassTargets(const Graph& g, const std::string& pass, const std::vector<std::string>& targets,
                                           const std::vector<std::string>& ignore) {
  std::vector<std::string> unmatched;
  auto weights = selectWeights(g, targets, ignore, &unmatched);
  if (!unmatched.empty())
    fail(ErrorCategory::Config, pass + ": target pattern '" + unmatched[0] +
                                    "' matched no linear or conv weight (see `compress inspect MODEL` for names)");
  return weights;
}

void verify(const Graph& g) {
  std::vector<std::string> problems;
  std::unordered_set<std::string> defined;
  for (const auto& i : g.inputs) {
    if (!defined.insert(i).second) problems.push_back("graph input '" + i + "' is declared twice");
  }
  for (const auto& [name, t] : g.initializers) {
    if (!defined.insert(name).second) problems.push_back("'" + name + "' is both a graph input and an initializer");
    if (!t.defined()) problems.push_back("initializer '" + name + "' has no tensor");
  }
  std::unordered_set<std::string> node_names;
  for (const auto& n : g.nodes) {
    if (!n.name.empty() && !node_names.insert(n.name).second)
      problems.push_back("node name '" + n.name + "' is used twice");
    for (const auto& i : n.inputs)
      if (!i.empty() && !defined.count(i))
        problems.push_back("node '" + n.name + "' (" + n.op + ") reads '" + i + "' before it is defined");
    for (const auto& o : n.outputs) {
      if (o.empty()) continue;
      if (!defined.insert(o).second) problems.push_back("value '" + o + "' has more than one producer");
    }
  }
  for (const auto& o : g.outputs)
    if (!defined.count(o)) problems.push_back("graph output '" + o + "' is never produced");
  // Dangling: every node output is read by someone or is a graph output.
  std::unordered_set<std::string> read(g.outputs.begin(), g.outputs.end());
  for (const auto& n : g.nodes) read.insert(n.inputs.begin(), n.inputs.end());
  for (const auto& n : g.nodes) {
    bool any = false;
    for (const auto& o : n.outputs) any = any || read.count(o);
    if (!any) problems.push_back("node '" + n.name + "' (" + n.op + ") produces nothing that is used");
  }
  for (const auto& [name, t] : g.initializers)
    if (!read.count(name)) problems.push_back("initializer '" + name + "' is never used");
  // Value info: dtypes known, initializer shapes as recorded.
  for (const auto& v : defined) {
    auto it = g.values.find(v);
    if (it == g.values.end()) {
      problems.push_back("value '" + v + "' has no type information");
      continue;
    }
    if (it->second.dtype == DType::Undefined) problems.push_back("value '" + v + "' has an undefined dtype");
    auto init = g.initializers.find(v);
    if (init != g.initializers.end() && init->second.defined()) {
      if (dtypeFromScalarType(init->second.scalar_type()) != it->second.dtype)
        problems.push_back("initializer '" + v + "' is " + c10::toString(init->second.scalar_type()) +
                           " but its value info says " + dtypeName(it->second.dtype));
      if (it->second.shape) {
        const Shape& s = *it->second.shape;
        bool ok = static_cast<int64_t>(s.size()) == init->second.dim();
        for (size_t d = 0; ok && d < s.size(); ++d) ok = s[d].isFixed() && s[d].value == init->second.size(d);
        if (!ok) problems.push_back("initializer '" + v + "' has shape " + c10::str(init->second.sizes()) +
                                    " but its value info says " + shapeStr(s));
      }
    }
  }
  // Shape consistency of linear layers: the weight's input dim must match the activation's last dim.
  for (const auto& lin : findLinears(g)) {
    const Node& n = g.nodes[lin.node];
    auto xi = g.values.find(n.inputs[0]);
    auto wi = g.values.find(lin.weight);
    if (xi == g.values.end() || wi == g.values.end() || !xi->second.shape || !wi->second.shape) continue;
    const Shape& xs = *xi->second.shape;
    const Shape& ws = *wi->second.shape;
    if (xs.empty() || ws.size() != 2) continue;
    const Dim& k = ws[lin.transposed ? 1 : 0];
    if (xs.back().isFixed() && k.isFixed() && xs.back().value != k.value)
      problems.push_back("MatMul '" + n.name + "': input has " + xs.back().str() + " features but weight '" +
                         lin.weight + "' expects " + k.str());
  }
  for (const auto& [w, q] : g.quant) {
    if (q.bits < 2 || q.bits > 8) problems.push_back("quantized weight '" + w + "' has " + std::to_string(q.bits) + " bits");
    auto qd = g.initializers.find(w + ".qdata");
    auto sc = g.initializers.find(w + ".scale");
    if (qd == g.initializers.end() || sc == g.initializers.end()) {
      problems.push_back("quantized weight '" + w + "' lacks its .qdata or .scale initializer");
      continue;
    }
    bool grouped = q.group_size > 0;
    int64_t groups = grouped ? (qd->second.size(1) + q.group_size - 1) / q.group_size : 1;
    bool ok = qd->second.dim() == 2 && sc->second.size(0) == qd->second.size(0) &&
              (grouped ? sc->second.dim() == 2 && sc->second.size(1) == groups : sc->second.dim() == 1);
    if (!ok)
      problems.push_back("quantized weight '" + w + "': scales " + c10::str(sc->second.sizes()) + " do not fit data " +
                         c10::str(qd->second.sizes()) + " with group size " + std::to_string(q.group_size));
    int p = g.producer(w);
    if (p < 0 || g.nodes[p].op != "DequantizeLinear")
      problems.push_back("quantized weight '" + w + "' is not produced by a DequantizeLinear node");
  }
  for (const auto& [w, s] : g.sparsity) {
    // Quantized weights are checked by shape only: their zeros sit at the zero point, not at 0.
    const at::Tensor* t = nullptr;
    bool quantized = false;
    if (g.initializers.count(w)) t = &g.initializers.at(w);
    else if (g.initializers.count(w + ".qdata")) t = &g.initializers.at(w + ".qdata"), quantized = true;
    if (!t) {
      problems.push_back("sparsity mask for '" + w + "' has no weight");
      continue;
    }
    if (!s.mask.defined() || s.mask.sizes() != t->sizes())
      problems.push_back("sparsity mask for '" + w + "' does not match the weight's shape");
    else if (!quantized && (t->masked_select(s.mask.logical_not()) != 0).any().item<bool>())
      problems.push_back("weight '" + w + "' has non-zero values where its mask prunes them");
  }
  if (!problems.empty()) {
    std::string msg = "graph verification failed (" + std::to_string(problems.size()) + " problem" +
                      (problems.size() > 1 ? "s" : "") + "):";
    for (const auto& p : problems) msg += "\n  - " + p;
    fail(ErrorCategory::Internal, msg);
  }
}

uint64_t tensorHash(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0, n = c.nbytes(); i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static std::string attrStr(const Attribute& a) {
  std::ostringstream os;
  os << std::setprecision(9);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, double>) {
          os << v;
        } else if constexpr (std::is_same_v<T, std::string>) {
          os << '"' << v << '"';
        } else {
          os << '[';
          for (size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
          os << ']';
        }
      },
      a);
  return os.str();
}

std::string dumpGraph(const Graph& g, bool with_hashes) {
  std::ostringstream os;
  auto info = [&](const std::string& v) {
    auto it = g.values.find(v);
    if (it == g.values.end()) return std::string("?");
    return std::string(dtypeName(it->second.dtype)) + (it->second.shape ? shapeStr(*it->second.shape) : "[?]");
  };
  for (const auto& i : g.inputs) os << "input " << i << ": " << info(i) << "\n";
  for (const auto& [name, t] : g.initializers) {
    os << (g.parameters.count(name) ? "param " : "const ") << name << ": " << info(name);
    if (with_hashes) os << " #" << std::hex << std::setw(16) << std::setfill('0') << tensorHash(t) << std::dec;
    if (t.numel() <= 8 && t.dim() <= 1) {
      os << " = ";
      os << "{";
      if (t.is_floating_point()) {
        auto d = t.to(at::kDouble).reshape({-1});
        for (int64_t k = 0; k < d.numel(); ++k) os << (k ? "," : "") << d[k].item<double>();
      } else {
        auto d = t.to(at::kLong).reshape({-1});
        for (int64_t k = 0; k < d.numel(); ++k) os << (k ? "," : "") << d[k].item<int64_t>();
      }
      os << "}";
    }
    os << "\n";
  }
  for (const auto& [alias, target] : g.aliases) os << "tied " << alias << " = " << target << "\n";
  for (const auto& [w, q] : g.quant)
    os << "quant " << w << ": bits=" << q.bits << " group=" << q.group_size << (q.symmetric ? " sym" : " asym")
       << " method=" << q.method << "\n";
  for (const auto& [w, s] : g.sparsity) {
    double kept = s.mask.to(at::kDouble).mean().item<double>();
    os << "sparse " << w << ": " << std::fixed << std::setprecision(4) << (1.0 - kept) << std::defaultfloat
       << std::setprecision(6) << "\n";
  }
  for (const auto& n : g.nodes) {
    os << "node " << n.name << ": ";
    for (size_t i = 0; i < n.outputs.size(); ++i) os << (i ? ", " : "") << n.outputs[i];
    os << " = " << (n.domain.empty() ? "" : n.domain + ".") << n.op << "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) os << (i ? ", " : "") << n.inputs[i];
    os << ")";
    if (!n.attrs.empty()) {
      os << " {";
      bool first = true;
      for (const auto& [k, a] : n.attrs) {
        os << (first ? "" : ", ") << k << "=" << attrStr(a);
        first = false;
      }
      os << "}";
    }
    if (!n.outputs.empty()) os << " -> " << info(n.outputs[0]);
    os << "\n";
  }
  for (const auto& o : g.outputs) os << "output " << o << ": " << info(o) << "\n";
  return os.str();
}

std::pair<std::vector<std::string>, int64_t> dimsKey(const Shape& s, size_t n) {
  std::vector<std::string> syms;
  int64_t prod = 1;
  for (size_t i = 0; i < n && i < s.size(); ++i) {
    if (s[i].isFixed()) {
      prod *= s[i].value;
      continue;
    }
    for (size_t b = 0, e; b <= s[i].symbol.size(); b = e + 1) {
      e = s[i].symbol.find('*', b);
      if (e == std::string::npos) e = s[i].symbol.size();
      syms.push_back(s[i].symbol.substr(b, e - b));
    }
  }
  std::sort(syms.begin(), syms.end());
  return {syms, prod};
}

namespace {

std::optional<std::vector<int64_t>> initializerInts(const Graph& g, const std::string& v) {
  if (v.empty() || !g.isInitializer(v)) return std::nullopt;
  at::Tensor t = g.initializers.at(v).to(at::kLong).reshape({-1}).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

int64_t valueRank(const Graph& g, const std::string& v) {
  if (g.isInitializer(v)) return g.initializers.at(v).dim();
  auto it = g.values.find(v);
  return it == g.values.end() || !it->second.shape ? -1 : static_cast<int64_t>(it->second.shape->size());
}

}  // namespace

std::optional<std::vector<ShapeSource>> traceShapeVector(const Graph& g, const std::string& v, int reader, size_t input) {
  if (auto c = initializerInts(g, v)) {
    std::vector<ShapeSource> out;
    for (size_t j = 0; j < c->size(); ++j) out.push_back({ShapeSource::Const, (*c)[j], reader, input, static_cast<int64_t>(j), {}, 0});
    return out;
  }
  const int p = g.producer(v);
  if (p < 0) return std::nullopt;
  const Node& n = g.nodes[static_cast<size_t>(p)];
  if (n.op == "Shape") {
    const int64_t r = valueRank(g, n.inputs[0]);
    if (r < 0) return std::nullopt;
    int64_t lo = n.attrInt("start", 0), hi = n.attrInt("end", r);
    lo = std::clamp(lo < 0 ? lo + r : lo, int64_t{0}, r), hi = std::clamp(hi < 0 ? hi + r : hi, int64_t{0}, r);
    std::vector<ShapeSource> out;
    for (int64_t j = lo; j < hi; ++j) out.push_back({ShapeSource::Dim, 0, -1, 0, 0, n.inputs[0], j});
    return out;
  }
  if (n.op == "Concat") {
    std::vector<ShapeSource> out;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      auto part = traceShapeVector(g, n.inputs[k], p, k);
      if (!part) return std::nullopt;
      if (part->size() == 1) (*part)[0].piece_node = p, (*part)[0].piece_input = k;
      out.insert(out.end(), part->begin(), part->end());
    }
    return out;
  }
  if (n.op == "Unsqueeze" || n.op == "Squeeze" || n.op == "Cast" || n.op == "Identity") return traceShapeVector(g, n.inputs[0], p, 0);
  if (n.op == "Mul") {
    auto a = traceShapeVector(g, n.inputs[0], p, 0), b = traceShapeVector(g, n.inputs[1], p, 1);
    if (!a || !b || (a->size() != b->size() && a->size() != 1 && b->size() != 1)) return std::nullopt;
    std::vector<ShapeSource> out;
    for (size_t j = 0; j < std::max(a->size(), b->size()); ++j) {
      ShapeSource x = (*a)[a->size() == 1 ? 0 : j], y = (*b)[b->size() == 1 ? 0 : j];
      if (x.kind == ShapeSource::Const) std::swap(x, y);
      ShapeSource r;  // Unknown unless one factor is a constant
      if (y.kind == ShapeSource::Const && x.kind == ShapeSource::Dim) {
        r = x, r.scale *= y.value;
        if (x.scale == 1 && y.node >= 0) r.scale_node = y.node, r.scale_input = y.input, r.scale_index = y.index;
      }
      else if (y.kind == ShapeSource::Const && x.kind == ShapeSource::Const) r.kind = ShapeSource::Const, r.value = x.value * y.value;
      out.push_back(r);
    }
    return out;
  }
  if (n.op != "Gather" && n.op != "Slice") return std::nullopt;
  auto data = traceShapeVector(g, n.inputs[0], p, 0);
  if (!data) return std::nullopt;
  const int64_t len = static_cast<int64_t>(data->size());
  std::vector<int64_t> pick;
  if (n.op == "Gather") {
    auto idx = initializerInts(g, n.inputs[1]);
    if (!idx) return std::nullopt;
    pick = *idx;
  } else {
    auto starts = initializerInts(g, n.inputs[1]), ends = initializerInts(g, n.inputs[2]);
    if (!starts || !ends || starts->size() != 1 || ends->size() != 1 || (n.inputs.size() > 4 && !n.inputs[4].empty())) return std::nullopt;
    int64_t lo = (*starts)[0], hi = (*ends)[0];
    lo = std::clamp(lo < 0 ? lo + len : lo, int64_t{0}, len), hi = std::clamp(hi < 0 ? hi + len : hi, int64_t{0}, len);
    for (int64_t j = lo; j < hi; ++j) pick.push_back(j);
  }
  std::vector<ShapeSource> out;
  for (int64_t j : pick) {
    if (j < 0) j += len;
    if (j < 0 || j >= len) return std::nullopt;
    out.push_back((*data)[static_cast<size_t>(j)]);
  }
  return out;
}

}  // namespace compress
