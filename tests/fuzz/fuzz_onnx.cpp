// fuzz_onnx.cpp — the runtime on arbitrary .onnx bytes: load (parse, validate, fold, pack), then two runs
// (the first records a memory plan, the second replays it) with small inputs of the shapes the model
// declares. A bad model may fail with a Status that is not Internal; nothing may crash or leak. The file loader's
// wire-format scan (runtime/model_file.h) runs on the same bytes and must agree with protobuf's parse. Inputs are
// mutated structurally (onnx_mutator.h); a run over the time limit stops with a clean error.
#include <onnx/onnx_pb.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "runtime/crt.h"
#include "runtime/model_file.h"
#include "runtime/size_check.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/onnx_mutator.h"

namespace {

void check(const crt::Status& st) {
  if (st.code == crt::StatusCode::Internal) fuzz::bug("internal error: " + st.message);
}

}  // namespace

/// A cached decoder (past.N inputs) again with the in-session KV cache: a prefill and two one-token steps.
void runWithKvCache(const std::string& bytes, crt::SessionOptions o) {
  o.kv_capacity = 8;
  o.kv_if_present = true;
  o.last_position_logits = true;
  auto s = crt::Session::createFromMemory(bytes, o);
  if (!s) return check(s.status());
  if (!s->hasKvCache()) return;
  const std::vector<int64_t> ids = {1, 3, 2, 0}, ones(8, 1);
  for (int64_t n : {2, 1, 1}) {
    std::vector<std::pair<std::string, crt::TensorView>> feeds;
    for (size_t i = 0; i < s->inputs().size(); ++i) {
      const crt::IoInfo& io = s->inputs()[i];
      if (io.dtype != crt::DType::I64) return;
      if (i == 0) feeds.push_back({io.name, crt::TensorView::of(ids.data(), {1, n})});
      else feeds.push_back({io.name, crt::TensorView::of(ones.data(), {1, s->kvLength() + n})});
    }
    std::vector<crt::TensorView> outs;
    const crt::Status st = s->run(feeds, outs);
    check(st);
    if (!st.ok()) return;
  }
}

/// The same runs on the emulated device (placement, copies, device plans): the CPU's bytes, or a bug.
void compareEmulated(const std::string& bytes, crt::SessionOptions o, const std::vector<std::pair<std::string, crt::TensorView>>& feeds,
                     const std::vector<std::vector<uint8_t>>& cpu) {
  o.device = crt::Device::Emulated;
  auto s = crt::Session::createFromMemory(bytes, o);
  if (!s) return fuzz::bug("the emulated device refused a model the CPU ran: " + s.status().message);
  for (int run = 0; run < 2; ++run) {
    std::vector<crt::TensorView> outs;
    const crt::Status st = s->run(feeds, outs);
    // (its copies are tensors of their own, so a model at the memory limit may go over it, and its copies take time
    // too, so one near the time limit may go over that; nothing else may fail)
    if (!st.ok() && st.code == crt::StatusCode::DataError && st.message.find("memory") != std::string::npos) return;
    if (st.code == crt::StatusCode::Stopped) return;
    if (!st.ok()) return fuzz::bug("the emulated device failed where the CPU ran: " + st.message);
    if (outs.size() != cpu.size()) return fuzz::bug("the emulated device gave another number of outputs");
    for (size_t i = 0; i < outs.size(); ++i)
      if (outs[i].bytes() != cpu[i].size() || (!cpu[i].empty() && std::memcmp(outs[i].data, cpu[i].data(), cpu[i].size()) != 0))
        return fuzz::bug("the emulated device's output " + std::to_string(i) + " differs from the CPU's");
  }
}

