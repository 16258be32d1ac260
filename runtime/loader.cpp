// loader.cpp — an ONNX file into the runtime graph: read and validate (the file may come from anyone),
// then prepare it (pack weights, fold constants, mark shape-only nodes, liveness).
//
// What a crafted file cannot do (docs/security.md): make a size wrap (every size goes through
// size_check.h), make the loader allocate before it knows the data is there (lengths are checked
// first), ask for more memory than SessionOptions allows, read a file outside the model's folder
// (external data is resolved after following links), or define a name twice.
#include <onnx/onnx_pb.h>
#include <fcntl.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "runtime/internal.h"
#include "runtime/op_table.h"
#include "runtime/kernels.h"
#include "runtime/kv_cache.h"
#include "runtime/loader.h"
#include "runtime/matmul.h"
#include "runtime/model_file.h"
#include "runtime/thread_pool.h"

namespace crt::detail {
namespace {

// ------------------------------------------------------------------------------------------- types
bool supportedType(int t) {
  switch (t) {
    case 1: case 2: case 3: case 6: case 7: case 9: case 10: case 11: case 21: case 22: return true;
  }
  return false;
}

std::string typeName(int t) {
  static const char* names[] = {"undefined", "float32", "uint8", "int8", "uint16", "int16", "int32", "int64",
                                "string", "bool", "float16", "float64", "uint32", "uint64", "complex64",
                                "complex128", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
                                "float8e5m2fnuz", "uint4", "int4"};
  return t >= 0 && t < 23 ? names[t] : "type " + std::to_string(t);
}

// ------------------------------------------------------------------------------------------- files
/// The model file, open while the graph is read: the spans of the main graph's initializers' raw_data when the scan
/// (model_file.h) stripped them from the parsed proto, read from here one by one.
struct ModelFile {
  int fd = -1;
  std::string path;
  std::vector<RawSpan> spans;     // empty: the proto holds every raw_data
  std::map<int, RawSpan> deferred;  // float weights left in the file (value id -> bytes) until packed or materialized
  ModelFile() = default;
  ModelFile(const ModelFile&) = delete;
  ~ModelFile() {
    if (fd >= 0) ::close(fd);
  }
  /// Rows [r0, r0 + count) of deferred value v (rows of rowBytes) into buf; IoError when the file changed.
  const uint8_t* readRows(int v, int64_t r0, int64_t count, int64_t rowBytes, std::vector<uint8_t>& buf) const {
    const RawSpan& s = deferred.at(v);
    buf.resize(static_cast<size_t>(count * rowBytes));
    if (!readWeightBytes(fd, RawSpan{s.offset + r0 * rowBytes, count * rowBytes}, buf.data()))
      fail(StatusCode::IoError, "cannot read a weight's bytes from " + path + " (did the file change?)");
    return buf.data();
  }
  /// Initializer i's span in the file, or null (its bytes are in the proto, or it has none).
  const RawSpan* span(int i) const {
    return i >= 0 && static_cast<size_t>(i) < spans.size() && spans[static_cast<size_t>(i)].offset >= 0 ? &spans[static_cast<size_t>(i)]
                                                                                                        : nullptr;
  }
};

/// Parses the model from its file: its structure only where the scan can strip the weights (read later, once, into
/// their own memory), else the whole file in 1 MiB reads (an std::ifstream's small reads had taken a third of a
/// 538 MB model's load). IoError for what is not a readable regular file, ModelError for what is too large for
/// protobuf (2 GiB: larger models keep their weights in external data) or is not ONNX.
void parseModelFile(const std::string& path, onnx::ModelProto& model, ModelFile& file) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    fail(StatusCode::IoError, "cannot open " + path + ": " + std::strerror(errno) + " (crun expects an .onnx file from `compress`)");
  if (S_ISDIR(st.st_mode)) fail(StatusCode::IoError, path + " is a folder; give the .onnx file inside it");
  if (!S_ISREG(st.st_mode)) fail(StatusCode::IoError, path + " is not a regular file (a device, pipe or socket); give an .onnx file");
  if (st.st_size >= (int64_t{2} << 30))
    fail(StatusCode::ModelError, path + " is larger than 2 GiB, the protobuf limit; export with external data");
  file.path = path;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd < 0) fail(StatusCode::IoError, "cannot read " + path + ": " + std::strerror(errno));
  const auto invalid = [&] { fail(StatusCode::ModelError, path + " is not a valid ONNX model (protobuf parse failed; truncated or not ONNX?)"); };
  if (st.st_size == 0) invalid();
  StrippedModel stripped;
  if (stripWeights(file.fd, st.st_size, stripped) && model.ParseFromString(stripped.proto) &&
      static_cast<size_t>(model.graph().initializer_size()) == stripped.spans.size()) {
    file.spans = std::move(stripped.spans);
    return;
  }
  model.Clear();  // what protobuf says about the whole file is the error to report
  if (::lseek(file.fd, 0, SEEK_SET) != 0) fail(StatusCode::IoError, "cannot read " + path + ": " + std::strerror(errno));
  google::protobuf::io::FileInputStream in(file.fd, 1 << 20);
  const bool ok = model.ParseFromZeroCopyStream(&in);
  if (in.GetErrno() != 0) fail(StatusCode::IoError, "cannot read all of " + path + ": " + std::strerror(in.GetErrno()));
  if (!ok) invalid();
}

/// The folder of `path` with symlinks resolved ("" when it cannot be resolved).
std::string realFolder(const std::string& path) {
  const std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  char buf[PATH_MAX];
  return ::realpath(dir.c_str(), buf) ? std::string(buf) : std::string();
}

/// A non-negative decimal integer from an external_data entry, or a ModelError.
int64_t parseCount(const std::string& s, const std::string& what) {
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos)
    fail(StatusCode::ModelError, what + ": '" + s + "' is not a non-negative integer");
  return std::stoll(s);
}

