// scratch_paths.h — files and folders the tests write under /tmp are removed when the test binary exits
// (COMPRESS_KEEP_TEST_FILES=1 keeps them, to look at after a failure). Before, every run left them behind:
// thousands of folders and 5 GB on a developer machine.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace testutil {

struct ScratchPaths {
  std::mutex m;
  std::vector<std::string> paths;
  ~ScratchPaths() {
    if (std::getenv("COMPRESS_KEEP_TEST_FILES")) return;
    std::error_code ec;  // (best effort: a path already gone is fine)
    for (const std::string& p : paths) std::filesystem::remove_all(p, ec);
  }
};

inline ScratchPaths& scratchPaths() {
  static ScratchPaths s;  // destroyed at exit, after the tests
  return s;
}

/// Registers `path` (a file or a folder) for removal at exit; returns it.
inline std::string removeAtExit(const std::string& path) {
  ScratchPaths& s = scratchPaths();
  std::lock_guard<std::mutex> lock(s.m);
  s.paths.push_back(path);
  return path;
}

}  // namespace testutil
