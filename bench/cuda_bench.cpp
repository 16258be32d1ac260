// cuda_bench — the CUDA backend's MatMul at LLM shapes against the GPU's own copy bandwidth, in one run:
// for each weight format (fp32, int8 per channel, int4-g32 MatMulNBits) and shape (4096x4096, 4096x11008,
// 11008x4096, 8192x28672) a chain of MatMuls (x -> W1 -> W2 -> ...; random weights, built in memory, so the
// device check ships no model files) runs as one crun session on the GPU with 1 row (GEMV: decode) and 128 / 512
// rows (dequantize + cuBLAS: prefill). Prints one JSON object per line: shape, format, rows, ms per MatMul,
// weight GB/s (bytes of the packed weight read per MatMul / time) and its fraction of the device-to-device copy
// bandwidth (cudaMemcpy of 1 GiB, read + write bytes / time) measured first. Run by bench/cuda.sh.
// Usage: cuda_bench [--quick]   (--quick: 4096x4096 only, fewer runs)
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "runtime/crt.h"
#include "runtime/cuda/cuda_backend.h"

namespace {

struct Chain {
  std::string format;
  int64_t n0, n1;  // the chain alternates n0 -> n1 -> n0 ...
  int layers;
};

void addInit(onnx::GraphProto* g, const std::string& name, std::vector<int64_t> dims, int type, std::string bytes) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(type);
  for (auto d : dims) t->add_dims(d);
  t->set_raw_data(std::move(bytes));
}

void attr(onnx::NodeProto* n, const std::string& k, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(k);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

std::string randomBytes(size_t n, std::mt19937_64& rng) {
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(&s[i], &v, 8);
  }
  return s;
}

/// A chain of `c.layers` MatMuls on weights of format c.format, as ONNX bytes.
std::string chainModel(const Chain& c) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  auto* ms = m.add_opset_import();
  ms->set_domain("com.microsoft");
  ms->set_version(1);
  auto* g = m.mutable_graph();
  g->set_name("chain");
  std::mt19937_64 rng(42);
  auto io = [&](bool in, const std::string& name, int64_t cols) {
    auto* v = in ? g->add_input() : g->add_output();
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(1);
    t->mutable_shape()->add_dim()->set_dim_param("rows");
    t->mutable_shape()->add_dim()->set_dim_value(cols);
  };
  io(true, "x0", c.n0);
  std::string prev = "x0";
  for (int l = 0; l < c.layers; ++l) {
    const int64_t K = l % 2 == 0 ? c.n0 : c.n1, N = l % 2 == 0 ? c.n1 : c.n0;
    const std::string w = "w" + std::to_string(l), y = "x" + std::to_string(l + 1);
    if (c.format == "fp32") {
      std::vector<float> v(static_cast<size_t>(K * N));
      std::normal_distribution<float> nd(0.f, 1.f / std::sqrt(static_cast<float>(K)));
      for (auto& e : v) e = nd(rng);
      addInit(g, w, {K, N}, 1, std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
      auto* n = g->add_node();
      n->set_op_type("MatMul");
      n->add_input(prev), n->add_input(w), n->add_output(y);
    } else if (c.format == "int8") {
      addInit(g, w + "q", {K, N}, 3, randomBytes(static_cast<size_t>(K * N), rng));  // int8, symmetric
      std::vector<float> s(static_cast<size_t>(N), 1.f / (64.f * std::sqrt(static_cast<float>(K))));
      addInit(g, w + "s", {N}, 1, std::string(reinterpret_cast<const char*>(s.data()), s.size() * 4));
      auto* dq = g->add_node();
      dq->set_op_type("DequantizeLinear");
      dq->add_input(w + "q"), dq->add_input(w + "s"), dq->add_output(w);
      attr(dq, "axis", 1);
      auto* n = g->add_node();
      n->set_op_type("MatMul");
      n->add_input(prev), n->add_input(w), n->add_output(y);
    } else {
      const int64_t block = 32, nblk = (K + block - 1) / block;
      addInit(g, w + "q", {N, nblk, block / 2}, 2, randomBytes(static_cast<size_t>(N * nblk * block / 2), rng));
      std::vector<float> s(static_cast<size_t>(N * nblk), 1.f / (8.f * std::sqrt(static_cast<float>(K))));
      addInit(g, w + "s", {N * nblk}, 1, std::string(reinterpret_cast<const char*>(s.data()), s.size() * 4));
      auto* n = g->add_node();
      n->set_op_type("MatMulNBits");
      n->set_domain("com.microsoft");
      n->add_input(prev), n->add_input(w + "q"), n->add_input(w + "s"), n->add_output(y);
      attr(n, "K", K), attr(n, "N", N), attr(n, "bits", 4), attr(n, "block_size", block);
    }
    prev = y;
  }
  io(false, prev, c.layers % 2 == 0 ? c.n0 : c.n1);
  std::string bytes;
  m.SerializeToString(&bytes);
  return bytes;
}