/// Where an external tensor's bytes are: a regular file inside the model's folder (after following
/// links), holding `need` bytes at `offset`.
struct ExternalSpan {
  std::string file;
  int64_t offset = 0;
};

ExternalSpan resolveExternal(const onnx::TensorProto& t, const std::string& model_dir, int64_t need, const std::string& what) {
  std::string location;
  int64_t length = -1;
  ExternalSpan span;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") location = kv.value();
    else if (kv.key() == "offset") span.offset = parseCount(kv.value(), what + " external data offset");
    else if (kv.key() == "length") length = parseCount(kv.value(), what + " external data length");
  }
  if (location.empty() || location[0] == '/' || location.find("..") != std::string::npos || location.find('\0') != std::string::npos)
    fail(StatusCode::ModelError, what + ": bad external data location '" + location + "' (it must be a relative path inside the model's folder)");
  if (length >= 0 && length != need)
    fail(StatusCode::ModelError, what + ": external data length " + std::to_string(length) + " != " + std::to_string(need) + " bytes");
  if (model_dir.empty()) fail(StatusCode::ModelError, what + ": external data needs the model's folder (load the model from its file)");
  const std::string path = model_dir + "/" + location;
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) fail(StatusCode::IoError, what + ": cannot open external data file " + path + ": " + std::strerror(errno));
  span.file = buf;
  if (span.file.compare(0, model_dir.size() + 1, model_dir + "/") != 0)
    fail(StatusCode::ModelError, what + ": external data file " + path + " leads outside the model's folder (to " + span.file + ")");
  struct stat st{};
  if (::stat(span.file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    fail(StatusCode::ModelError, what + ": external data " + path + " is not a regular file");
  int64_t end = 0;
  if (!checkedAdd(span.offset, need, &end) || end > st.st_size)
    fail(StatusCode::ModelError, what + ": external data file " + path + " is shorter than the tensor (" + std::to_string(need) +
                                     " bytes at offset " + std::to_string(span.offset) + ", the file has " + std::to_string(st.st_size) + ")");
  return span;
}

// ------------------------------------------------------------------------------------------- tensors
/// The type and shape of a TensorProto, checked (supported type, rank, dims >= 0, no overflow, limits).
void tensorHeader(const onnx::TensorProto& t, const std::string& what, const Limits& limits, Buf& b) {
  if (!supportedType(t.data_type()))
    fail(StatusCode::ModelError, what + " has type " + typeName(t.data_type()) + ", which the runtime does not support");
  b.dt = static_cast<DType>(t.data_type());
  b.shape = Shape();
  if (t.dims_size() > kMaxRank) fail(StatusCode::ModelError, what + " has rank " + std::to_string(t.dims_size()) + ", above " + std::to_string(kMaxRank));
  for (int64_t d : t.dims()) {
    if (d < 0) fail(StatusCode::ModelError, what + " has a negative dim " + std::to_string(d));
    b.shape.push(d);
  }
  if (!b.shape.valid()) fail(StatusCode::ModelError, what + " has dims " + b.shape.str() + " with more than 2^48 elements");
  limits.checkTensor(static_cast<int64_t>(b.bytes()), what);
}

/// Values stored in the typed fields (float_data, int32_data, ...) for this type.
int64_t typedCount(const onnx::TensorProto& t, DType dt) {
  switch (dt) {
    case DType::F32: return t.float_data_size();
    case DType::F64: return t.double_data_size();
    case DType::I64: return t.int64_data_size();
    default: return t.int32_data_size();
  }
}

void copyTyped(const onnx::TensorProto& t, const Buf& b, char* dst, size_t need) {
  const int64_t n = b.numel();
  switch (b.dt) {
    case DType::F32: std::memcpy(dst, t.float_data().data(), need); break;
    case DType::F64: std::memcpy(dst, t.double_data().data(), need); break;
    case DType::I64: std::memcpy(dst, t.int64_data().data(), need); break;
    case DType::I32: std::memcpy(dst, t.int32_data().data(), need); break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(dst)[i] = static_cast<uint16_t>(t.int32_data(static_cast<int>(i)));
      break;
    default:  // int8, uint8, bool: one value per entry; packed 4-bit: one byte per entry
      for (size_t i = 0; i < need; ++i) dst[i] = static_cast<char>(t.int32_data(static_cast<int>(i)));
  }
}

/// Reads one initializer / Constant tensor into owned, aligned memory. Every length is checked before
/// anything is allocated. `raw`: where the file holds the tensor's raw_data when the proto does not (ModelFile).
std::shared_ptr<AlignedBytes> readTensor(const onnx::TensorProto& t, const std::string& model_dir, Graph& g, Buf& b,
                                         const ModelFile* file = nullptr, const RawSpan* raw = nullptr, bool* deferred = nullptr) {
  const std::string what = "initializer '" + t.name() + "'";
  tensorHeader(t, what, g.limits, b);
  const size_t need = b.bytes();
  ExternalSpan ext;
  const bool external = t.data_location() == onnx::TensorProto::EXTERNAL;
  const bool hasRaw = raw || t.has_raw_data();
  const size_t rawBytes = raw ? static_cast<size_t>(raw->size) : t.raw_data().size();
  if (external) {
    ext = resolveExternal(t, model_dir, static_cast<int64_t>(need), what);
  } else if (hasRaw) {
    if (rawBytes != need)
      fail(StatusCode::ModelError, what + ": raw data has " + std::to_string(rawBytes) + " bytes, its shape " + b.shape.str() + " needs " + std::to_string(need));
  } else {
    const bool packed4 = b.dt == kU4 || b.dt == kI4;
    const int64_t want = packed4 ? static_cast<int64_t>(need) : b.numel();
    if (typedCount(t, b.dt) != want)
      fail(StatusCode::ModelError, what + " holds " + std::to_string(typedCount(t, b.dt)) + " values, its shape " + b.shape.str() + " needs " + std::to_string(want));
  }
  g.limits.take(g.constant_bytes, static_cast<int64_t>(need), what);
  // A float matrix of 1 MiB or more stays in the file: a MatMul weight is packed straight from it (no copy of the
  // weight in new pages next to its panels), anything else is read when the packing is done (materializeDeferred).
  if (deferred && raw && !external && need >= (size_t{1} << 20) && b.shape.rank == 2 && (b.dt == DType::F32 || b.dt == DType::F16)) {
    b.data = nullptr;
    *deferred = true;
    return nullptr;
  }
  auto own = std::make_shared<AlignedBytes>(need);
  b.data = own->data();
  char* dst = static_cast<char*>(own->data());
  if (need == 0) return own;  // an empty tensor: nothing to read (and no buffer to copy to)
  if (external) {
    std::ifstream f(ext.file, std::ios::binary);
    f.seekg(ext.offset);
    f.read(dst, static_cast<std::streamsize>(need));
    if (!f || static_cast<size_t>(f.gcount()) != need) fail(StatusCode::IoError, what + ": cannot read external data from " + ext.file);
  } else if (raw) {
    if (!readWeightBytes(file->fd, *raw, dst)) fail(StatusCode::IoError, what + ": cannot read its bytes from " + file->path + " (did the file change?)");
  } else if (t.has_raw_data()) {
    std::memcpy(dst, t.raw_data().data(), need);
  } else {
    copyTyped(t, b, dst, need);
  }
  return own;
}

IoInfo ioInfo(const onnx::ValueInfoProto& v) {
  IoInfo io;
  io.name = v.name();
  if (!v.type().has_tensor_type()) fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' is not a tensor");
  const auto& tt = v.type().tensor_type();
  if (!supportedType(tt.elem_type()) || tt.elem_type() == static_cast<int>(kU4) || tt.elem_type() == static_cast<int>(kI4))
    fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' has type " + typeName(tt.elem_type()) +
                                     ", which the runtime does not take or return (4-bit types live inside the model only)");
  io.dtype = static_cast<DType>(tt.elem_type());
  if (tt.has_shape()) {
    if (tt.shape().dim_size() > kMaxRank) fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' has rank above " + std::to_string(kMaxRank));
    for (const auto& d : tt.shape().dim()) {
      if (d.has_dim_value() && d.dim_value() < 0)
        fail(StatusCode::ModelError, "graph input/output '" + v.name() + "' has a negative dim " + std::to_string(d.dim_value()));
      io.shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
      io.dim_names.push_back(d.has_dim_param() ? d.dim_param() : "");
    }
  }
  return io;
}

