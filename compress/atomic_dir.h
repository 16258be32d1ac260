// atomic_dir.h — an output folder that appears complete or not at all: files are written into a
// staging folder beside the target (NAME.tmp-PID), which replaces the target on commit() — in one atomic
// swap (renameat2 RENAME_EXCHANGE) or, where the file system lacks it, two renames that the next run
// repairs if a kill falls between them. Without commit (an error, Ctrl-C) the staging folder is removed
// and an existing target is left untouched; staging folders of killed runs are removed by the next run.
//
// compress never replaces what it did not write: a target that is a file, link or device is refused, and
// so is a non-empty folder without the marker file every output folder gets (unless `overwrite`).
#pragma once

#include <string>

namespace compress {

/// The file every output folder holds, which says that compress wrote it (and may replace it).
constexpr const char* kOutputMarker = ".compress-output";

/// Error(Io) unless `target` is absent, an empty folder, or a folder with kOutputMarker (any folder
/// when `overwrite`).
void checkOutputTarget(const std::string& target, bool overwrite);
/// Removes NAME.tmp-PID folders of processes that no longer run; restores NAME from NAME.old-PID when a
/// run was killed between the two renames of a fallback commit.
void cleanStaleStaging(const std::string& target);

class StagingDir {
 public:
  /// Checks the target (checkOutputTarget) and that its folder is writable, cleans stale staging
  /// folders, and creates the staging folder: construct it before long work so that a bad output
  /// path fails in the first second.
  explicit StagingDir(std::string target, bool overwrite = false);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  /// Path of `file` inside the staging folder.
  std::string path(const std::string& file) const { return staging_ + "/" + file; }
  /// Flushes every file and the folder to disk, then moves the staging folder into place.
  void commit();

 private:
  std::string target_, staging_;
  bool committed_ = false;
};

}  // namespace compress
