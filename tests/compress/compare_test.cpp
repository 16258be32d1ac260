// compare_test.cpp — `compress compare` on hand-made reports: the table's values, the Pareto fronts, refusal
// of runs that cannot be compared, bad reports, and the written folder (plots checked in svg_test.cpp).
#include "compress/compare.h"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "compress/atomic_dir.h"
#include "tests/error_util.h"
#include "test_util.h"

using namespace compress;
using Catch::Matchers::Contains;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Run {
  std::string name;
  double bytes, metric, decode_ms, prefill_ms;
};

/// A report as `compress run` writes it, with only the keys compare reads (and latency for crun at [1, 1] and
/// [1, 128] and ONNX Runtime at [1, 128]). The baseline: 250 parameters in 1000 bytes, perplexity 4.0.
json handMadeReport(const Run& r, const std::string& metric = "perplexity", double baseline = 4.0) {
  const bool lower = metric == "perplexity";
  auto crun = [&](std::vector<int64_t> shape, double base_ms, double ms) {
    return json{{"engine", "crun (ours, avx2)"}, {"device", "cpu"}, {"shape", shape}, {"threads", 2}, {"runs", 20},
                {"baseline_median_ms", base_ms}, {"compressed_median_ms", ms}, {"baseline_p90_ms", base_ms * 1.1},
                {"compressed_p90_ms", ms * 1.1}};
  };
  return {{"schema_version", 1},
          {"tool", {{"name", "compress"}, {"version", "0.1.0"}}},
          {"recipe", {{"path", "configs/" + r.name + ".yaml"}, {"fnv1a64", "0123456789abcdef"}}},
          {"task", "causal-lm"},
          {"model", {{"path", "../shared/models/stories260K/stories260K.pt"}, {"params", 250}, {"bytes", 1000}}},
          {"compressed", {{"bytes", r.bytes}}},
          {"accuracy",
           {{"metric", metric}, {"measured", true}, {"baseline", baseline}, {"final", r.metric}, {"count", 32768},
            {"degradation", lower ? (r.metric - baseline) / baseline : (baseline - r.metric) / baseline}, {"gate", "pass"}}},
          {"latency", {crun({1, 1}, 0.065, r.decode_ms), crun({1, 128}, 3.0, r.prefill_ms),
                       {{"engine", "onnxruntime 1.30 (cpu, default optimizations)"}, {"shape", {1, 128}}, {"threads", 2},
                        {"baseline_median_ms", 3.3}, {"compressed_median_ms", r.prefill_ms * 1.2}}}},
          {"export", {{"total_bytes", r.bytes * 2}}},
          {"memory", {{"peak_rss_bytes", 200 << 20}}},
          {"timing", {{"total_seconds", 10.5}}}};
}

/// Writes each report into its own folder under a fresh temporary folder; the folders.
std::vector<std::string> writeRuns(const std::vector<json>& reports) {
  const std::string root = testutil::tempDir("compare");
  std::vector<std::string> dirs;
  for (const json& r : reports) {
    const std::string name = fs::path(r["recipe"]["path"].get<std::string>()).stem().string();
    fs::create_directories(root + "/" + name);
    std::ofstream(root + "/" + name + "/report.json") << r.dump(2);
    dirs.push_back(root + "/" + name);
  }
  return dirs;
}

// Size front: the uncompressed model (1000 B, 4.0), a (500, 4.01), b (300, 4.2); c (300, 4.5) loses to b and d to a.
// Latency front: c (0.04 ms, 4.5), a (0.05, 4.01), uncompressed (0.065, 4.0); b (0.06, 4.2) and d lose to a.
const std::vector<Run> kRuns = {{"a", 500, 4.01, 0.05, 2.5}, {"b", 300, 4.2, 0.06, 2.0}, {"c", 300, 4.5, 0.04, 1.9},
                                {"d", 600, 4.3, 0.07, 2.8}};

std::vector<json> reportsOf(const std::vector<Run>& runs) {
  std::vector<json> out;
  for (const Run& r : runs) out.push_back(handMadeReport(r));
  return out;
}

const CompareRow& row(const Comparison& c, const std::string& name) {
  for (const CompareRow& r : c.rows)
    if (r.name == name) return r;
  FAIL("no row " << name);
  return c.rows[0];
}

}  // namespace

TEST_CASE("the Pareto front keeps exactly the points no other point beats in both", "[compare]") {
  using V = std::vector<double>;
  CHECK(paretoFront(V{3, 1, 2, 2}, V{1, 3, 2, 2.5}) == std::vector<bool>{true, true, true, false});
  CHECK(paretoFront(V{1, 1}, V{2, 2}) == std::vector<bool>{true, true});    // equal points are both on it
  CHECK(paretoFront(V{1, 1}, V{2, 3}) == std::vector<bool>{true, false});   // same cost, more loss: off
  CHECK(paretoFront(V{NAN, 5}, V{0, 1}) == std::vector<bool>{false, true});  // unknown cost: never on it
  CHECK(paretoFront(V{}, V{}).empty());
}