Attr readAttr(const onnx::AttributeProto& a) {
  Attr r;
  switch (a.type()) {
    case onnx::AttributeProto::INT: r.kind = Attr::Int; r.i = a.i(); break;
    case onnx::AttributeProto::FLOAT: r.kind = Attr::Float; r.f = a.f(); break;
    case onnx::AttributeProto::INTS: r.kind = Attr::Ints; r.ints.assign(a.ints().begin(), a.ints().end()); break;
    case onnx::AttributeProto::FLOATS: r.kind = Attr::Floats; r.floats.assign(a.floats().begin(), a.floats().end()); break;
    case onnx::AttributeProto::STRING: r.kind = Attr::String; r.s = a.s(); break;
    default: break;
  }
  return r;
}

/// Attribute ranges that hold for every op the runtime has: axes and permutations within the largest
/// rank, block sizes and kernel geometry positive and bounded. Ops check what depends on the data.
void checkAttributes(const Node& n) {
  auto bad = [&](const std::string& k, const std::string& why) {
    fail(StatusCode::ModelError, n.where() + ": attribute " + k + " " + why);
  };
  for (const auto& [k, a] : n.attrs) {
    if ((k == "axis" || k == "start" || k == "end") && a.kind == Attr::Int && (a.i < -kMaxRank || a.i > kMaxRank))
      bad(k, "= " + std::to_string(a.i) + " is outside [-" + std::to_string(kMaxRank) + ", " + std::to_string(kMaxRank) + "]");
    if ((k == "axes" || k == "perm") && a.kind == Attr::Ints) {
      if (a.ints.size() > static_cast<size_t>(kMaxRank)) bad(k, "has more than " + std::to_string(kMaxRank) + " entries");
      for (int64_t v : a.ints)
        if (v < -kMaxRank || v >= kMaxRank) bad(k, "entry " + std::to_string(v) + " is out of range");
    }
    if (k == "block_size" && a.kind == Attr::Int && (a.i < 0 || a.i > (int64_t{1} << 30)))
      bad(k, "= " + std::to_string(a.i) + " must be in [0, 2^30]");
    if ((k == "strides" || k == "dilations" || k == "kernel_shape") && a.kind == Attr::Ints)
      for (int64_t v : a.ints)
        if (v < 1 || v > (int64_t{1} << 20)) bad(k, "entry " + std::to_string(v) + " must be in [1, 2^20]");
    if (k == "pads" && a.kind == Attr::Ints)
      for (int64_t v : a.ints)
        if (v < 0 || v > (int64_t{1} << 20)) bad(k, "entry " + std::to_string(v) + " must be in [0, 2^20]");
    if (k == "group" && a.kind == Attr::Int && a.i < 1) bad(k, "must be >= 1");
  }
}

/// Heap allocation for constant folding at load: every buffer becomes a constant's storage.
class EagerAlloc : public Allocator {
 public:
  explicit EagerAlloc(Graph& g) : g_(g) {}
  void* output(int value, size_t bytes, int, bool) override {
    auto own = std::make_shared<AlignedBytes>(std::max<size_t>(bytes, 1));
    g_.values[value].own = own;
    return own->data();
  }
  void* scratch(size_t bytes, int, bool) override {
    scratch_.emplace_back(std::max<size_t>(bytes, 1));
    return scratch_.back().data();
  }
  void alias(int value, int src, size_t, int, bool) override { g_.values[value].own = g_.values[src].own; }

