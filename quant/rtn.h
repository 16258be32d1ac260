// rtn.h — round-to-nearest weight quantization (the baseline every calibration method is compared to).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "compress/graph.h"
#include "quant/format.h"

namespace compress {

struct RtnOptions {
  QuantFormat format;
  std::vector<std::string> targets = kLayerTargets;
  std::vector<std::string> ignore;
};

/// Quantizes every selected linear weight with quantizeRtn and installs the quantized form in the graph.
/// Returns per-layer stats (format, bytes before/after, weight RMSE) and totals.
nlohmann::json rtnQuantize(Graph& g, const RtnOptions& opts);

}  // namespace compress