TEST_CASE("compare puts the baseline and every run in one table with the fronts marked", "[compare]") {
  const Comparison c = compareRuns(writeRuns(reportsOf(kRuns)), false);
  REQUIRE(c.rows.size() == 5);
  CHECK(c.rows[0].name == "uncompressed");
  CHECK(c.rows[0].baseline);
  CHECK(c.metric == "perplexity");
  CHECK(c.lower_is_better);
  CHECK(c.decode_shape == "[1, 1]");
  CHECK(c.prefill_shape == "[1, 128]");
  CHECK(c.crun_threads == 2);
  for (const auto& [name, size, latency] : std::vector<std::tuple<std::string, bool, bool>>{
           {"uncompressed", true, true}, {"a", true, true}, {"b", true, false}, {"c", false, true}, {"d", false, false}}) {
    INFO(name);
    CHECK(row(c, name).front_size == size);
    CHECK(row(c, name).front_latency == latency);
  }
  const CompareRow& base = row(c, "uncompressed");
  CHECK(base.metric == 4.0);
  CHECK(base.bits_per_weight == 32.0);
  CHECK(base.crun_decode_ms == 0.065);
  CHECK(base.crun_prefill_ms == 3.0);
  CHECK(base.ort_ms == 3.3);
  const CompareRow& b = row(c, "b");
  CHECK(b.bits_per_weight == Approx(8 * 300.0 / 250));
  CHECK(b.change == Approx(0.05));
  CHECK(b.crun_decode_ms == 0.06);
  CHECK(b.crun_decode_p90_ms == Approx(0.066));
  CHECK(b.crun_prefill_ms == 2.0);
  CHECK(b.ort_ms == Approx(2.4));
  CHECK(b.onnx_bytes == 600);
  CHECK(b.peak_rss_bytes == 200 << 20);
  CHECK(b.wall_seconds == 10.5);
  CHECK(b.recipe == "configs/b.yaml");

  const std::string md = compareMarkdown(c);
  CHECK_THAT(md, Contains("| b | configs/b.yaml | 4.2000 | +5.00% | pass | 300 B | 9.60 | 600 B | 0.060 (0.066) | 2.000 (2.200) | 2.400 | 200.00 MiB | 10.5 | size |"));
  CHECK_THAT(md, Contains("| c | configs/c.yaml | 4.5000 | +12.50% | pass | 300 B | 9.60 | 600 B | 0.040 (0.044) | 1.900 (2.090) | 2.280 | 200.00 MiB | 10.5 | latency |"));
  CHECK_THAT(md, Contains("Pareto front, perplexity against size: uncompressed, a, b."));
  CHECK_THAT(md, Contains("Pareto front, perplexity against crun latency: uncompressed, a, c."));
  CHECK_THAT(md, Contains("crun [1, 1] 2 thr ms (p90)"));

  const json j = compareJson(c);
  CHECK(j["rows"].size() == 5);
  CHECK(j["rows"][0]["onnx_bytes"].is_null());  // the baseline's ONNX file was never written
  CHECK(j["rows"][2]["front_size"] == true);
  const std::string html = compareHtml(c);
  CHECK_THAT(html, Contains("<td>configs/b.yaml</td>"));
  CHECK(html.find("<?xml") == std::string::npos);  // the plots are inlined without their XML declarations
  CHECK(html.find("<svg") != std::string::npos);
}

TEST_CASE("a metric where higher is better puts the most accurate runs on the front", "[compare]") {
  std::vector<json> reports;
  for (const Run& r : std::vector<Run>{{"a", 500, 0.80, 0.05, 2}, {"b", 300, 0.70, 0.06, 2}, {"c", 400, 0.60, 0.07, 2}})
    reports.push_back(handMadeReport(r, "top1", 0.81));
  const Comparison c = compareRuns(writeRuns(reports), false);
  CHECK_FALSE(c.lower_is_better);
  CHECK(row(c, "a").front_size);
  CHECK(row(c, "b").front_size);
  CHECK_FALSE(row(c, "c").front_size);  // bigger than b and less accurate
  CHECK(row(c, "c").change == Approx((0.81 - 0.60) / 0.81));
}