 private:
  Graph& g_;
  std::vector<AlignedBytes> scratch_;
};

// ------------------------------------------------------------------------------------------- reading
/// Builds the graph from the proto: every name is defined once (an initializer, a graph input or one
/// node output); every unsupported op is collected and reported at once.
class GraphReader {
 public:
  GraphReader(Graph& g, const std::string& path, const std::string& dir, ModelFile* file)
      : g_(g), path_(path), dir_(dir), file_(file) {}

  /// Reads the proto; each initializer's bytes are read from the file (file_'s spans) or released once copied, so the
  /// weights are held about once.
  void read(onnx::ModelProto& model) {
    for (const auto& kv : model.metadata_props()) g_.metadata[kv.key()] = kv.value();
    for (const auto& op : model.opset_import())
      if (op.domain().empty() || op.domain() == "ai.onnx") g_.opset = static_cast<int>(op.version());
    const onnx::GraphProto& gp = model.graph();
    for (int i = 0; i < gp.initializer_size(); ++i) {
      onnx::TensorProto& t = *model.mutable_graph()->mutable_initializer(i);
      const int id = define(t.name(), "an initializer");
      Value& v = g_.values[id];
      v.is_const = true;
      const RawSpan* span = file_ ? file_->span(i) : nullptr;
      bool deferred = false;
      v.own = readTensor(t, dir_, g_, v.constant, file_, span, &deferred);
      if (deferred) file_->deferred[id] = *span;
      if (t.has_raw_data()) std::string().swap(*t.mutable_raw_data());
    }
    for (const auto& in : gp.input()) {
      auto it = g_.by_name.find(in.name());
      if (it != g_.by_name.end() && g_.values[it->second].is_const && !inputs_seen_.count(in.name())) {
        inputs_seen_.insert(in.name());  // an initializer listed as an input (IR < 4): a constant here
        continue;
      }
      g_.inputs.push_back(define(in.name(), "a graph input"));
      inputs_seen_.insert(in.name());
      g_.input_info.push_back(ioInfo(in));
    }
    for (const auto& np : gp.node()) addNode(np);
    reportUnsupported();
    for (const auto& out : gp.output()) {
      auto it = g_.by_name.find(out.name());
      if (it == g_.by_name.end()) fail(StatusCode::ModelError, "graph output '" + out.name() + "' is produced by no node");
      g_.outputs.push_back(it->second);
      g_.output_info.push_back(ioInfo(out));
    }
    if (g_.outputs.empty()) fail(StatusCode::ModelError, path_ + ": the graph has no outputs");
  }

 private:
  int lookup(const std::string& name) {
    auto it = g_.by_name.find(name);
    if (it != g_.by_name.end()) return it->second;
    const int id = static_cast<int>(g_.values.size());
    Value v;
    v.name = name;
    g_.values.push_back(std::move(v));
    g_.by_name[name] = id;
    return id;
  }
  /// The value `name`, which `who` defines; a ModelError when something defined it already.
  int define(const std::string& name, const std::string& who) {
    if (name.empty()) fail(StatusCode::ModelError, path_ + ": " + who + " has an empty name");
    auto [it, fresh] = defined_by_.emplace(name, who);
    if (!fresh)
      fail(StatusCode::ModelError, path_ + ": '" + name + "' is defined twice, by " + it->second + " and by " + who +
                                       " (ONNX graphs assign every name once)");
    return lookup(name);
  }

  void addConstant(const onnx::NodeProto& np) {
    if (np.output_size() != 1) fail(StatusCode::ModelError, "Constant node '" + np.name() + "' needs one output");
    if (np.attribute_size() != 1) fail(StatusCode::ModelError, "Constant node '" + np.name() + "' needs exactly one value attribute");
    const auto& a = np.attribute(0);
    Value& v = g_.values[define(np.output(0), "Constant node '" + np.name() + "'")];
    if (a.name() == "value") {
      v.own = readTensor(a.t(), dir_, g_, v.constant);
    } else if (a.name() == "value_float" || a.name() == "value_int" || a.name() == "value_ints" || a.name() == "value_floats") {
      const bool isInt = a.name().find("int") != std::string::npos;
      const bool isList = a.name().back() == 's';
      const int64_t n = isList ? (isInt ? a.ints_size() : a.floats_size()) : 1;
      v.constant.dt = isInt ? DType::I64 : DType::F32;
      v.constant.shape = isList ? Shape{n} : Shape();
      g_.limits.take(g_.constant_bytes, static_cast<int64_t>(v.constant.bytes()), "Constant node '" + np.name() + "'");
      v.own = std::make_shared<AlignedBytes>(std::max<size_t>(v.constant.bytes(), 1));
      v.constant.data = v.own->data();
      for (int64_t i = 0; i < n; ++i) {
        if (isInt) v.constant.as<int64_t>()[i] = isList ? a.ints(static_cast<int>(i)) : a.i();
        else v.constant.as<float>()[i] = isList ? a.floats(static_cast<int>(i)) : a.f();
      }
    } else {
      unsupported_["Constant (sparse or string value)"]++;
      return;
    }
    v.is_const = true;
  }

  void addNode(const onnx::NodeProto& np) {
    if (np.op_type() == "Constant" && (np.domain().empty() || np.domain() == "ai.onnx")) return addConstant(np);
    Node n;
    n.op = np.op_type();
    n.domain = np.domain() == "ai.onnx" ? "" : np.domain();
    n.name = np.name().empty() ? np.op_type() + "_" + std::to_string(g_.nodes.size()) : np.name();
    for (const auto& a : np.attribute()) n.attrs[a.name()] = readAttr(a);
    for (const auto& i : np.input()) n.in.push_back(i.empty() ? -1 : lookup(i));
    for (int k = 0; k < np.output_size(); ++k) {
      const std::string& o = np.output(k);  // an omitted optional output still gets a value of its own
      n.out.push_back(o.empty() ? lookup("\x01unnamed:" + std::to_string(g_.nodes.size()) + ":" + std::to_string(k)) : define(o, n.where()));
    }
    n.fn = findOp(n.domain, n.op);
    if (!n.fn) unsupported_[(n.domain.empty() ? "" : n.domain + ".") + n.op]++;
    else checkArity(n);
    checkAttributes(n);
    if (n.fn && n.op == "ConstantOfShape") addFillValue(np, n);
    g_.nodes.push_back(std::move(n));
  }

