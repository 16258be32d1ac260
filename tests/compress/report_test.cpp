// report_test.cpp — the report's per-layer plots: which are made, from which values (rendering: svg_test.cpp
// and the CLI test on a real run).
#include "compress/report.h"

#include <catch2/catch.hpp>

using namespace compress;
using json = nlohmann::json;

namespace {

json reportWithLayers(int64_t zeros) {
  json layers = json::array();
  layers.push_back({{"weight", "layers.0.wq.weight"}, {"sparsity", 0.5}, {"bits_per_weight", 4.75}, {"pattern", "2:4"}});
  layers.push_back({{"weight", "layers.0.w1.weight"}, {"sparsity", 0.25}, {"bits_per_weight", 8.251}, {"pattern", "unstructured"}});
  json gptq_layers = json::array({{{"weight", "layers.0.wq.weight"}, {"output_error", 0.0123}, {"output_error_rtn", 0.02}}});
  json rtn_layers = json::array({{{"weight", "layers.0.wq.weight"}, {"rmse", 0.001}}});
  return {{"sparsity", {{"layers", layers}, {"linear_zeros", zeros}}},
          {"passes", json::array({{{"name", "gptq"}, {"stats", {{"layers", gptq_layers}}}},
                                  {{"name", "rtn"}, {"stats", {{"layers", rtn_layers}}}},
                                  {{"name", "gptq"}, {"stats", {{"layers", gptq_layers}}}}})}};
}

}  // namespace

TEST_CASE("a report gets bits and sparsity by layer, and an error plot per pass that measures one", "[report]") {
  const std::vector<ReportPlot> plots = reportPlots(reportWithLayers(3072));
  REQUIRE(plots.size() == 4);
  CHECK(plots[0].file == "layers_bits.svg");
  CHECK(plots[1].file == "layers_sparsity.svg");
  CHECK(plots[2].file == "layers_error_gptq.svg");
  CHECK(plots[3].file == "layers_error_gptq_2.svg");  // the second gptq pass does not overwrite the first
  CHECK(plots[0].svg.find(">layers.0.w1<") != std::string::npos);  // ".weight" dropped from labels
  CHECK(plots[0].svg.find(">8.25<") != std::string::npos);         // bits with two digits
  CHECK(plots[1].svg.find(">50.0<") != std::string::npos);         // sparsity in percent
  CHECK(plots[2].svg.find(">0.0123<") != std::string::npos);
  CHECK(plots[2].title == "gptq: output error by layer");
}

TEST_CASE("a dense model gets no sparsity plot, a report without layers no plots", "[report]") {
  const std::vector<ReportPlot> plots = reportPlots(reportWithLayers(0));
  REQUIRE(plots.size() == 3);
  CHECK(plots[1].file == "layers_error_gptq.svg");
  CHECK(reportPlots(json{{"passes", json::array()}}).empty());
}