TEST_CASE("runs of different models, metrics or evaluation data are refused unless forced", "[compare][hostile]") {
  std::vector<json> reports = reportsOf({kRuns[0], kRuns[1]});
  std::string msg;
  SECTION("another model") {
    reports[1]["model"]["path"] = "models/other.pt";
    CHECK(testutil::categoryOf([&] { compareRuns(writeRuns(reports), false); }, &msg) == ErrorCategory::Config);
    CHECK_THAT(msg, Contains("the model differs: stories260K.pt (a) vs other.pt (b)") && Contains("--force"));
  }
  SECTION("another metric") {
    reports[1]["accuracy"]["metric"] = "cosine";
    CHECK(testutil::categoryOf([&] { compareRuns(writeRuns(reports), false); }, &msg) == ErrorCategory::Config);
    CHECK_THAT(msg, Contains("the metric differs: perplexity (a) vs cosine (b)"));
  }
  SECTION("another evaluation set") {
    reports[1]["accuracy"]["baseline"] = 4.3;
    CHECK(testutil::categoryOf([&] { compareRuns(writeRuns(reports), false); }, &msg) == ErrorCategory::Config);
    CHECK_THAT(msg, Contains("the evaluation differs: baseline 4 on 32768 (a) vs 4.3 on 32768 (b)"));
    const Comparison c = compareRuns(writeRuns(reports), true);
    REQUIRE(c.notes.size() == 1);
    CHECK_THAT(c.notes[0], Contains("forced past: the evaluation differs"));
    CHECK_THAT(compareMarkdown(c), Contains("Note: forced past"));
  }
}

TEST_CASE("a missing, malformed or foreign report is a clear error naming the file", "[compare][hostile]") {
  const std::vector<std::string> dirs = writeRuns(reportsOf({kRuns[0]}));
  const std::string file = dirs[0] + "/report.json";
  std::string msg;
  CHECK(testutil::categoryOf([&] { compareRuns({dirs[0] + "/nowhere"}, false); }, &msg) == ErrorCategory::Io);
  CHECK_THAT(msg, Contains("nowhere: cannot read it (no such file)"));
  CHECK(testutil::categoryOf([&] { compareRuns({}, false); }, &msg) == ErrorCategory::Config);

  std::ofstream(file) << "{\"schema_version\": 1, \"tool\": {\"name\": \"compress\"";  // cut short
  CHECK(testutil::categoryOf([&] { compareRuns(dirs, false); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains(file + ": not valid JSON"));

  std::ofstream(file) << "{\"name\": \"something else\"}";
  CHECK(testutil::categoryOf([&] { compareRuns(dirs, false); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains("not a compress report"));

  json r = handMadeReport(kRuns[0]);
  r["schema_version"] = 99;
  std::ofstream(file) << r.dump();
  CHECK(testutil::categoryOf([&] { compareRuns(dirs, false); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains("schema version 99"));

  r = handMadeReport(kRuns[0]);
  r["accuracy"].erase("final");
  std::ofstream(file) << r.dump();
  CHECK(testutil::categoryOf([&] { compareRuns(dirs, false); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains("missing accuracy.final"));

  r = handMadeReport(kRuns[0]);
  r["compressed"]["bytes"] = "many";
  std::ofstream(file) << r.dump();
  CHECK(testutil::categoryOf([&] { compareRuns(dirs, false); }, &msg) == ErrorCategory::Data);
  CHECK_THAT(msg, Contains("compressed.bytes is \"many\", not a number"));

  std::ofstream(file) << handMadeReport(kRuns[0]).dump();  // restored: it loads again
  CHECK(compareRuns(dirs, false).rows.size() == 2);
}

TEST_CASE("the comparison folder is written at once and never over the user's files", "[compare][hostile]") {
  const Comparison c = compareRuns(writeRuns(reportsOf(kRuns)), false);
  const std::string dir = testutil::tempDir("cmp") + "/compare";
  writeComparison(c, dir, false);
  for (const char* f : {"compare.md", "compare.html", "compare.json", "accuracy_vs_size.svg", "accuracy_vs_latency.svg", kOutputMarker})
    CHECK(fs::is_regular_file(dir + "/" + f));
  writeComparison(c, dir, false);  // an earlier comparison is replaced
  const std::string mine = testutil::tempDir("mine");
  std::ofstream(mine + "/notes.txt") << "mine";
  CHECK(testutil::categoryOf([&] { writeComparison(c, mine, false); }) == ErrorCategory::Io);
  CHECK(fs::is_regular_file(mine + "/notes.txt"));
}

TEST_CASE("the uncompressed model's latency comes from the first run that measured it", "[compare]") {
  std::vector<json> reports = reportsOf({kRuns[0], kRuns[1]});
  reports[0]["latency"] = json::array();  // an evaluate-only run first (configs/baseline.yaml)
  const Comparison c = compareRuns(writeRuns(reports), false);
  CHECK(c.decode_shape == "[1, 1]");
  CHECK(row(c, "uncompressed").crun_decode_ms == 0.065);
  CHECK(std::isnan(row(c, "a").crun_decode_ms));
  CHECK(row(c, "b").crun_decode_ms == 0.06);
  CHECK_FALSE(row(c, "a").front_latency);  // no latency: on no latency front
  CHECK(row(c, "a").front_size);
}
