// data.h — loading the recipe's token data (.npy streams, or text + llama2.c tokenizer). LibTorch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compress/recipe.h"

namespace compress {

/// The token stream a data source describes: its .npy `tokens`, or its `text` tokenized by blank-line
/// paragraphs with BOS. Error(Io/Data) with the file name on any problem.
std::vector<int64_t> loadTokenStream(const DataSource& src);

/// Reads a whole file; Error(Io) naming it when that fails.
std::string readFile(const std::string& path);

}  // namespace compress