double medianMs(crt::Session& s, const std::vector<float>& x, int64_t rows, int64_t cols, int runs) {
  std::vector<crt::TensorView> out;
  const std::vector<std::pair<std::string, crt::TensorView>> feeds = {{"x0", crt::TensorView::of(x.data(), {rows, cols})}};
  for (int i = 0; i < 3; ++i)
    if (!s.run(feeds, out).ok()) return -1;
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!s.run(feeds, out).ok()) return -1;
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::string why;
  if (crt::detail::cudaDeviceCount(&why) == 0) {
    std::fprintf(stderr, "cuda_bench: %s\n", why.c_str());
    return 1;
  }
  const double copy = crt::detail::cudaCopyBandwidth(size_t{1} << 30);
  std::printf("{\"engine\": \"copy\", \"gb_s\": %.1f}\n", copy);
  const std::vector<std::pair<int64_t, int64_t>> shapes =
      quick ? std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}}
            : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {4096, 11008}, {11008, 4096}, {8192, 28672}};
  for (const auto& [n0, n1] : shapes)
    for (const std::string fmt : {"fp32", "int8", "int4"}) {
      const double bytesPerParam = fmt == "fp32" ? 4 : fmt == "int8" ? 1 : 0.5;
      // about 1 GiB of weights per chain (an even number of layers, at least 2), under protobuf's 2 GiB
      const double pair = 2.0 * static_cast<double>(n0 * n1) * (fmt == "fp32" ? 4 : 1);
      if (pair > 1.5e9) {
        std::printf("{\"shape\": \"%lldx%lld\", \"format\": \"%s\", \"skipped\": \"over protobuf's 2 GiB in one file\"}\n",
                    static_cast<long long>(n0), static_cast<long long>(n1), fmt.c_str());
        continue;
      }
      const int layers = std::max(2, static_cast<int>(1.07e9 / pair) * 2);
      crt::SessionOptions so;
      so.device = crt::Device::Cuda;
      auto s = crt::Session::createFromMemory(chainModel({fmt, n0, n1, layers}), so);
      if (!s.ok()) {
        std::fprintf(stderr, "cuda_bench: %s\n", s.status().message.c_str());
        return 1;
      }
      const double weightBytes = static_cast<double>(s->info().weight_bytes) / layers;
      for (int64_t rows : {int64_t{1}, int64_t{128}, int64_t{512}}) {
        std::vector<float> x(static_cast<size_t>(rows * n0), 0.5f);
        const double ms = medianMs(*s, x, rows, n0, quick ? 5 : 20) / layers;
        const double gbs = weightBytes / (ms * 1e6);
        std::printf("{\"shape\": \"%lldx%lld\", \"format\": \"%s\", \"rows\": %lld, \"layers\": %d, \"ms\": %.4f, "
                    "\"weight_gb_s\": %.1f, \"of_copy\": %.3f, \"tflops\": %.2f, \"bytes_per_param\": %.2f}\n",
                    static_cast<long long>(n0), static_cast<long long>(n1), fmt.c_str(), static_cast<long long>(rows), layers, ms, gbs,
                    gbs / copy, 2.0 * rows * n0 * n1 / (ms * 1e9), bytesPerParam);
        std::fflush(stdout);
      }
    }
  return 0;
}
