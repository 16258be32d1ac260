#include "compress/report.h"

#include "compress/svg.h"
#include "compress/task.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>
#include <fstream>
#include <iomanip>
#include <iomanip>
#include <sstream>
#include <thread>

namespace compress {

using json = nlohmann::json;

std::string humanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string fnv1a64Hex(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

json hostEnvironment() {
  json e;
  char host[256] = "";
  ::gethostname(host, sizeof host - 1);
  e["hostname"] = host;
  struct utsname u;
  if (::uname(&u) == 0) e["os"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) {
      e["cpu"] = line.substr(line.find(':') + 2);
      break;
    }
  e["logical_cores"] = std::thread::hardware_concurrency();
  std::time_t now = std::time(nullptr);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  e["time_utc"] = ts;
  return e;
}

static std::string fmt(double v, int prec = 4) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(prec);
  os << v;
  return os.str();
}

namespace {

void mdHeader(std::ostream& md, const json& r) {
  md << "# Compression report\n\n";
  md << "- Recipe: `" << r["recipe"]["path"].get<std::string>() << "` (hash " << r["recipe"]["fnv1a64"].get<std::string>() << ")\n";
  md << "- Model: `" << r["model"]["path"].get<std::string>() << "` — " << r["model"]["params"].get<int64_t>() << " parameters, "
     << humanBytes(r["model"]["bytes"].get<double>()) << "\n";
  md << "- Task: " << r["task"].get<std::string>() << "\n\n";
}

void mdAccuracy(std::ostream& md, const json& r) {
  const json& a = r["accuracy"];
  md << "## Accuracy\n\n| | " << a["metric"].get<std::string>() << " |\n|---|---|\n";
  md << "| baseline | " << fmt(a["baseline"].get<double>()) << " |\n";
  md << "| compressed | " << fmt(a["final"].get<double>()) << " |\n";
  md << "| change | " << (a["degradation"].get<double>() >= 0 ? "+" : "") << fmt(100 * a["degradation"].get<double>(), 2) << "% "
     << (metricFor(a["metric"].get<std::string>()).lower_is_better ? "(higher " + a["metric"].get<std::string>() + " is worse)" : std::string("(relative loss)")) << " |\n\n";
  if (a["gate"] != "none")
    md << "Accuracy gate: **" << (a["gate"] == "pass" ? "PASS" : "FAIL") << "** (allowed "
       << fmt(100 * a["max_degradation"].get<double>(), 2) << "%)\n\n";
  const Metric& metric = metricFor(a["metric"].get<std::string>());
  if (a.contains("metric_reason")) md << "Metric: " << a["metric"].get<std::string>() << " — " << metric.description << " (" << a["metric_reason"].get<std::string>() << ").\n\n";
  md << "Evaluated on " << a["count"].get<int64_t>() << (metric.counts == "tokens" ? " scored tokens" : " " + metric.counts) << ".\n\n";
}

void mdSize(std::ostream& md, const json& r) {
  md << "## Size\n\n| | parameters | bytes |\n|---|---|---|\n";
  md << "| baseline | " << r["model"]["params"].get<int64_t>() << " | " << humanBytes(r["model"]["bytes"].get<double>()) << " |\n";
  md << "| compressed | " << r["compressed"]["params"].get<int64_t>() << " | " << humanBytes(r["compressed"]["bytes"].get<double>()) << " |\n\n";
  md << "Size ratio (compressed / baseline bytes): " << fmt(r["size_ratio"].get<double>(), 3) << "\n\n";
  if (r.contains("sparsity") && r["sparsity"]["pruned_layers_sparsity"].get<double>() > 0) {
    const json& s = r["sparsity"];
    std::map<std::string, int> patterns;
    for (const auto& l : s["layers"]) patterns[l["pattern"].get<std::string>()]++;
    md << "## Sparsity\n\nLinear weights: " << fmt(100 * s["linear_sparsity"].get<double>(), 2) << "% zeros ("
       << s["linear_zeros"].get<int64_t>() << " of " << s["linear_numel"].get<int64_t>() << "); pruned layers: "
       << fmt(100 * s["pruned_layers_sparsity"].get<double>(), 2) << "%. Layers by pattern:";
    for (const auto& [k, v] : patterns) md << " " << k << " " << v << ";";
    md << " per-layer values in report.json (`sparsity.layers`).\n\n";
  }
}

/// One pass's per-layer table, by the kind of statistics it reports.
void mdPassLayers(std::ostream& md, const json& p) {
  const json& layers = p["stats"]["layers"];
  const json& first = layers[0];
  md << "\n### " << p["name"].get<std::string>() << " per layer\n\n";
  if (first.contains("sparsity")) {
    bool errs = first.contains("output_error_magnitude");
    md << "| weight | shape | pattern | sparsity |" << (errs ? " output error | magnitude's output error |" : "")
       << "\n|---|---|---|---|" << (errs ? "---|---|" : "") << "\n";
    for (const auto& l : layers) {
      md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l.value("pattern", "unstructured")
         << " | " << fmt(100 * l["sparsity"].get<double>(), 2) << "% |";
      if (errs) md << " " << l["output_error"].get<double>() << " | " << l["output_error_magnitude"].get<double>() << " |";
      md << "\n";
    }
  } else if (first.contains("neurons_before")) {
    md << "| layer | group | kept / before |\n|---|---|---|\n";
    for (const auto& l : layers)
      md << "| " << l["layer"].get<std::string>() << " | " << l["group"].get<std::string>() << " | "
         << l["kept"].get<int64_t>() << " / " << l["neurons_before"].get<int64_t>() << " |\n";
    if (p["stats"].contains("frozen") && !p["stats"]["frozen"].empty()) {
      md << "\nKept whole (their channels cannot be removed):\n\n";
      for (const auto& f : p["stats"]["frozen"]) md << "- " << f.get<std::string>() << "\n";
    }
  } else if (first.contains("output_error")) {
    md << "| weight | shape | format | output error | RTN's output error |\n|---|---|---|---|---|\n";
    for (const auto& l : layers)
      md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l["format"].get<std::string>()
         << " | " << l["output_error"].get<double>() << " | " << l["output_error_rtn"].get<double>() << " |\n";
  } else if (first.contains("kl") && first.contains("format")) {
    md << "| weight | shape | format | KL alone in it (nats) |\n|---|---|---|---|\n";
    for (const auto& l : layers)
      md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l["format"].get<std::string>()
         << " | " << l["kl"].get<double>() << " |\n";
  } else if (first.contains("bytes_before")) {
    md << "| weight | shape | format | bytes | RMSE |\n|---|---|---|---|---|\n";
    for (const auto& l : layers)
      md << "| " << l["weight"].get<std::string>() << " | " << l["shape"].dump() << " | " << l["format"].get<std::string>()
         << " | " << humanBytes(l["bytes_before"].get<double>()) << " → " << humanBytes(l["bytes_after"].get<double>())
         << " | " << fmt(l["rmse"].get<double>(), 6) << " |\n";
  } else {
    for (const auto& l : layers) md << "- `" << l.dump() << "`\n";
  }
}

/// Sensitivity (the sensitivity and auto passes): KL per layer and candidate, the most sensitive layer first.
void mdSensitivity(std::ostream& md, const json& p) {
  const json& layers = p["stats"]["sensitivity"];
  if (!layers.is_array() || layers.empty()) return;
  std::vector<std::string> cands;
  for (const auto& [k, v] : layers[0]["kl"].items()) cands.push_back(k);
  std::vector<const json*> ranked;
  for (const auto& l : layers) ranked.push_back(&l);
  auto worst = [](const json* l) {
    double m = 0;
    for (const auto& [k, v] : (*l)["kl"].items()) m = std::max(m, v.get<double>());
    return m;
  };
  std::stable_sort(ranked.begin(), ranked.end(), [&](const json* a, const json* b) { return worst(a) > worst(b); });
  md << "\n### " << p["name"].get<std::string>() << ": sensitivity (KL of the outputs, nats, with only that layer rounded)\n\n| # | weight |";
  for (const auto& c : cands) md << " " << c << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < cands.size(); ++i) md << "---|";
  md << "\n";
  int i = 1;
  for (const json* l : ranked) {
    md << "| " << i++ << " | " << (*l)["weight"].get<std::string>() << " |";
    for (const auto& c : cands) md << " " << (*l)["kl"][c].get<double>() << " |";
    md << "\n";
  }
}

/// The auto pass's trials: each verified point of the search.
void mdTrials(std::ostream& md, const json& p) {
  const json& t = p["stats"]["trials"];
  if (!t.is_array() || t.empty()) return;
  md << "\n### " << p["name"].get<std::string>() << ": trials (" << p["stats"]["path_length"].get<int64_t>()
     << " moves from the most precise to the cheapest assignment)\n\n| # | moves | bits per weight | weight bytes | degradation | goal |\n"
        "|---|---|---|---|---|---|\n";
  int i = 1;
  for (const auto& x : t)
    md << "| " << i++ << " | " << x["moves"].get<int64_t>() << " | " << fmt(x["bits"].get<double>(), 2) << " | "
       << humanBytes(x["bytes"].get<double>()) << " | " << fmt(100 * x["degradation"].get<double>(), 2) << "% | "
       << (x["passed"].get<bool>() ? "met" : "missed") << " |\n";
}

void mdPasses(std::ostream& md, const json& r) {
  md << "## Passes\n\n| # | pass | time (s) | what changed |\n|---|---|---|---|\n";
  int i = 1;
  for (const auto& p : r["passes"])
    md << "| " << i++ << " | " << p["name"].get<std::string>() << " | " << fmt(p["seconds"].get<double>(), 2) << " | "
       << p["summary"].get<std::string>() << " |\n";
  for (const auto& p : r["passes"]) {
    if (p["stats"].contains("layers") && p["stats"]["layers"].is_array() && !p["stats"]["layers"].empty()) mdPassLayers(md, p);
    if (p["stats"].contains("trials")) mdTrials(md, p);
    if (p["stats"].contains("sensitivity")) mdSensitivity(md, p);
  }
}

void mdExport(std::ostream& md, const json& e) {
  md << "\n## ONNX export\n\n";
  md << "- File: `" << e["file"].get<std::string>() << "`" << (e["external_data"].get<bool>() ? " + `model.onnx.data`" : "")
     << ", opset " << e["opset"].get<int>() << ", " << humanBytes(e["total_bytes"].get<double>()) << "\n";
  md << "- Linear weights: " << fmt(e["linear_weight_ratio"].get<double>(), 3) << " of their fp32 bytes";
  if (e["quantized_weight_fp32_bytes"].get<int64_t>() > 0)
    md << " (the quantized ones: " << fmt(e["quantized_weight_ratio"].get<double>(), 3) << ")";
  md << "\n\n| weights stored as | bytes |\n|---|---|\n";
  for (const auto& [k, v] : e["bytes_by_format"].items()) md << "| " << k << " | " << humanBytes(v.get<double>()) << " |\n";
  if (!e.contains("validation")) return;
  const json& v = e["validation"];
  md << "\nONNX checker: " << v["checker"].get<std::string>() << "\n\n";
  if (!v["onnxruntime"].is_object()) {
    md << "ONNX Runtime: " << v["onnxruntime"].get<std::string>() << "\n";
    return;
  }
  const json& o = v["onnxruntime"];
  md << "| ONNX Runtime 1.30 vs executor | max abs diff | max rel diff |\n|---|---|---|\n";
  md << "| graph optimizations off (exact) | " << o["opt_disabled"]["max_abs_diff"].get<double>() << " | "
     << o["opt_disabled"]["max_rel_diff"].get<double>() << " |\n";
  md << "| ORT default (what users get) | " << o["opt_all"]["max_abs_diff"].get<double>() << " | "
     << o["opt_all"]["max_rel_diff"].get<double>() << " |\n";
  if (o.contains("perplexity"))
    md << "\nPerplexity through ONNX Runtime: " << fmt(o["perplexity"]["ort_opt_disabled"].get<double>()) << " (executor "
       << fmt(o["perplexity"]["executor"].get<double>()) << "; ORT default optimizations "
       << fmt(o["perplexity"]["ort_opt_all"].get<double>()) << ")\n";
  if (o.contains("warning")) md << "\n**Warning:** " << o["warning"].get<std::string>() << ".\n";
  if (o.value("int8_activations_from", std::string()) == "quantize_linear") {
    md << "\nThe file quantizes activations itself (QuantizeLinear, W8A8): rounding to integers is discontinuous, so "
          "a last-bit difference between two correct implementations can move an activation by one step; the "
          "differences above are held to the int8-activation tolerance.\n";
  } else if (o.value("int8_activations", false)) {
    md << "\nThe file asks for int8 activations (MatMulNBits accuracy_level 4): ONNX Runtime and crun quantize each "
          "activation row to int8 per 32 values and use integer dot products; the executor computes exactly, so the "
          "differences above are the cost of int8 compute";
    if (o.contains("perplexity"))
      md << " (perplexity " << std::showpos << std::fixed << std::setprecision(3)
         << 100 * (o["perplexity"]["ort_opt_disabled"].get<double>() / o["perplexity"]["executor"].get<double>() - 1)
         << std::noshowpos << std::defaultfloat << "%)";
    md << ".\n";
  }
}

void mdLatency(std::ostream& md, const json& r) {
  auto p90 = [](const json& l, const char* key) { return l.contains(key) ? fmt(l[key].get<double>(), 3) : std::string("—"); };
  md << "\n## Latency\n\n| engine | device | shape | threads | median (ms) baseline | median (ms) compressed | p90 (ms) "
        "baseline | p90 (ms) compressed |\n|---|---|---|---|---|---|---|---|\n";
  for (const auto& l : r["latency"])
    md << "| " << l["engine"].get<std::string>() << " | " << l["device"].get<std::string>() << " | " << l["shape"].dump()
       << " | " << l["threads"].get<int>() << " | " << fmt(l["baseline_median_ms"].get<double>(), 3) << " | "
       << fmt(l["compressed_median_ms"].get<double>(), 3) << " | " << p90(l, "baseline_p90_ms") << " | "
       << p90(l, "compressed_p90_ms") << " |\n";
  md << "\nThe executor runs the IR with ATen ops; ONNX Runtime runs model.onnx with its default optimizations; crun is "
        "our runtime (runtime/), running model.onnx as shipped (pruned weights in its sparse form where that is faster on "
        "this CPU).\n";
}

void mdPlots(std::ostream& md, const json& r) {
  if (!r.contains("plots") || r["plots"].empty()) return;
  md << "\n## Plots\n\n";
  for (const auto& p : r["plots"])
    md << "![" << p["title"].get<std::string>() << "](" << p["file"].get<std::string>() << ")\n\n";
}

/// "layers.0.attention.wq.weight" -> "layers.0.attention.wq".
std::string layerLabel(const std::string& weight) {
  const std::string suffix = ".weight";
  return weight.size() > suffix.size() && weight.compare(weight.size() - suffix.size(), suffix.size(), suffix) == 0
             ? weight.substr(0, weight.size() - suffix.size())
             : weight;
}

}  // namespace

