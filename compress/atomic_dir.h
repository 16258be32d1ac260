// atomic_dir.h — an output folder that appears complete or not at all: files are written into a
// staging folder beside the target, which replaces the target in one rename on commit(). Without commit
// (an error, Ctrl-C) the staging folder is removed and an existing target is left untouched.
#pragma once

#include <string>

namespace compress {

class StagingDir {
 public:
  explicit StagingDir(std::string target);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  /// Path of `file` inside the staging folder.
  std::string path(const std::string& file) const { return staging_ + "/" + file; }
  /// Moves the staging folder into place (an older target is removed only after the new one is in place).
  void commit();

 private:
  std::string target_, staging_;
  bool committed_ = false;
};

}  // namespace compress