  /// Input and output counts within the op table's bounds (trailing omitted inputs count as absent).
  static void checkArity(const Node& n) {
    const crt::OpInfo* info = findOpInfo(n.domain, n.op);
    if (!info) fail(StatusCode::Internal, n.where() + ": op has an implementation but no row in op_table.def");
    int nin = static_cast<int>(n.in.size());
    while (nin > 0 && n.in[nin - 1] < 0) --nin;
    if (nin < info->min_inputs || static_cast<int>(n.in.size()) > info->max_inputs)
      fail(StatusCode::ModelError, n.where() + " has " + std::to_string(n.in.size()) + " inputs; " + n.op + " takes " +
                                       std::to_string(info->min_inputs) + " to " + std::to_string(info->max_inputs));
    for (int i = 0; i < info->min_inputs; ++i)
      if (n.in[i] < 0) fail(StatusCode::ModelError, n.where() + ": required input " + std::to_string(i) + " is empty");
    // 1 to `outputs` outputs (trailing optional ones may be omitted); -1: any number, at least one
    const int nout = static_cast<int>(n.out.size());
    if (nout < 1 || (info->outputs >= 0 && nout > info->outputs))
      fail(StatusCode::ModelError, n.where() + " has " + std::to_string(nout) + " outputs; " + n.op + " has " +
                                       (info->outputs < 0 ? std::string("at least 1") : std::to_string(info->outputs)));
  }

  /// ConstantOfShape's `value` (a one-element tensor attribute) becomes a constant second input.
  void addFillValue(const onnx::NodeProto& np, Node& n) {
    for (const auto& a : np.attribute())
      if (a.name() == "value" && a.type() == onnx::AttributeProto::TENSOR) {
        Value& v = g_.values[lookup("\x01value:" + std::to_string(g_.nodes.size()))];
        v.own = readTensor(a.t(), dir_, g_, v.constant);
        v.is_const = true;
        if (v.constant.numel() != 1) fail(StatusCode::ModelError, n.where() + ": value must hold one element");
        n.in.push_back(static_cast<int>(&v - g_.values.data()));
      }
  }

  void reportUnsupported() const {
    if (unsupported_.empty()) return;
    std::string msg = path_ + ": the runtime does not support " + std::to_string(unsupported_.size()) + " op type(s): ";
    bool first = true;
    for (const auto& [op, count] : unsupported_) {
      msg += (first ? "" : ", ") + op + " (x" + std::to_string(count) + ")";
      first = false;
    }
    fail(StatusCode::ModelError, msg + ". Supported: see `crun ops`.");
  }

  Graph& g_;
  const std::string& path_;
  std::string dir_;
  ModelFile* file_;
  std::map<std::string, std::string> defined_by_;
  std::set<std::string> inputs_seen_;
  std::map<std::string, int> unsupported_;
};

/// Every value read is defined before it is read (an input, a constant or an earlier node's output).
void checkTopologicalOrder(Graph& g) {
  std::vector<char> defined(g.values.size(), 0);
  for (int i : g.inputs) defined[i] = 1;
  for (size_t i = 0; i < g.values.size(); ++i)
    if (g.values[i].is_const) defined[i] = 1;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    for (int v : g.nodes[ni].in)
      if (v >= 0 && !defined[v])
        fail(StatusCode::ModelError, g.nodes[ni].where() + " reads '" + g.values[v].name + "', which no earlier node, input or initializer defines (graph not topologically sorted?)");
    for (int v : g.nodes[ni].out) {
      g.values[v].producer = static_cast<int>(ni);
      defined[v] = 1;
    }
  }
  for (int o : g.outputs)
    if (!defined[o]) fail(StatusCode::ModelError, "graph output '" + g.values[o].name + "' is never computed");
}

// ------------------------------------------------------------------------------------------- preparing
bool isConst(const Graph& g, int v) { return v >= 0 && g.values[v].is_const; }

/// A MatMul weight to pack at load: node `node` then reads `in` and computes with pack()'s weight (none: the node stays).
struct PackJob {
  int node = -1;
  std::vector<int> in;
  std::function<std::shared_ptr<PackedWeight>()> pack;
};

/// Runs the jobs over the pool (each weight packs independently: the synthetic 110M-weight model's packing took 2 cores
/// instead of one), then gives each node its weight, in node order.
void runPackJobs(Graph& g, ThreadPool& pool, std::vector<PackJob>& jobs) {
  std::vector<std::shared_ptr<PackedWeight>> packed(jobs.size());
  pool.parallelForEach(static_cast<int64_t>(jobs.size()), [&](int64_t j) { packed[j] = jobs[j].pack(); });
  for (size_t j = 0; j < jobs.size(); ++j) {
    if (!packed[j]) continue;
    Node& n = g.nodes[jobs[j].node];
    n.packed = std::move(packed[j]);
    n.in = jobs[j].in;
  }
}

