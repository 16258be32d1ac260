// pipeline.h — one recipe run: import, baseline evaluation, passes (verified after each), final
// evaluation, accuracy gate, and the output folder written atomically.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>

#include "compress/graph.h"
#include "compress/importer.h"
#include "compress/recipe.h"

namespace compress {

struct RunOptions {
  std::string output_override;  // --output
  bool progress = true;
  bool overwrite = false;       // --overwrite: replace an output folder that compress did not write
};

struct RunSummary {
  bool gate_passed = true;
  std::string output_dir;
  nlohmann::json report;
};

/// Runs a parsed recipe. Errors propagate as compress::Error; a missed accuracy gate still writes the
/// output folder and returns gate_passed = false.
RunSummary runRecipe(const Recipe& r, const RunOptions& opts = {});

/// The importer's input specs for a recipe (its `inputs:` section, or int64 [batch, seq] tokens).
ImportOptions importOptionsFor(const Recipe& r);
/// Imports a model by path: TorchScript (.pt) or a saved compressed model (.cir).
Graph loadModel(const std::string& path, const ImportOptions& opts = {});

}  // namespace compress
