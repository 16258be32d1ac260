// progress.h — progress display for long steps (evaluation, calibration, passes) on stderr. On a terminal
// it redraws one line with rate and ETA; in logs (CI) it prints a line at every 25%.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace compress {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit, bool enabled = true);
  ~Progress();
  void advance(int64_t n = 1);
  void finish();
  /// Turns all progress output off (tests, --quiet).
  static void setEnabled(bool on);

 private:
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  int last_quarter_ = 0;
  bool finished_ = false, tty_, enabled_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  void draw(bool final);
};

}  // namespace compress
