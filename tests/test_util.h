// test_util.h — paths and helpers shared by the tests.
#pragma once

#include <sys/stat.h>

#include <cstdio>
#include <string>

namespace testutil {

inline std::string fixture(const std::string& name) { return std::string(COMPRESS_FIXTURES_DIR) + "/" + name; }
inline std::string shared(const std::string& rel) { return std::string(COMPRESS_SHARED_DIR) + "/" + rel; }
inline std::string source(const std::string& rel) { return std::string(COMPRESS_SOURCE_DIR) + "/" + rel; }
inline bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
/// True when ../shared is present; otherwise prints why the test is skipped.
inline bool haveShared() {
  if (exists(shared("models/stories260K/stories260K.pt"))) return true;
  std::fprintf(stderr, "SKIPPED: ../shared (the stories260K model and data) is not next to this checkout\n");
  return false;
}
inline std::string tempDir(const std::string& tag) {
  char tmpl[] = "/tmp/compress-test-XXXXXX";
  std::string d = ::mkdtemp(tmpl);
  return d + (tag.empty() ? "" : "");
}

}  // namespace testutil
