// shipped_recipe.h — runs a recipe from configs/ as shipped (no export unless asked, no latency timing) into a temporary
// folder: the acceptance tests that check a shipped recipe's result.
#pragma once

#include <string>

#include "compress/pipeline.h"
#include "compress/recipe.h"
#include "test_util.h"

namespace testutil {

inline compress::RunSummary runShipped(const std::string& name, bool with_export = false) {
  compress::Recipe r = compress::loadRecipe(source("configs/" + name + ".yaml"));
  r.export_spec.present = with_export;
  r.latency_runs = 0;
  compress::RunOptions o;
  o.output_override = tempDir("shipped") + "/" + name;
  o.progress = false;
  return compress::runRecipe(r, o);
}

}  // namespace testutil