/// MatMulNBits, and MatMul whose B is DequantizeLinear of constants, get pre-packed weights.
void packQuantizedWeights(Graph& g, ThreadPool& pool) {
  std::vector<PackJob> jobs;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    if (n.packed) continue;  // the second call (after folding) sees the first one's work
    if (n.domain == "com.microsoft" && n.op == "MatMulNBits") {
      if (n.in.size() < 3 || !isConst(g, n.in[1]) || !isConst(g, n.in[2]) || (n.in.size() > 3 && n.in[3] >= 0 && !isConst(g, n.in[3])))
        fail(StatusCode::ModelError, n.where() + ": B, scales and zero_points must be initializers");
      if (n.in.size() > 4 && n.in[4] >= 0) fail(StatusCode::ModelError, n.where() + ": g_idx (act-order) is not supported");
      const Buf* zp = n.in.size() > 3 && n.in[3] >= 0 ? &g.values[n.in[3]].constant : nullptr;
      jobs.push_back({static_cast<int>(ni), {n.in[0], n.in.size() > 5 ? n.in[5] : -1},
                      [&g, &n, zp] { return packMatMulNBits(n, g.values[n.in[1]].constant, g.values[n.in[2]].constant, zp); }});
    } else if (n.domain.empty() && n.op == "MatMul" && n.in.size() == 2 && n.in[1] >= 0) {
      const int p = g.values[n.in[1]].producer;
      if (p < 0) continue;
      const Node& dq = g.nodes[p];
      if (dq.op != "DequantizeLinear" || !dq.domain.empty() || dq.in.size() < 2 || !isConst(g, dq.in[0]) || !isConst(g, dq.in[1]) ||
          (dq.in.size() > 2 && dq.in[2] >= 0 && !isConst(g, dq.in[2])))
        continue;
      const Buf* zp = dq.in.size() > 2 && dq.in[2] >= 0 ? &g.values[dq.in[2]].constant : nullptr;
      jobs.push_back({static_cast<int>(ni), {n.in[0]}, [&g, &dq, zp] {
                        return packDequantize(g.values[dq.in[0]].constant, g.values[dq.in[1]].constant, zp,
                                              dq.attrInt("axis", 1), dq.attrInt("block_size", 0));
                      }});
    }
  }
  runPackJobs(g, pool, jobs);
}

}  // namespace

void pruneUnused(Graph& g) {
  std::vector<char> needed(g.values.size(), 0);
  for (int o : g.outputs) needed[o] = 1;
  std::vector<Node> kept;
  std::vector<char> keep(g.nodes.size(), 0);
  for (int ni = static_cast<int>(g.nodes.size()) - 1; ni >= 0; --ni) {
    const Node& n = g.nodes[ni];
    bool any = false;
    for (int v : n.out) any |= needed[v] != 0;
    if (!any) continue;
    keep[ni] = 1;
    for (int v : n.in)
      if (v >= 0) needed[v] = 1;
  }
  for (size_t ni = 0; ni < g.nodes.size(); ++ni)
    if (keep[ni]) kept.push_back(std::move(g.nodes[ni]));
  g.nodes = std::move(kept);
  for (size_t v = 0; v < g.values.size(); ++v)
    if (!needed[v] && g.values[v].is_const) g.values[v].own.reset(), g.values[v].constant.data = nullptr;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni)
    for (int v : g.nodes[ni].out) g.values[v].producer = static_cast<int>(ni);
}

namespace {

/// Evaluates nodes whose inputs are all constants (weight transposes, casts, shape arithmetic on
/// constants) once; returns how many were folded. What they allocate counts against the limits. With
/// keepWeightDequant, a DequantizeLinear feeding a MatMul's B stays (its now-constant integers are packed
/// next, instead of being expanded to fp32: a compact sparse weight rebuilt at load, export/sparse_weights.h).
/// `guard`: the load's time limit (Limits::max_run_ms).
int foldConstants(Graph& g, ThreadPool& pool, const Kernels& k, bool keepWeightDequant, RunGuard& guard) {
  std::vector<int> uses(g.values.size(), 0);
  std::vector<char> matmulB(g.values.size(), 0);
  for (const Node& n : g.nodes) {
    for (int v : n.in)
      if (v >= 0) ++uses[v];
    if (n.domain.empty() && n.op == "MatMul" && n.in.size() == 2 && n.in[1] >= 0) matmulB[n.in[1]] = 1;
  }
  for (int o : g.outputs) ++uses[o];
  std::vector<Buf> vals(g.values.size());
  EagerAlloc alloc(g);
  RunEnv env{&g, vals.data(), &alloc, &pool, &k, 0, g.constant_bytes};
  std::vector<Node> live;
  int folded = 0;
  for (Node& n : g.nodes) {
    bool allConst = !n.in.empty() && !n.packed;
    for (int v : n.in)
      if (v >= 0 && !g.values[v].is_const) allConst = false;
    if (keepWeightDequant && n.domain.empty() && n.op == "DequantizeLinear" && matmulB[n.out[0]]) allConst = false;
    if (!allConst) {
      live.push_back(std::move(n));
      continue;
    }
    for (int v : n.in)
      if (v >= 0) vals[v] = g.values[v].constant;
    guard.check(n);
    OpCtx c{env, n};
    try {
      n.fn(c);
    } catch (const Failure& e) {
      fail(StatusCode::ModelError, std::string("while folding constants: ") + e.what());
    }
    for (int v : n.out) {
      g.values[v].is_const = true;
      g.values[v].constant = vals[v];
      g.values[v].producer = -1;
    }
    for (int v : n.in)
      if (v >= 0 && --uses[v] == 0) g.values[v].own.reset(), g.values[v].constant.data = nullptr;
    ++folded;
  }
  g.nodes = std::move(live);
  g.constant_bytes = env.used;
  return folded;
}

/// The constant W when `v` is Transpose(W) of a 2-D W (perm [1, 0] or none), else -1.
int transposedConstant(const Graph& g, int v) {
  const int p = g.values[v].producer;
  if (p < 0) return -1;
  const Node& t = g.nodes[p];
  if (!t.domain.empty() || t.op != "Transpose" || t.in.size() != 1 || !isConst(g, t.in[0]) || g.values[t.in[0]].constant.shape.rank != 2)
    return -1;
  const std::vector<int64_t>* perm = t.attrInts("perm");
  return !perm || *perm == std::vector<int64_t>{1, 0} ? t.in[0] : -1;
}

/// MatMul with a constant float B, or with B = Transpose(constant W) (packed from W, before folding would transpose it):
/// pre-pack it as panels or rows of the output. A constant read by this MatMul alone is freed once packed. Before
/// folding (`transposedOnly`) only the second kind and weights still in the file (`file`'s deferred ones, packed
/// from it): a MatMul whose inputs constant subgraphs compute is folded whole.
void packDenseWeights(Graph& g, ThreadPool& pool, bool transposedOnly, const ModelFile* file) {
  std::vector<int> uses(g.values.size(), 0);
  for (const Node& n : g.nodes)
    for (int v : n.in)
      if (v >= 0) ++uses[v];
  for (int o : g.outputs) ++uses[o];
  std::vector<PackJob> jobs;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    // (a MatMul of two constants is left to folding, which computes it once)
    if (!n.domain.empty() || n.op != "MatMul" || n.packed || n.in.size() != 2 || n.in[1] < 0 || isConst(g, n.in[0])) continue;
    const int b = n.in[1], t = isConst(g, b) ? -1 : transposedConstant(g, b);
    const bool bInFile = file && file->deferred.count(b);
    if (t < 0 && (transposedOnly ? !bInFile : !isConst(g, b))) continue;
    const int w = t >= 0 ? t : b;
    // (the only reader: this MatMul, or a Transpose whose only reader is this MatMul; so no other job frees it)
    const bool last = uses[w] == 1 && (t < 0 || uses[b] == 1);
    const ModelFile* source = file && file->deferred.count(w) ? file : nullptr;
    jobs.push_back({static_cast<int>(ni), {n.in[0]}, [&g, w, transposed = t >= 0, last, source] {
                      Buf& c = g.values[w].constant;
                      std::vector<uint8_t> buf;  // (a block of the weight's rows read from the file)
                      const int64_t rowBytes = c.shape.rank == 2 ? c.shape[1] * static_cast<int64_t>(dtypeSize(c.dt)) : 0;
                      auto p = source ? packDense(c, transposed,
                                                  [&](int64_t r0, int64_t count) { return source->readRows(w, r0, count, rowBytes, buf); })
                                      : packDense(c, transposed);
                      if (p && last) g.values[w].own.reset(), c.data = nullptr;  // the packed copy replaces it
                      return p;
                    }});
  }
  runPackJobs(g, pool, jobs);
}

