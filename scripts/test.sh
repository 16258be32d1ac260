#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit, integration on the stories model, CLI), then
# the sanitizer build's tests and the fuzz targets (30 s each plus the saved crashes).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
# Two tests run at once on a 2-core machine, so each gets one core: OpenBLAS's idle threads otherwise spin
# (sched_yield) on the core the other test needs, and a LibTorch-heavy test took 6x its time (docs/benchmarks.md).
(cd build && OPENBLAS_NUM_THREADS=1 ctest -j2 --output-on-failure --timeout 600)

# ASan + UBSan (leak checking on): the runtime's tests and the LibTorch-free unit tests (docs/security.md).
if [ ! -f build-asan/CMakeCache.txt ]; then
  cmake -S . -B build-asan -DCOMPRESS_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /tmp/compress-cmake-asan.log 2>&1 ||
    { cat /tmp/compress-cmake-asan.log; exit 1; }
fi
cmake --build build-asan -j2 2>&1 | grep -vE '^\[ *[0-9]+%\] (Building|Linking|Built)' || true
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest -j2 --output-on-failure --timeout 900)

# Fuzzing: every target for 30 s from the committed seeds, and a replay of the saved crash corpus.
bash scripts/fuzz_build.sh
(cd build-fuzz && ctest -j2 --output-on-failure --timeout 300)
echo "test.sh: total $(( $(date +%s) - start ))s"
