// dims.h — the names of the symbolic dims a model input may have (no LibTorch: recipes use it too).
#pragma once

#include <string>

namespace compress {

/// batch and sequence, and image height/width (CNNs, U-Nets); every other dim of an input is a number.
inline bool isInputDimName(const std::string& s) { return s == "batch" || s == "seq" || s == "height" || s == "width"; }

}  // namespace compress