/// Reads the deferred weights something still reads (a tied embedding, a weight no MatMul packed) into memory.
void materializeDeferred(Graph& g, ModelFile* file) {
  if (!file || file->deferred.empty()) return;
  std::vector<char> read(g.values.size(), 0);
  for (const Node& n : g.nodes)
    for (int v : n.in)
      if (v >= 0) read[v] = 1;
  for (int o : g.outputs) read[o] = 1;
  for (const auto& [v, span] : file->deferred) {
    Value& value = g.values[v];
    if (!read[v] || !value.is_const) continue;
    value.own = std::make_shared<AlignedBytes>(static_cast<size_t>(span.size));
    value.constant.data = value.own->data();
    if (!readWeightBytes(file->fd, span, value.own->data()))
      fail(StatusCode::IoError, "initializer '" + value.name + "': cannot read its bytes from " + file->path + " (did the file change?)");
  }
  file->deferred.clear();
}

/// 64-bit FNV-1a over 8-byte words (and the tail's bytes): equal constants' key; mergeDuplicates confirms with memcmp.
uint64_t contentHash(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  for (; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/// The node's identity for mergeDuplicates: op, attributes (floats by their bits) and inputs (canonical ids).
std::string nodeKey(const Node& n, const std::vector<int>& canonical) {
  std::string key = n.domain + '/' + n.op + '(';
  for (int v : n.in) key += std::to_string(v < 0 ? -1 : canonical[v]) + ',';
  key += ')';
  const auto bits = [](float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return std::to_string(b);
  };
  for (const auto& [name, a] : n.attrs) {
    key += name + '=' + std::to_string(static_cast<int>(a.kind)) + ':';
    switch (a.kind) {
      case Attr::Int: key += std::to_string(a.i); break;
      case Attr::Float: key += bits(a.f); break;
      case Attr::Ints:
        for (int64_t e : a.ints) key += std::to_string(e) + ',';
        break;
      case Attr::Floats:
        for (float e : a.floats) key += bits(e) + ',';
        break;
      case Attr::String: key += std::to_string(a.s.size()) + ':' + a.s; break;
      case Attr::None: break;
    }
    key += ';';
  }
  return key;
}

}  // namespace

int mergeDuplicates(Graph& g) {
  // constants of the same type, shape and bytes are one value (exporters write the same axes and scalars many times,
  // and GPT-2 a causal table per layer); every other value is itself until merged. (Weights are packed by now.)
  std::vector<int> canonical(g.values.size());
  std::map<std::string, std::vector<int>> constants;  // type, shape, hash -> values with that key
  for (size_t v = 0; v < g.values.size(); ++v) {
    canonical[v] = static_cast<int>(v);
    const Value& x = g.values[v];
    if (!x.is_const || !x.constant.data) continue;
    const size_t bytes = x.constant.bytes();
    const auto* data = static_cast<const uint8_t*>(x.constant.data);
    const std::string key = std::to_string(static_cast<int>(x.constant.dt)) + ':' + x.constant.shape.str() + ':' +
                            std::to_string(contentHash(data, bytes));
    std::vector<int>& same = constants[key];
    for (int o : same)
      if (std::memcmp(g.values[o].constant.data, data, bytes) == 0) {
        canonical[v] = o;
        break;
      }
    if (canonical[v] == static_cast<int>(v)) same.push_back(static_cast<int>(v));
  }
  std::vector<char> output(g.values.size(), 0);
  for (int o : g.outputs) output[o] = 1;
  std::map<std::string, int> seen;  // key -> node
  int merged = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node& n = g.nodes[i];
    for (int& v : n.in)
      if (v >= 0) v = canonical[v];
    bool mergeable = !n.packed && !n.out.empty();
    for (int o : n.out) mergeable = mergeable && !output[o];  // (a graph output keeps its own node and name)
    if (!mergeable) continue;
    auto [it, fresh] = seen.emplace(nodeKey(n, canonical), static_cast<int>(i));
    if (fresh) continue;
    const Node& first = g.nodes[it->second];
    for (size_t k = 0; k < n.out.size(); ++k) canonical[n.out[k]] = first.out[k];
    ++merged;  // (its outputs are read nowhere now: pruneUnused drops it)
  }
  return merged;
}

