// test_util.cpp — where the fixtures, ../shared and the checkout are (defined by tests/CMakeLists.txt).
#include "test_util.h"

namespace testutil {

std::string fixture(const std::string& name) { return std::string(COMPRESS_FIXTURES_DIR) + "/" + name; }
std::string shared(const std::string& rel) { return std::string(COMPRESS_SHARED_DIR) + "/" + rel; }
std::string source(const std::string& rel) { return std::string(COMPRESS_SOURCE_DIR) + "/" + rel; }

}  // namespace testutil