std::vector<ReportPlot> reportPlots(const json& r) {
  std::vector<ReportPlot> plots;
  if (r.contains("sparsity") && r["sparsity"].contains("layers") && !r["sparsity"]["layers"].empty()) {
    const json& layers = r["sparsity"]["layers"];
    svg::BarChart bits{"Bits per weight by layer (scales and zero points included)", "bits per weight", {}, 2};
    svg::BarChart sparsity{"Sparsity by layer", "zeros (%)", {}, 1};
    for (const auto& l : layers) {
      const std::string name = layerLabel(l["weight"].get<std::string>());
      bits.bars.push_back({name, l.contains("bits_per_weight") ? l["bits_per_weight"].get<double>() : NAN});
      sparsity.bars.push_back({name, 100 * l["sparsity"].get<double>()});
    }
    plots.push_back({"layers_bits.svg", bits.title, svg::bars(bits)});
    if (r["sparsity"]["linear_zeros"].get<int64_t>() > 0) plots.push_back({"layers_sparsity.svg", sparsity.title, svg::bars(sparsity)});
  }
  std::map<std::string, int> seen;  // a pass that runs twice gets a second plot
  for (const auto& p : r["passes"]) {
    if (p["stats"].contains("sensitivity") && p["stats"]["sensitivity"].is_array() && !p["stats"]["sensitivity"].empty()) {
      svg::BarChart kl{p["name"].get<std::string>() + ": sensitivity by layer", "KL divergence (nats) with only this layer in its coarsest candidate", {}, 5};
      for (const auto& l : p["stats"]["sensitivity"]) {
        double worst = 0;
        for (const auto& [k, v] : l["kl"].items()) worst = std::max(worst, v.get<double>());
        kl.bars.push_back({layerLabel(l["weight"].get<std::string>()), worst});
      }
      plots.push_back({"layers_sensitivity_" + p["name"].get<std::string>() + ".svg", kl.title, svg::bars(kl)});
    }
    if (!p["stats"].contains("layers") || !p["stats"]["layers"].is_array()) continue;
    svg::BarChart err{p["name"].get<std::string>() + ": output error by layer", "output error on the calibration inputs, tr(ΔW H ΔWᵀ) / 2", {}, 4};
    for (const auto& l : p["stats"]["layers"])
      if (l.contains("output_error") && l["output_error"].is_number() && l.contains("weight"))
        err.bars.push_back({layerLabel(l["weight"].get<std::string>()), l["output_error"].get<double>()});
    if (err.bars.empty()) continue;
    const int n = ++seen[p["name"].get<std::string>()];
    plots.push_back({"layers_error_" + p["name"].get<std::string>() + (n > 1 ? "_" + std::to_string(n) : "") + ".svg", err.title,
                     svg::bars(err)});
  }
  return plots;
}

std::string renderMarkdown(const json& r) {
  std::ostringstream md;
  mdHeader(md, r);
  mdAccuracy(md, r);
  mdSize(md, r);
  mdPasses(md, r);
  if (r.contains("export")) mdExport(md, r["export"]);
  mdLatency(md, r);
  mdPlots(md, r);
  md << "\n## Environment\n\n```\n" << r["environment"].dump(2) << "\n```\n";
  md << "\nTotal wall time: " << fmt(r["timing"]["total_seconds"].get<double>(), 2) << " s\n";
  return md.str();
}

}  // namespace compress