namespace {

/// Values whose shape changes from run to run within one plan: an in-session KV cache's past views
/// (Value::per_run_shape), the attention scores over its rows ([.., S, T]) and what is computed from them, up to the
/// products with the values ([.., S, D] again). A Shape of one of them is not static: the plan recorded at the full
/// capacity would replay T = capacity for every step (a mask built from Shape(scores) failed to broadcast).
std::vector<char> perRunShapes(const Graph& g) {
  std::vector<char> per(g.values.size(), 0);
  for (size_t v = 0; v < g.values.size(); ++v) per[v] = g.values[v].per_run_shape;
  for (const Node& n : g.nodes) {
    if (isKvAttention(n) && !kvOutputSpansCache(n)) continue;  // ([.., S, D]: no T)
    bool any = kvOutputSpansCache(n);
    for (int v : n.in) any = any || (v >= 0 && per[v]);
    if (any)
      for (int o : n.out) per[o] = 1;
  }
  return per;
}

/// Static nodes (their outputs depend only on input shapes and constants) run once per plan.
void markStatic(Graph& g) {
  const std::vector<char> perRun = perRunShapes(g);
  for (Node& n : g.nodes) {
    bool st = n.domain.empty() && opHas(n.op, op_trait::ShapeOnly) && !(n.in.size() == 1 && n.in[0] >= 0 && perRun[n.in[0]]);
    if (!st) {
      bool anyStatic = false, allOk = !n.in.empty() && !n.packed;
      for (int v : n.in) {
        if (v < 0) continue;
        if (g.values[v].is_static) anyStatic = true;
        else if (!g.values[v].is_const) allOk = false;
      }
      st = allOk && anyStatic;
    }
    n.is_static = st;
    for (int v : n.out) g.values[v].is_static = st;
  }
}

/// Liveness: the last node reading each value.
void computeLiveness(Graph& g) {
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    for (int v : g.nodes[ni].in)
      if (v >= 0) g.values[v].last_use = static_cast<int>(ni);
    for (int v : g.nodes[ni].out) g.values[v].producer = static_cast<int>(ni);
  }
  for (int o : g.outputs) g.values[o].last_use = INT_MAX;
}

}  // namespace

namespace {

void parseModel(const std::string& bytes, const std::string& name, onnx::ModelProto& model) {
  if (bytes.empty() || !model.ParseFromString(bytes))
    fail(StatusCode::ModelError, name + " is not a valid ONNX model (protobuf parse failed; truncated or not ONNX?)");
}

Graph buildGraph(onnx::ModelProto& model, ModelFile* file, const std::string& name, const std::string& model_dir,
                 const Limits& limits, ThreadPool& pool, const Kernels& k, SessionInfo& info);

}  // namespace

Graph loadGraph(const std::string& path, const Limits& limits, ThreadPool& pool, const Kernels& k, SessionInfo& info) {
  onnx::ModelProto model;
  ModelFile file;
  parseModelFile(path, model, file);
  return buildGraph(model, &file, path, realFolder(path), limits, pool, k, info);
}

Graph loadGraphBytes(const std::string& bytes, const std::string& name, const std::string& model_dir, const Limits& limits,
                     ThreadPool& pool, const Kernels& k, SessionInfo& info) {
  onnx::ModelProto model;
  parseModel(bytes, name, model);
  return buildGraph(model, nullptr, name, model_dir, limits, pool, k, info);
}

namespace {

Graph buildGraph(onnx::ModelProto& model, ModelFile* file, const std::string& name, const std::string& model_dir,
                 const Limits& limits, ThreadPool& pool, const Kernels& k, SessionInfo& info) {
  Graph g;
  g.limits = limits;
  GraphReader(g, name, model_dir, file).read(model);
  info.nodes = static_cast<int>(g.nodes.size());
  checkTopologicalOrder(g);
  packDenseWeights(g, pool, true, file);  // (first: weights still in the file, and a weight's Transpose packed from the weight)
  pruneUnused(g);
  materializeDeferred(g, file);  // what else reads them
  packQuantizedWeights(g, pool);
  pruneUnused(g);
  RunGuard guard(limits.max_run_ms, nullptr, "folding constants at load");
  info.folded = foldConstants(g, pool, k, true, guard);
  pruneUnused(g);                 // (also renumbers the producers after folding)
  packQuantizedWeights(g, pool);  // integers that were computed by constant subgraphs
  pruneUnused(g);
  info.folded += foldConstants(g, pool, k, false, guard);  // what could not be packed is expanded as before
  packDenseWeights(g, pool, false, nullptr);
  pruneUnused(g);
  if ((info.merged = mergeDuplicates(g)) > 0) pruneUnused(g);
  for (const Node& n : g.nodes)
    if (n.packed) {
      ++info.packed_matmuls;
      info.weight_bytes += n.packed->bytes();
    }
  prepareRuns(g);
  return g;
}

}  // namespace

void prepareRuns(Graph& g) {
  for (Value& v : g.values) v.last_use = -1, v.is_static = false;
  markStatic(g);
  computeLiveness(g);
}

}  // namespace crt::detail
