#include "compress/error.h"

namespace compress {

int exitCodeFor(ErrorCategory c) {
  switch (c) {
    case ErrorCategory::Config: return 2;
    case ErrorCategory::Model: return 3;
    case ErrorCategory::Data: return 4;
    case ErrorCategory::Numeric: return 5;
    case ErrorCategory::Io: return 6;
    case ErrorCategory::Device: return 7;
    case ErrorCategory::Accuracy: return 8;
    case ErrorCategory::Internal: return 70;
  }
  return 70;
}

const char* categoryName(ErrorCategory c) {
  switch (c) {
    case ErrorCategory::Config: return "config error";
    case ErrorCategory::Model: return "model error";
    case ErrorCategory::Data: return "data error";
    case ErrorCategory::Numeric: return "numeric error";
    case ErrorCategory::Io: return "i/o error";
    case ErrorCategory::Device: return "device error";
    case ErrorCategory::Accuracy: return "accuracy gate failed";
    case ErrorCategory::Internal: return "internal error";
  }
  return "error";
}

}  // namespace compress