/// The scan of a file holding `bytes`: when it strips them and protobuf parses the rest, protobuf parses the whole
/// bytes too, to the same initializers, and each span holds the raw_data protobuf read.
void checkWeightScan(const std::string& bytes) {
  const int fd = ::memfd_create("fuzz-onnx", MFD_CLOEXEC);
  if (fd < 0) return;
  crt::detail::StrippedModel stripped;
  onnx::ModelProto parsed, whole;
  if (::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()) &&
      crt::detail::stripWeights(fd, static_cast<int64_t>(bytes.size()), stripped) && parsed.ParseFromString(stripped.proto)) {
    if (!whole.ParseFromString(bytes)) fuzz::bug("the weight scan stripped a file protobuf cannot parse");
    if (static_cast<size_t>(whole.graph().initializer_size()) != stripped.spans.size() ||
        parsed.graph().initializer_size() != whole.graph().initializer_size())
      fuzz::bug("the weight scan counted another number of initializers than protobuf");
    for (int i = 0; i < whole.graph().initializer_size(); ++i) {
      const onnx::TensorProto& t = whole.graph().initializer(i);
      const crt::detail::RawSpan span = stripped.spans[static_cast<size_t>(i)];
      std::string raw(static_cast<size_t>(span.offset >= 0 ? span.size : 0), '\0');
      if ((span.offset >= 0) != t.has_raw_data() || parsed.graph().initializer(i).has_raw_data() ||
          (span.offset >= 0 && (!crt::detail::readWeightBytes(fd, span, raw.data()) || raw != t.raw_data())))
        fuzz::bug("the weight scan's raw_data of initializer " + std::to_string(i) + " is not protobuf's");
    }
  }
  ::close(fd);
}

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  return fuzz::mutateOnnx(data, size, max_size, seed);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  checkWeightScan(bytes);
  crt::SessionOptions o;
  o.threads = 1;
  o.max_tensor_bytes = int64_t{64} << 20;
  o.max_total_bytes = int64_t{256} << 20;
  o.max_run_ms = 2000;  // (libFuzzer's -timeout is 10 s an input: a long but legal model is not a finding)
  auto s = crt::Session::createFromMemory(bytes, o);
  if (!s) return check(s.status()), 0;
  std::vector<std::vector<uint8_t>> storage;
  std::vector<std::pair<std::string, crt::TensorView>> feeds;
  uint32_t seed = static_cast<uint32_t>(size);
  for (const crt::IoInfo& io : s->inputs()) {
    std::vector<int64_t> shape;
    for (int64_t d : io.shape) shape.push_back(d < 0 ? 2 : d);  // symbolic dims: 2
    int64_t n = 0;
    if (!crt::checkedNumel(shape.data(), shape.size(), &n) || n > (1 << 16)) return 0;
    const size_t es = crt::dtypeSize(io.dtype);
    storage.emplace_back(static_cast<size_t>(n) * es + 1);
    uint8_t* p = storage.back().data();
    for (int64_t i = 0; i < n; ++i) {
      seed = seed * 1664525u + 1013904223u;
      if (io.dtype == crt::DType::F32) {
        const float v = static_cast<float>(static_cast<int32_t>(seed >> 8) % 2000) / 1000.f;
        std::memcpy(p + i * es, &v, 4);
      } else if (io.dtype == crt::DType::I64) {
        const int64_t v = (seed >> 16) % 4;
        std::memcpy(p + i * es, &v, 8);
      } else if (io.dtype == crt::DType::I32) {
        const int32_t v = (seed >> 16) % 4;
        std::memcpy(p + i * es, &v, 4);
      } else {
        std::memset(p + i * es, static_cast<int>((seed >> 16) & 1), es);
      }
    }
    feeds.push_back({io.name, crt::TensorView{io.dtype, shape, p}});
  }
  std::vector<std::vector<uint8_t>> cpu;  // the last run's outputs
  for (int run = 0; run < 2; ++run) {
    std::vector<crt::TensorView> outs;
    const crt::Status st = s->run(feeds, outs);
    check(st);
    if (!st.ok()) break;
    cpu.clear();
    for (const auto& t : outs) {  // every output byte is readable
      const uint8_t* q = static_cast<const uint8_t*>(t.data);
      cpu.emplace_back(q, q + t.bytes());
    }
  }
  if (!cpu.empty()) compareEmulated(bytes, o, feeds, cpu);
  runWithKvCache(bytes, o);
  return 0;
}
